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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline

from ensemble_platform.members.catalogue import final_estimator
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


def member_probabilities(model: Any, X: pd.DataFrame) -> np.ndarray:
    """The member's positive-class probability per row, independent of the batch the row is in: row-exact
    members on the whole batch; others with elementwise preprocessing on the whole batch and the final
    estimator on fixed blocks; anything else entirely on fixed blocks."""
    if is_row_exact(model):
        return np.asarray(positive_proba(model, X), dtype=float)
    if isinstance(model, Pipeline) and len(model.steps) > 1 and is_elementwise(model[:-1]):
        Z = model[:-1].transform(X)
        estimator = model.steps[-1][1]
        return blocked(lambda positions: positive_proba(estimator, Z[positions]), len(X))
    return blocked(lambda positions: positive_proba(model, X.iloc[positions]), len(X))
