"""A fast path for small inputs (a single decision): the same bits as the plain pipelines, without
the per-call overheads that dominate one row.

Forests: scikit-learn's `predict_proba` dispatches every tree through joblib (about 7 ms per forest
for one row, measured in issue 18), although with `n_jobs=1` it sums the trees in their order on
one thread. Summing the same trees directly, in the same order, into the same float64 buffer and
dividing by the tree count is the same computation: bit-identical results (tested on the holdout,
row by row and in batches). Larger inputs keep scikit-learn's own path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.pipeline import Pipeline

from ensemble_platform.members.catalogue import final_estimator

# Inputs up to this many rows take the direct tree sum (where joblib's dispatch outweighs the trees).
FAST_PATH_MAX_ROWS = 64
_FORESTS = (RandomForestClassifier, ExtraTreesClassifier)


def forest_proba(forest: RandomForestClassifier | ExtraTreesClassifier, X: Any) -> np.ndarray:
    """`forest.predict_proba(X)` for a single-output forest, summed tree by tree in the forest's
    order (what scikit-learn does on one thread), without joblib."""
    X = forest._validate_X_predict(X)
    total = np.zeros((X.shape[0], forest.n_classes_), dtype=np.float64)
    for tree in forest.estimators_:
        total += tree.predict_proba(X, check_input=False)
    total /= len(forest.estimators_)
    return total


def fast_predict_proba(model: Any, X: Any) -> np.ndarray:
    """`model.predict_proba(X)`, bit for bit; forests (alone or ending a pipeline) on small inputs
    skip joblib's per-tree dispatch."""
    forest = final_estimator(model)
    single_output = isinstance(forest, _FORESTS) and isinstance(getattr(forest, "n_classes_", None), (int, np.integer))
    if not single_output or len(X) > FAST_PATH_MAX_ROWS:
        return np.asarray(model.predict_proba(X))
    Z = model[:-1].transform(X) if isinstance(model, Pipeline) and len(model.steps) > 1 else X
    return forest_proba(forest, Z)
