"""A fast path for small inputs (a single decision): the same bits as the plain pipelines, without
the per-call overheads that dominate one row.

Forests: scikit-learn's `predict_proba` dispatches every tree through joblib (about 7 ms per forest
for one row, measured in issue 18), although with `n_jobs=1` it sums the trees in their order on
one thread. Summing the same trees directly, in the same order, into the same float64 buffer and
dividing by the tree count is the same computation: bit-identical results (tested on the holdout,
row by row and in batches). Inputs from 65 rows up to PARALLEL_MIN_ROWS keep scikit-learn's own path.

Large inputs to a forest go the other way: scikit-learn predicts with the forest's `n_jobs`, and a
multi-threaded forest adds its trees' probabilities in whatever order the threads finish (different
last bits from run to run), so every member predicts with `n_jobs=1` (`predict_single_threaded`):
one core for the out-of-fold and holdout predictions that dominate a forest member's step at scale.
From PARALLEL_MIN_ROWS rows the rows are split into contiguous blocks, one per thread, and each block
is summed tree by tree in the forest's order: every row gets the sum it gets on one thread (rows are
independent), so the result is bit-identical whatever the thread count, and the tree traversal
(Cython, without the GIL) runs on both cores.

Histogram gradient boosting predicts in an OpenMP parallel region over rows; for one row on a busy
2-core machine the region's start-up and spin-waits cost 100+ ms (measured: 111-189 ms p50 for one
row, 6-15 ms with one thread). Up to 64 rows it runs with one OpenMP thread: `omp_set_num_threads`
(threadpoolctl) sets the calling thread's own setting and is restored on exit, so other threads are
unaffected; each row's score is the same sum over the trees in order on any thread count (same bits).

`ENSEMBLE_PLATFORM_FAST_PATH=off` (read per call) turns every fast path off (this one, the fitted
preprocessing of `fast_preprocess` and the shared preprocessing of `ensemble.batching`): only the
benchmark and the tests use it, to compare the fast paths with scikit-learn's own, bit for bit.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from threadpoolctl import ThreadpoolController

from ensemble_platform.members.catalogue import N_JOBS, final_estimator

# Inputs up to this many rows take the direct tree sum (where joblib's dispatch outweighs the trees).
FAST_PATH_MAX_ROWS = 64
# Inputs of at least this many rows to a forest are summed in N_JOBS row blocks, one per thread.
PARALLEL_MIN_ROWS = 4096
_FORESTS = (RandomForestClassifier, ExtraTreesClassifier)
FAST_PATH_ENV = "ENSEMBLE_PLATFORM_FAST_PATH"


def fast_path_enabled() -> bool:
    """Whether the fast small-input paths are on (the default; see the module docstring)."""
    return os.environ.get(FAST_PATH_ENV, "on") != "off"


def is_forest(model: Any) -> bool:
    """A single-output random / extra-trees forest (what `forest_proba` sums)."""
    return isinstance(model, _FORESTS) and isinstance(getattr(model, "n_classes_", None), (int, np.integer))


def forest_proba(forest: RandomForestClassifier | ExtraTreesClassifier, X: Any) -> np.ndarray:
    """`forest.predict_proba(X)` for a single-output forest, summed tree by tree in the forest's
    order (what scikit-learn does on one thread), without joblib."""
    return _tree_sum(forest, forest._validate_X_predict(X))  # float32, the forest's feature count


def forest_proba_by_rows(forest: RandomForestClassifier | ExtraTreesClassifier, X: Any,
                         workers: int = N_JOBS) -> np.ndarray:
    """`forest_proba(forest, X)`, bit for bit, with `workers` threads each summing a contiguous
    block of rows (see the module docstring)."""
    X = forest._validate_X_predict(X)
    bounds = np.linspace(0, X.shape[0], max(workers, 1) + 1).astype(int)
    blocks = [X[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    with ThreadPoolExecutor(len(blocks), thread_name_prefix="forest-rows") as pool:
        return np.vstack(list(pool.map(functools.partial(_tree_sum, forest), blocks)))


def _tree_sum(forest: RandomForestClassifier | ExtraTreesClassifier, X: Any) -> np.ndarray:
    total = np.zeros((X.shape[0], forest.n_classes_), dtype=np.float64)
    for tree in forest.estimators_:
        # What `tree.predict_proba(X, check_input=False)` returns for a single output, without its
        # per-tree `check_is_fitted` and feature-count checks (~25 us each, 150 trees per forest).
        total += tree.tree_.predict(X)[:, :tree.n_classes_]
    total /= len(forest.estimators_)
    return total


# k-NN's neighbour search (scikit-learn's OpenMP ArgKmin) settles exact distance ties at the k-th
# neighbour by how the work is split across threads: on credit_data, 1 or 2 threads gave one
# probability and 4 or 8 another, and with it the combiner's weights and the version (found by review).
# Every k-NN prediction runs with this many OpenMP threads whatever the machine or OMP_NUM_THREADS
# (a 1-core machine still runs 1: scikit-learn caps the count at the cores). 2: the reference machine's
# bits and speed (pinning 1 would halve k-NN's step at scale, its largest).
KNN_OPENMP_THREADS = 2


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()


def estimator_proba(estimator: Any, Z: Any) -> np.ndarray:
    """`estimator.predict_proba(Z)`, bit for bit; on small inputs forests sum their trees directly and
    histogram boosting runs on the calling thread only, on large ones forests sum row blocks on
    N_JOBS threads (see the module docstring)."""
    if isinstance(estimator, KNeighborsClassifier):
        return fast_predict_proba(estimator, Z)
    if not fast_path_enabled():
        return np.asarray(estimator.predict_proba(Z))
    if len(Z) <= FAST_PATH_MAX_ROWS:
        if is_forest(estimator):
            return forest_proba(estimator, Z)
        if isinstance(estimator, HistGradientBoostingClassifier):
            with _threadpools().limit(limits=1, user_api="openmp"):
                return np.asarray(estimator.predict_proba(Z))
    elif len(Z) >= PARALLEL_MIN_ROWS and is_forest(estimator):
        return forest_proba_by_rows(estimator, Z)
    return np.asarray(estimator.predict_proba(Z))


def fast_predict_proba(model: Any, X: Any) -> np.ndarray:
    """`model.predict_proba(X)`, bit for bit; forests and histogram boosting (alone or ending a
    pipeline) go through `estimator_proba`, which picks their path by input size."""
    estimator = final_estimator(model)
    if isinstance(estimator, KNeighborsClassifier):
        with _threadpools().limit(limits=KNN_OPENMP_THREADS, user_api="openmp"):
            return np.asarray(model.predict_proba(X))
    if not fast_path_enabled() or not (is_forest(estimator) or isinstance(estimator, HistGradientBoostingClassifier)):
        return np.asarray(model.predict_proba(X))
    Z = model[:-1].transform(X) if isinstance(model, Pipeline) and len(model.steps) > 1 else X
    return estimator_proba(estimator, Z)
