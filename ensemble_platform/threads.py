"""Thread pools pinned for reproducibility: BLAS/OpenMP reductions split across threads sum in a
different order, so a fit run with OMP_NUM_THREADS=1 and one with 2 can differ in the last bits
(combiner weights differed by ~3e-7), and with them the config hash and the version. Fits whose
output is versioned run with one BLAS/OpenMP thread, whatever the machine's setting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def single_threaded_math() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS thread (OpenMP and the estimators' own `n_jobs` left alone): every member fit.

    Measured on 2 cores (`bench/README.md`, "Scale"): the logistic-regression member's six fits on
    7,500 rows took 2.9 s with OpenBLAS's two threads and 0.3 s with one (small products, where the
    threads' hand-offs cost more than the arithmetic), and the two gave different bits, so its
    probabilities, and the ensemble version fitted on them, depended on the machine's thread setting.
    The other families gave the same bits and times either way. Predictions are left alone: they
    split rows, not sums, across threads."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
