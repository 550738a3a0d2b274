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
