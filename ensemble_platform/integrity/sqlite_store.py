"""The embedded decision-log store: chain entries in one SQLite table, checkpointed after every commit.

One table `entries(seq INTEGER PRIMARY KEY, record_id TEXT UNIQUE, kind TEXT, created_at TEXT,
entry TEXT)`; `entry` holds the full signed JSON entry (`chain.py`), the other columns are copies
for lookups and must match it. WAL journal, `synchronous=FULL`: a committed batch survives a crash
or power loss. Each `append_many` is one transaction under an exclusive file lock (writers in other
processes serialise), and is checkpointed (`checkpoint.py`) after it commits; if the checkpoint
cannot be written the batch is deleted again, so callers never get an error for stored entries.

Protects against (attacker writes anything under the platform home, holds no key, cannot write the
checkpoint directory): edited, inserted, deleted or reordered rows, rows whose columns disagree with
their signed entry, forged rows, dropped last rows, an emptied or deleted database. Opening checks
the tail cheaply (the checkpointed entry, the rows after it, the highest seq); `verify()` streams
the whole chain and names the first bad seq; every batch first checks that the head it chains onto
is the one this process last saw (or a signed continuation written by another process).

Does not protect against: a holder of the key; an attacker who can also write the checkpoint
directory (rollback); losing entries committed after the last checkpoint when the process died in
between (at most one batch); damage between tail checks and a full `verify()` in rows the tail
check does not read (found by `verify()`, not by opening).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ensemble_platform.integrity.chain import (
    EDITED,
    GENESIS,
    PREV,
    REORDERED,
    SEQ,
    SHA,
    check_entry,
    entry_text,
    seal,
    verify_entries,
)
from ensemble_platform.integrity.checkpoint import Checkpoint, CheckpointStore, verify_tail
from ensemble_platform.integrity.errors import ChainError, CheckpointError, IntegrityError, StoreClosedError
from ensemble_platform.integrity.keys import SigningKey, load_signing_key
from ensemble_platform.integrity.locking import exclusive, lock_path_for
from ensemble_platform.integrity.store import (
    RECORD_CREATED_AT,
    RECORD_ID,
    RECORD_KIND,
    RecordError,
    check_record,
)
from ensemble_platform.settings import PlatformPaths

TABLE = "entries"
COLUMNS = "seq, record_id, kind, created_at, entry"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_created_at ON {TABLE} (created_at);
CREATE INDEX IF NOT EXISTS {TABLE}_kind ON {TABLE} (kind, seq);
"""
BUSY_TIMEOUT_MS = 30_000
STREAM_CHUNK = 1_000

Row = tuple[int, str, str, str, str]


def entry_of_row(row: Row, name: str) -> dict[str, Any]:
    """The signed entry a row holds, after checking the row's columns and text agree with it."""
    seq, record_id, kind, created_at, text = row
    try:
        entry = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ChainError(seq, EDITED, name=name, detail=f"row seq {seq}: entry is not JSON") from exc
    if not isinstance(entry, dict):
        raise ChainError(seq, EDITED, name=name, detail=f"row seq {seq}: entry is not a JSON object")
    if entry.get(SEQ) != seq:
        raise ChainError(seq, REORDERED, name=name, detail=f"row seq {seq} holds entry seq {entry.get(SEQ)!r}")
    columns = (entry.get(RECORD_ID), entry.get(RECORD_KIND), entry.get(RECORD_CREATED_AT))
    if columns != (record_id, kind, created_at):
        raise ChainError(seq, EDITED, name=name, detail=f"row seq {seq}: columns {(record_id, kind, created_at)} "
                                                        f"do not match the signed entry {columns}")
    try:
        stored_as_written = entry_text(entry) == text
    except ValueError:
        stored_as_written = False
    if not stored_as_written:
        raise ChainError(seq, EDITED, name=name, detail=f"row seq {seq}: entry text is not as written")
    return entry


class SqliteChainStore:
    """A `ChainStore` in one SQLite file. Thread-safe; writers in several processes serialise on a lock file.

    `name` identifies the store in its checkpoint (unique per platform home). `key` and `checkpoints`
    default to the configured key and the checkpoint directory of `paths` (default: the home in
    `ENSEMBLE_PLATFORM_HOME`). `check_tail=False` skips the open-time check (for `reanchor` only)."""

    def __init__(self, path: Path, name: str, key: SigningKey | None = None,
                 checkpoints: CheckpointStore | None = None, *, paths: PlatformPaths | None = None,
                 check_tail: bool = True):
        self.path = Path(path)
        self.name = name
        self.key = key or load_signing_key(paths)
        self.checkpoints = checkpoints or CheckpointStore(self.key, paths=paths)
        self.label = f"{name} [{self.path}]"  # names the store and its file in errors
        self._lock = threading.RLock()
        self._closed = False
        self._head: dict[str, Any] | None = None
        self._head_text: str | None = None
        with exclusive(self.lock_path):
            checkpoint = self.checkpoints.read(name) if check_tail else None
            if checkpoint and checkpoint.count and not self.path.exists():
                raise CheckpointError(f"{self.label}: truncated: checkpoint says {checkpoint.count} entries, log has 0 "
                                      f"({self.path} does not exist: deleted)", position=1)
            self._conn = self._connect()
            try:
                if check_tail:
                    self._check_tail_or_locate(checkpoint)
                self._head, self._head_text = self._read_head()
            except BaseException:
                self._conn.close()
                raise

    def __repr__(self) -> str:
        return f"SqliteChainStore({str(self.path)!r}, {self.name!r}, key_id={self.key.key_id})"

    def __enter__(self) -> SqliteChainStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def lock_path(self) -> Path:
        return lock_path_for(self.path)

    # -- reading ---------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            self._ensure_open()
            return int(self._conn.execute(f"SELECT coalesce(max(seq), 0) FROM {TABLE}").fetchone()[0])

    def head(self) -> dict[str, Any] | None:
        with self._lock:
            self._ensure_open()
            return self._read_head()[0]

    def get(self, record_id: str) -> dict[str, Any] | None:
        """The entry of `record_id` after checking its columns, hash and MAC (not its place in the chain)."""
        with self._lock:
            self._ensure_open()
            row = self._conn.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE record_id = ?", (record_id,)).fetchone()
        if row is None:
            return None
        entry = entry_of_row(row, self.label)
        check_entry(entry, self.key, position=row[0], expected_seq=row[0], prev_sha256=str(entry.get(PREV)), name=self.label)
        return entry

    def existing_ids(self, record_ids: Sequence[str]) -> set[str]:
        if not record_ids:
            return set()
        marks = ",".join("?" * len(record_ids))
        with self._lock:
            self._ensure_open()
            rows = self._conn.execute(f"SELECT record_id FROM {TABLE} WHERE record_id IN ({marks})", list(record_ids))
            return {row[0] for row in rows}

    def iter_entries(self, since_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Entries with seq > `since_seq` in order, streamed on a connection of their own. Each row's
        columns are checked against its entry; the chain is not (use `verify()`)."""
        self._ensure_open()
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only = ON")
            cursor = conn.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE seq > ? ORDER BY seq", (since_seq,))
            while rows := cursor.fetchmany(STREAM_CHUNK):
                for row in rows:
                    yield entry_of_row(row, self.label)
        finally:
            conn.close()

    def iter_kinds(self, kinds: Sequence[str], since_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Entries of the given kinds with seq > `since_seq`, in order, each checked like `get` (columns,
        hash, MAC; not its place in the chain: `verify()` finds a deleted row)."""
        marks = ",".join("?" * len(kinds))
        yield from self._iter_checked(f"SELECT {COLUMNS} FROM {TABLE} INDEXED BY {TABLE}_kind "
                                      f"WHERE kind IN ({marks}) AND seq > ? ORDER BY kind, seq", [*kinds, since_seq],
                                      by_seq=len(kinds) > 1)

    def iter_created(self, start: str, end: str, kinds: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Entries with `start` <= created_at < `end` (text comparison of ISO-8601 UTC times, so
        `("2026-01-01", "2026-01-02")` is one UTC day), optionally of `kinds`, in created_at order (ties in
        seq order), found by the created_at index and each checked like `get`."""
        where = "created_at >= ? AND created_at < ?" + (f" AND kind IN ({','.join('?' * len(kinds))})" if kinds else "")
        yield from self._iter_checked(f"SELECT {COLUMNS} FROM {TABLE} INDEXED BY {TABLE}_created_at WHERE {where} "
                                      f"ORDER BY created_at, seq", [start, end, *(kinds or ())])

    def _iter_checked(self, query: str, params: Sequence[Any], *, by_seq: bool = False) -> Iterator[dict[str, Any]]:
        """Rows of `query`, streamed on a connection of their own, each checked (columns, hash, MAC).
        `by_seq`: the query yields several seq-ordered runs (one per kind): merge them into seq order."""
        self._ensure_open()
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only = ON")
            rows = conn.execute(query, list(params)).fetchall() if by_seq else None
            if rows is not None:
                rows.sort(key=lambda row: row[0])
                chunks: Iterator[list[Row]] = iter([rows])
            else:
                cursor = conn.execute(query, list(params))
                chunks = iter(lambda: cursor.fetchmany(STREAM_CHUNK), [])
            for chunk in chunks:
                for row in chunk:
                    entry = entry_of_row(row, self.label)
                    check_entry(entry, self.key, position=row[0], expected_seq=row[0],
                                prev_sha256=str(entry.get(PREV)), name=self.label)
                    yield entry
        finally:
            conn.close()

    def verify(self) -> int:
        """Check every entry in order (seq, link, hash, MAC, columns) and the store against its
        checkpoint; returns the number of entries. Raises `ChainError` naming the first bad seq,
        `CheckpointError` (truncated, rewritten, no checkpoint) or `KeyMismatchError`."""
        checkpoint = self.checkpoints.read(self.name)
        total, anchor = 0, None
        for entry in self._verified_entries():
            total += 1
            if checkpoint is not None and total == checkpoint.count:
                anchor = entry
        verify_tail([anchor] if anchor else [], total, checkpoint, self.key, name=self.label)
        return total

    def check_writable(self) -> str:
        """Where the store writes, after checking its directory is writable; raises `IntegrityError` if not."""
        if not os.access(self.path.parent, os.W_OK):
            raise IntegrityError(f"{self.path.parent} is not writable")
        return str(self.path)

    # -- writing ---------------------------------------------------------------------------------

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Seal `records` onto the chain in one transaction (all or none), then checkpoint. Raises
        `RecordError` (bad or duplicate record), `IntegrityError` (the head it would chain onto does
        not verify), `StoreClosedError` or the database's own error (e.g. disk full); in every case
        nothing was stored and the head is unchanged."""
        records = list(records)
        return self.append_checked(lambda: records)

    def append_checked(self, build: Callable[[], Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """Append what `build()` returns, with no other writer (thread or process) in between: `build` reads
        the store's current state, refuses by raising, or returns the records to seal. Read-check-append
        in one critical section, e.g. claiming a review item nobody else claimed meanwhile."""
        with self._lock, exclusive(self.lock_path):
            self._ensure_open()
            records = list(build())
            if not records:
                return []
            self._check_records(records)
            entries, last_text = self._commit(records)
            self._checkpoint_or_undo(entries)
            self._head, self._head_text = entries[-1], last_text
            return entries

    def reanchor(self) -> int:
        """Operator action for a store whose checkpoint is legitimately missing (home moved, checkpoint
        directory lost): verify the whole chain, then checkpoint its head. Trusts that no last rows
        were dropped meanwhile. Returns the number of entries."""
        with self._lock, exclusive(self.lock_path):
            total, last = 0, None
            for entry in self._verified_entries():
                total, last = total + 1, entry
            self.checkpoints.write(self.name, last[SEQ] if last else 0, last[SHA] if last else GENESIS)
            self._head, self._head_text = self._read_head()
            return total

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # -- internals -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"{self.label}: cannot be opened as the decision log ({exc}): "
                                 f"replaced or damaged") from exc
        if str(mode).lower() != "wal":
            conn.close()
            raise IntegrityError(f"{self.label}: refused WAL mode (journal_mode is {mode})")
        return conn

    def _ensure_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self.label}: the store is closed")

    def _verified_entries(self) -> Iterator[dict[str, Any]]:
        """Every entry in order, each checked (seq, link, hash, MAC, columns) before it is yielded."""
        expected, previous = 1, GENESIS
        for entry in self.iter_entries():
            check_entry(entry, self.key, position=expected, expected_seq=expected, prev_sha256=previous,
                        name=self.label)
            previous, expected = entry[SHA], expected + 1
            yield entry

    def _read_head(self) -> tuple[dict[str, Any] | None, str | None]:
        row = self._conn.execute(f"SELECT {COLUMNS} FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()
        return (entry_of_row(row, self.label), row[4]) if row else (None, None)

    def _rows_from(self, seq: int) -> list[Row]:
        return self._conn.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()

    def _check_tail_or_locate(self, checkpoint: Checkpoint | None) -> None:
        """The cheap tail check; if it fails, a full `verify()` names the FIRST bad position when that
        is earlier than the tail (e.g. every entry unsigned), else the tail's error stands."""
        try:
            self._check_tail(checkpoint)
        except IntegrityError:
            self.verify()
            raise

    def _check_tail(self, checkpoint: Checkpoint | None) -> None:
        """Cheap open-time check: the checkpointed entry, every entry after it, and the highest seq."""
        total = int(self._conn.execute(f"SELECT coalesce(max(seq), 0) FROM {TABLE}").fetchone()[0])
        start = max(checkpoint.count, 1) if checkpoint else total + 1
        tail = [entry_of_row(row, self.label) for row in self._rows_from(start)]
        verify_tail(tail, total, checkpoint, self.key, name=self.label)

    def _check_records(self, records: list[Mapping[str, Any]]) -> None:
        seen: set[str] = set()
        for record in records:
            check_record(record)
            if record[RECORD_ID] in seen:
                raise RecordError(f"{self.label}: record id {record[RECORD_ID]!r} appears twice in one batch")
            seen.add(record[RECORD_ID])

    def _current_head(self) -> dict[str, Any] | None:
        """The head to chain onto, checked against the head this process last saw: the same row, or a
        signed continuation of it (another process appended). Call inside the write transaction."""
        row = self._conn.execute(f"SELECT {COLUMNS} FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()
        if self._head is not None and row is not None and row[0] == self._head[SEQ] and row[4] == self._head_text:
            return self._head
        known = self._head[SEQ] if self._head else 0
        if (row[0] if row else 0) < known:
            raise CheckpointError(f"{self.label}: truncated: this process last saw {known} entries, the store has "
                                  f"{row[0] if row else 0}; nothing was appended", position=(row[0] if row else 0) + 1)
        rows = self._rows_from(max(known, 1))
        if self._head is not None:
            if not rows or rows[0][4] != self._head_text:
                raise ChainError(known, EDITED, name=self.label, detail="the head entry changed since this process "
                                                                       "saw it; nothing was appended")
            rows = rows[1:]
        entries = [entry_of_row(row, self.label) for row in rows]
        verify_entries(entries, self.key, name=self.label, after=self._head)
        return entries[-1] if entries else self._head

    def _commit(self, records: list[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            previous = self._current_head()
            entries, rows = [], []
            for record in records:
                entry = seal(record, previous, self.key)
                rows.append((entry[SEQ], record[RECORD_ID], record[RECORD_KIND], record[RECORD_CREATED_AT],
                             entry_text(entry)))
                entries.append(entry)
                previous = entry
            try:
                conn.executemany(f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (?, ?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError as exc:
                raise RecordError(f"{self.label}: a record id of this batch is already stored ({exc}); "
                                  f"nothing was appended") from exc
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return entries, rows[-1][4]

    def _checkpoint_or_undo(self, entries: list[dict[str, Any]]) -> None:
        """Checkpoint the committed batch; if that fails, delete the batch so the caller's error is true."""
        try:
            self.checkpoints.write(self.name, entries[-1][SEQ], entries[-1][SHA])
        except BaseException:
            # If this fails too, the batch stays as signed entries beyond the checkpoint: still a valid store.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute(f"DELETE FROM {TABLE} WHERE seq >= ?", (entries[0][SEQ],))
            raise
