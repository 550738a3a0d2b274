"""Append-only, hash-chained JSON Lines logs (approvals, promotions).

Each entry carries its sequence number, the SHA-256 of the previous entry and its own, so an
edited, removed or reordered line is detected by `verify()`. Writers hold an exclusive lock on
the dataset's release lock (see `release_lock`), so one decision never interleaves with another.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ensemble_platform.errors import PlatformError

GENESIS = "0" * 64


class AuditLogError(PlatformError):
    """An audit log that does not verify: edited, truncated or reordered."""


def _digest(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextlib.contextmanager
def release_lock(directory: Path) -> Iterator[None]:
    """Serialise release decisions of one dataset (approvals, promotions) across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".release.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class AuditLog:
    def __init__(self, path: Path):
        self.path = path

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AuditLogError(f"{self.path} line {number} is not JSON: {exc}") from exc
        return entries

    def verify(self) -> list[dict]:
        """The entries, after checking every link of the chain; raises naming the first bad line."""
        entries = self.entries()
        previous = GENESIS
        for number, entry in enumerate(entries, start=1):
            if entry.get("seq") != number:
                raise AuditLogError(f"{self.path} line {number}: sequence {entry.get('seq')} (expected {number})")
            if entry.get("prev_sha256") != previous:
                raise AuditLogError(f"{self.path} line {number}: does not chain to line {number - 1}")
            if entry.get("sha256") != _digest(entry):
                raise AuditLogError(f"{self.path} line {number}: content does not match its SHA-256 (edited?)")
            previous = entry["sha256"]
        return entries

    def draft(self, record: dict) -> dict:
        """The entry `record` would become if appended now (call under the release lock)."""
        entries = self.verify()
        entry = {**record, "seq": len(entries) + 1,
                 "prev_sha256": entries[-1]["sha256"] if entries else GENESIS}
        entry["sha256"] = _digest(entry)
        return entry

    def append(self, entry: dict) -> dict:
        """Append a drafted entry, refusing one drafted against another state of the log."""
        expected = self.draft({k: v for k, v in entry.items() if k not in ("seq", "prev_sha256", "sha256")})
        if expected != entry:
            raise AuditLogError(f"{self.path} changed since the entry was drafted; nothing was appended")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        with open(self.path, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return entry
