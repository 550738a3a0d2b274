"""Atomic file writes, the one way the platform replaces a file: readers never see a half-written
file, and a crash leaves the old file or the new one, never a mix (a temp file in the same folder,
fsynced, then renamed over the target)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to (with any writer: parquet, gzip, copy);
    on success it replaces `path`, on error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, content: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    return Path(path)


def write_json(document: object, path: Path) -> Path:
    """Sorted keys, indented, no NaN (strict JSON)."""
    return write_atomic(path, json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode())
