"""Batch-invariant evaluation: a row's probability does not depend on the batch it arrives in.

BLAS kernels (OpenBLAS gemv/gemm) handle the row tails of a matrix (row count not a multiple of 4/8)
with a different accumulation order than full tiles, so LogisticRegression, KNN (distances), Stacking,
a weighted average (`P @ w`) and the calibrator gave a row different last bits in a batch of 1, 3, 7,
17, 63 or 255 rows than in a batch of 64 or 1000 (measured on credit_data: up to 1.1e-16; tree
ensembles, HistGradientBoosting and XGBoost were exact at every size). So every member whose final
estimator is not in `ROW_EXACT_ESTIMATORS`, the combiner and the calibrator are evaluated on fixed
blocks of `BLOCK_ROWS` rows (the last block padded with copies of its first row; padding rows never
influence other rows' results): a row gets the same bits alone or in any batch. `EnsembleRuntime.score`
(which gives the validated scores and the parity set) and the serving decider both evaluate this way.

Shared preprocessing (`MemberScoring`): members' fitted preprocessing is computed once per batch and
handed to each member's final estimator, which is what the pipeline itself does with it (same bits).
Up to `FAST_PATH_MAX_ROWS` rows the fitted ColumnTransformers run as numpy (`members.fast_preprocess`),
part by part, each distinct fitted part (by digest) once for all members holding it; above that,
scikit-learn's own transform runs once per distinct fitted preprocessing (by digest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline

from ensemble_platform import safe_format
from ensemble_platform.members.catalogue import final_estimator
from ensemble_platform.members.fast_predict import FAST_PATH_MAX_ROWS, estimator_proba, fast_path_enabled
from ensemble_platform.members.fast_preprocess import FastColumnTransformer, compiled, fast_transform
from ensemble_platform.members.training import positive_proba

BLOCK_ROWS = 64
# Final estimators whose prediction for a row depends on that row only, in any batch (trees summed in a
# fixed order; no BLAS reduction across features). Anything else is scored in fixed blocks.
ROW_EXACT_ESTIMATORS = frozenset({
    "RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier", "ExtraTreeClassifier",
    "HistGradientBoostingClassifier", "GradientBoostingClassifier", "XGBClassifier",
})
# Preprocessing steps that work value by value (or row by row) with fitted constants: batch-invariant.
ELEMENTWISE_TRANSFORMS = frozenset({
    "SimpleImputer", "MissingIndicator", "StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler",
    "OneHotEncoder", "OrdinalEncoder", "SplineTransformer", "KBinsDiscretizer", "Binarizer",
})


def blocked(fn: Callable[[np.ndarray], np.ndarray], n: int, block: int = BLOCK_ROWS) -> np.ndarray:
    """`fn` (row positions -> one value per position) evaluated on fixed blocks of `block` positions, the
    last block padded by repeating its first position: every row sees the same kernel shapes in any batch."""
    parts = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        positions = np.arange(start, stop)
        if len(positions) < block:
            positions = np.concatenate([positions, np.full(block - len(positions), start)])
        parts.append(np.asarray(fn(positions), dtype=float).reshape(-1)[: stop - start])
    return np.concatenate(parts) if parts else np.zeros(0)


def is_row_exact(model: Any) -> bool:
    return type(final_estimator(model)).__name__ in ROW_EXACT_ESTIMATORS


def is_elementwise(step: Any) -> bool:
    """A preprocessing step (or a ColumnTransformer / Pipeline of them) that maps each value, or each row,
    on its own with no reduction across features: its output for a row does not depend on the batch."""
    if isinstance(step, str):
        return step in ("passthrough", "drop")
    if isinstance(step, Pipeline):
        return all(is_elementwise(inner) for _, inner in step.steps)
    if isinstance(step, ColumnTransformer):
        fitted = getattr(step, "transformers_", step.transformers)
        return all(is_elementwise(inner) for _, inner, _ in fitted)
    return type(step).__name__ in ELEMENTWISE_TRANSFORMS


def member_probabilities(model: Any, X: pd.DataFrame, Z: np.ndarray | None = None) -> np.ndarray:
    """The member's positive-class probability per row, independent of the batch the row is in: row-exact
    members on the whole batch; others with elementwise preprocessing on the whole batch and the final
    estimator on fixed blocks; anything else entirely on fixed blocks. `Z`: the member's preprocessing of
    X already computed (`MemberScoring.preprocess`: row-exact pipelines, or elementwise preprocessing)."""
    if Z is not None:
        estimator = model.steps[-1][1]
        if not is_row_exact(model):
            given = Z
            return blocked(lambda positions: positive_proba(estimator, given[positions]), len(X))
        proba = estimator_proba(estimator, Z)
        return np.asarray(proba[:, list(getattr(estimator, "classes_", [0, 1])).index(1)], dtype=float)
    if is_row_exact(model):
        return np.asarray(positive_proba(model, X), dtype=float)
    if isinstance(model, Pipeline) and len(model.steps) > 1 and is_elementwise(model[:-1]):
        Z = model[:-1].transform(X)
        estimator = model.steps[-1][1]
        return blocked(lambda positions: positive_proba(estimator, Z[positions]), len(X))
    return blocked(lambda positions: positive_proba(model, X.iloc[positions]), len(X))


@dataclass(frozen=True)
class _Preprocessing:
    key: str  # digest of the fitted preprocessing (the pipeline without its final estimator)
    fitted: Any
    transformer: Any  # its single ColumnTransformer (what the numpy form reproduces), or None

    @property
    def fast(self) -> FastColumnTransformer | None:
        return compiled(self.transformer)


class MemberScoring:
    """Each member's preprocessing, computed once per batch for all members holding the same fitted
    preprocessing (or the same fitted part of it), then each member's own final estimator on it.
    Built once per runtime (at load): reads fitted attributes only."""

    def __init__(self, members: Mapping[str, Any]):
        self.members = dict(members)
        self.preprocessing: dict[str, _Preprocessing] = {}
        for name, model in self.members.items():
            # Row-exact pipelines score the whole batch anyway; others only when their preprocessing
            # is elementwise (what `member_probabilities` computes once per batch for them).
            if isinstance(model, Pipeline) and len(model.steps) > 1 and (
                    is_row_exact(model) or is_elementwise(model[:-1])):
                prefix = model[:-1]
                try:
                    key = hashlib.sha256(safe_format.dumps(prefix)).hexdigest()
                except Exception:  # an optional path: a member whose steps it cannot digest scores on its own
                    continue
                inner = prefix.steps[0][1] if len(prefix.steps) == 1 else None
                self.preprocessing[name] = _Preprocessing(key, prefix, inner)

    def preprocess(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """Member name -> its preprocessed X, each distinct (part of a) preprocessing computed once.
        Members missing here score on their own (`member_probabilities` without Z)."""
        if not fast_path_enabled() or len(X) == 0:
            return {}
        small = len(X) <= FAST_PATH_MAX_ROWS
        parts: dict[str, np.ndarray] = {}
        whole: dict[str, np.ndarray] = {}
        out: dict[str, np.ndarray] = {}
        for name, prep in self.preprocessing.items():
            if small and prep.transformer is not None:
                fast = fast_transform(prep.transformer, X, parts)
                if fast is not None:
                    out[name] = fast
                    continue
            if prep.key not in whole:
                whole[prep.key] = prep.fitted.transform(X)
            out[name] = whole[prep.key]
        return out

    def matrix(self, X: pd.DataFrame) -> np.ndarray:
        """Each member's probability per row (columns in member order), batch-invariant."""
        inputs = self.preprocess(X)
        return np.column_stack([member_probabilities(model, X, inputs.get(name))
                                for name, model in self.members.items()])
