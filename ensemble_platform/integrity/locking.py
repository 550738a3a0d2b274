"""Exclusive file locks (fcntl.flock) that serialise appenders across processes and threads.

The lock file may sit inside the platform home: an attacker who can write there can delete or
replace it (breaking mutual exclusion, never integrity: appends still verify the tail first), but
cannot make us follow a symlink (O_NOFOLLOW) or truncate another file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOCK_SUFFIX = ".lock"
LOCK_FILE_MODE = 0o600


@dataclass
class _Holder:
    rlock: threading.RLock = field(default_factory=threading.RLock)
    fd: int | None = None
    depth: int = 0


_holders: dict[str, _Holder] = {}
_holders_guard = threading.Lock()


def lock_path_for(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)


def _holder(path: Path) -> _Holder:
    key = os.path.abspath(path)
    with _holders_guard:
        return _holders.setdefault(key, _Holder())


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if absent). Reentrant within a process: nested
    holders (same or other objects, same thread) share one lock; other threads wait."""
    holder = _holder(path)
    with holder.rlock:
        if holder.depth == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            holder.fd = fd
        holder.depth += 1
        try:
            yield
        finally:
            holder.depth -= 1
            if holder.depth == 0 and holder.fd is not None:
                fcntl.flock(holder.fd, fcntl.LOCK_UN)
                os.close(holder.fd)
                holder.fd = None
