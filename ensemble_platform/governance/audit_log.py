"""The release lock: approvals, promotions and exports of one dataset never interleave, across
processes. (The logs themselves are keyed and checkpointed: see `ensemble_platform.integrity`.)"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".release.lock"


@contextlib.contextmanager
def release_lock(directory: Path) -> Iterator[None]:
    """Serialise release decisions of one dataset (approvals, promotions) across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
