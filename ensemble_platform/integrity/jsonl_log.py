"""Keyed, hash-chained, checkpointed JSON Lines logs (approvals, promotions).

One entry per line, in the form `chain.py` defines, written exactly as `serialise_entry` writes it.
After each append the writer stores a signed checkpoint outside the platform home (`checkpoint.py`).

Protects against (attacker writes anything under the platform home, holds no key, cannot write the
checkpoint directory or change the code): edited, inserted, reordered or deleted lines, dropped
last lines, an emptied or deleted file, forged lines (recomputed SHA-256 without the key), lines
re-serialised differently (whitespace, key order), a cut-off last line, and appending onto any of
these: `append` verifies the whole log against its checkpoint BEFORE writing anything.

Does not protect against: a holder of the key; an attacker who can also write the checkpoint
directory (rollback to an older signed checkpoint + matching truncation); losing entries appended
after the last checkpoint when the writer crashed in between; denial of service (an attacker can
always damage the file; we detect it, we cannot repair it). Old entries without a MAC (written by
the unkeyed `AuditLog`) are refused as "unsigned entry (written before keyed logs)".
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ensemble_platform.integrity.chain import (
    CHAIN_FIELDS,
    GENESIS,
    SEQ,
    SHA,
    canonical_json,
    record_of,
    seal,
    verify_entries,
)
from ensemble_platform.integrity.checkpoint import Checkpoint, CheckpointStore, verify_against
from ensemble_platform.integrity.errors import ChainError, CheckpointError, LogIntegrityError
from ensemble_platform.integrity.keys import SigningKey, load_signing_key
from ensemble_platform.integrity.locking import exclusive, lock_path_for
from ensemble_platform.settings import PlatformPaths

NEWLINE = b"\n"
LOG_FILE_MODE = 0o644


def serialise_entry(entry: Mapping[str, Any]) -> bytes:
    """The one line an entry is stored as (sorted keys, no whitespace, UTF-8, trailing newline)."""
    return canonical_json(entry) + NEWLINE


def _read_bytes(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise LogIntegrityError(path, None, f"cannot be opened ({exc}); a symlink is refused") from exc
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _parse_line(path: Path, number: int, raw: bytes, *, last_cut_off: bool) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        if last_cut_off:
            raise LogIntegrityError(path, number, "cut off: the last line is incomplete (no trailing newline, "
                                                  "not JSON): an interrupted write or a truncation") from exc
        raise LogIntegrityError(path, number, f"not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise LogIntegrityError(path, number, f"not a JSON object (found {type(document).__name__})")
    try:
        canonical = serialise_entry(document)
    except ValueError as exc:
        raise LogIntegrityError(path, number, f"edited: not strict JSON ({exc})") from exc
    if canonical != raw + NEWLINE:
        raise LogIntegrityError(path, number, "edited: the line is not in the form the writer wrote "
                                              "(whitespace, key order, escaping or duplicate keys changed)")
    return document


class KeyedLog:
    """A keyed JSON Lines log. `name` identifies it in its checkpoint: unique per platform home (e.g.
    "credit_data/approvals"). `key` and `checkpoints` default to the configured key and the checkpoint
    directory of `paths` (default: the home in `ENSEMBLE_PLATFORM_HOME`); pass `paths` when the log
    belongs to another home."""

    def __init__(self, path: Path, name: str, key: SigningKey | None = None,
                 checkpoints: CheckpointStore | None = None, *, paths: PlatformPaths | None = None):
        self.path = Path(path)
        self.name = name
        self.key = key or load_signing_key(paths)
        self.checkpoints = checkpoints or CheckpointStore(self.key, paths=paths)

    def __repr__(self) -> str:
        return f"KeyedLog({str(self.path)!r}, {self.name!r}, key_id={self.key.key_id})"

    @property
    def lock_path(self) -> Path:
        return lock_path_for(self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise drafts and appends across processes (reentrant within one process)."""
        with exclusive(self.lock_path):
            yield

    def entries(self) -> list[dict[str, Any]]:
        """The parsed lines, unverified. Raises `LogIntegrityError` for a line that is not a JSON object."""
        data = _read_bytes(self.path)
        if not data:
            return []
        complete = data.endswith(NEWLINE)
        lines = data.split(NEWLINE)
        if complete:
            lines.pop()
        return [_parse_line(self.path, number, raw, last_cut_off=not complete and number == len(lines))
                for number, raw in enumerate(lines, start=1)]

    def verify(self) -> list[dict[str, Any]]:
        """The entries after checking every line's chain link, hash and MAC, and the log against its
        checkpoint. Raises `LogIntegrityError` naming the file, the first bad line and the reason, or
        `KeyMismatchError` if the checkpoint was signed with another key."""
        checkpoint = self._read_checkpoint()
        entries = self.entries()
        try:
            verify_entries(entries, self.key, name=self.name)
            verify_against(entries, checkpoint, self.key, name=self.name)
        except ChainError as exc:
            raise self._chain_error(exc) from exc
        except CheckpointError as exc:
            raise LogIntegrityError(self.path, exc.position, str(exc).removeprefix(f"{self.name}: ")) from exc
        return entries

    def draft(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The entry `record` would become if appended now (hold `lock()` from draft to append)."""
        entries = self.verify()
        return seal(record, entries[-1] if entries else None, self.key)

    def append(self, entry_or_record: Mapping[str, Any]) -> dict[str, Any]:
        """Append a drafted entry or a plain record; returns the stored entry.

        First (before writing anything) the file must end with a newline (or be empty/absent) and
        verify entirely against its checkpoint, and a drafted entry must still follow the current
        head. Then the line is written and fsynced, then the checkpoint is updated.
        """
        with self.lock():
            self._refuse_cut_off_tail()
            entries = self.verify()
            entry = self._entry_for(entry_or_record, entries[-1] if entries else None)
            size = self.path.stat().st_size if self.path.exists() else 0
            self._write_line(serialise_entry(entry))
            try:
                self.checkpoints.write(self.name, entry[SEQ], entry[SHA])
            except BaseException:
                if self._checkpointed(entry):
                    return entry  # the checkpoint is in place (what failed came after it): appended
                # Not checkpointed, not appended: the caller (a promotion's transaction) rolls back on
                # this error, and a line left behind would record what it undid.
                with open(self.path, "r+b") as handle:
                    handle.truncate(size)
                    os.fsync(handle.fileno())
                raise
            return entry

    def _checkpointed(self, entry: Mapping[str, Any]) -> bool:
        try:
            checkpoint = self.checkpoints.read(self.name)
        except Exception:  # unreadable: not this entry's
            return False
        return checkpoint is not None and checkpoint.count == entry[SEQ] and checkpoint.head_sha256 == entry[SHA]

    def reanchor(self) -> dict[str, Any] | None:
        """Operator action for a log whose checkpoint is legitimately missing (home moved, checkpoint
        directory lost): verify every line's chain and MAC, then checkpoint the current head. Trusts
        that the log was not truncated meanwhile. Returns the head (None for an empty log)."""
        with self.lock():
            entries = self.entries()
            try:
                verify_entries(entries, self.key, name=self.name)
            except ChainError as exc:
                raise self._chain_error(exc) from exc
            head = entries[-1] if entries else None
            self.checkpoints.write(self.name, head[SEQ] if head else 0, head[SHA] if head else GENESIS)
            return head

    def _chain_error(self, exc: ChainError) -> LogIntegrityError:
        return LogIntegrityError(self.path, exc.position, exc.reason + (f" ({exc.detail})" if exc.detail else ""))

    def _read_checkpoint(self) -> Checkpoint | None:
        try:
            return self.checkpoints.read(self.name)
        except CheckpointError as exc:
            raise LogIntegrityError(self.path, None, str(exc)) from exc

    def _refuse_cut_off_tail(self) -> None:
        data = _read_bytes(self.path)
        if data and not data.endswith(NEWLINE):
            raise LogIntegrityError(self.path, data.count(NEWLINE) + 1,
                                    "does not end with a newline (last line cut off or edited); nothing was appended")

    def _entry_for(self, entry_or_record: Mapping[str, Any], head: dict[str, Any] | None) -> dict[str, Any]:
        if not any(field in entry_or_record for field in CHAIN_FIELDS):
            return seal(entry_or_record, head, self.key)
        expected = seal(record_of(entry_or_record), head, self.key)
        if dict(entry_or_record) != expected:
            raise LogIntegrityError(self.path, expected[SEQ], "the log changed since the entry was drafted "
                                                              "(or the draft was altered); nothing was appended")
        return expected

    def _write_line(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     LOG_FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # leave no partial line behind (disk full, interrupted write)
                raise
        finally:
            os.close(fd)
        if created:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
