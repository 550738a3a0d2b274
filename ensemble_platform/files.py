"""Atomic file writes: readers never see a half-written file (temp file + rename)."""

from __future__ import annotations

import json
from pathlib import Path


def write_atomic(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
    return path


def write_json(document: object, path: Path) -> Path:
    """Sorted keys, indented, no NaN (strict JSON)."""
    return write_atomic(path, json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode())
