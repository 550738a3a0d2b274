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
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ensemble_platform.integrity.base_store import COLUMNS, ChainStoreBase, Row, entry_of_row, first_missing_seq_query
from ensemble_platform.integrity.checkpoint import Checkpoint, CheckpointStore
from ensemble_platform.integrity.errors import CheckpointError, IntegrityError
from ensemble_platform.integrity.keys import SigningKey
from ensemble_platform.integrity.locking import exclusive, lock_path_for
from ensemble_platform.integrity.store import RecordError
from ensemble_platform.settings import PlatformPaths

TABLE = "entries"
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


class SqliteChainStore(ChainStoreBase):
    """A `ChainStore` in one SQLite file. Thread-safe; writers in several processes serialise on a lock file.

    `name` identifies the store in its checkpoint (unique per platform home). `key` and `checkpoints`
    default to the configured key and the checkpoint directory of `paths` (default: the home in
    `ENSEMBLE_PLATFORM_HOME`). `check_tail=False` skips the open-time check (for `reanchor` only)."""

    def __init__(self, path: Path, name: str, key: SigningKey | None = None,
                 checkpoints: CheckpointStore | None = None, *, paths: PlatformPaths | None = None,
                 check_tail: bool = True):
        super().__init__(name, key, checkpoints, paths)
        self.path = Path(path)
        self.label = f"{name} [{self.path}]"  # names the store and its file in errors
        with exclusive(self.lock_path):
            checkpoint = self.checkpoints.read(name) if check_tail else None
            if checkpoint and checkpoint.count and not self.path.exists():
                raise CheckpointError(f"{self.label}: truncated: checkpoint says {checkpoint.count} entries, log has 0 "
                                      f"({self.path} does not exist: deleted)", position=1)
            self._conn = self._connect()
            self._open(check_tail)

    def __repr__(self) -> str:
        return f"SqliteChainStore({str(self.path)!r}, {self.name!r}, key_id={self.key.key_id})"

    def __enter__(self) -> SqliteChainStore:
        return self

    @property
    def lock_path(self) -> Path:
        return lock_path_for(self.path)

    # -- reading ---------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            self._ensure_open()
            return int(self._conn.execute(f"SELECT coalesce(max(seq), 0) FROM {TABLE}").fetchone()[0])

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
                    yield self._checked(row)
        finally:
            conn.close()

    def check_writable(self) -> str:
        """Where the store writes, after checking its directory is writable; raises `IntegrityError` if not."""
        if not os.access(self.path.parent, os.W_OK):
            raise IntegrityError(f"{self.path.parent} is not writable")
        return str(self.path)

    # -- the SQLite primitives (chain bookkeeping: base_store.py) --------------------------------

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

    def _close_connection(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """This process's lock plus the exclusive lock file: one writer per file across processes."""
        with self._lock, exclusive(self.lock_path):
            self._ensure_open()
            yield

    def _checkpoints(self) -> list[Checkpoint]:
        checkpoint = self.checkpoints.read(self.name)
        return [] if checkpoint is None else [checkpoint]

    def _write_checkpoints(self, checkpoint: Checkpoint) -> None:
        self.checkpoints.write(self.name, checkpoint.count, checkpoint.head_sha256)

    def _row_count(self) -> tuple[int, int]:
        with self._lock:
            rows, lowest = self._conn.execute(f"SELECT count(*), coalesce(min(seq), 1) FROM {TABLE}").fetchone()
            return int(rows), int(lowest)

    def _first_missing_seq(self) -> int:
        with self._lock:
            return int(self._conn.execute(first_missing_seq_query(TABLE)).fetchone()[0])

    def _row_of(self, record_id: str) -> Row | None:
        with self._lock:
            self._ensure_open()
            return self._conn.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE record_id = ?", (record_id,)).fetchone()

    def _last_row(self) -> Row | None:
        with self._lock:
            return self._conn.execute(f"SELECT {COLUMNS} FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()

    def _rows_from(self, seq: int, limit: int | None = None) -> list[Row]:
        with self._lock:
            return self._conn.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE seq >= ? ORDER BY seq"
                                      + (f" LIMIT {int(limit)}" if limit else ""), (seq,)).fetchall()

    def _insert_batch(self, rows: list[Row], checkpoint: Checkpoint) -> None:
        """One transaction; the checkpoint lives in the checkpoint directory only (written after the commit)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
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

    def _undo_batch(self, first_seq: int, undo: Any) -> None:
        self._conn.execute(f"DELETE FROM {TABLE} WHERE seq >= ?", (first_seq,))
