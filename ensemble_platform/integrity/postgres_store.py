"""The shared decision-log store: chain entries in one PostgreSQL table per store name, checkpointed
in PostgreSQL (shared by every writer machine) and in this machine's checkpoint directory.

One table `chain_<name>_<hash>(seq bigint PRIMARY KEY, record_id text UNIQUE, kind text, created_at
text, entry text)`; `entry` holds the full signed JSON entry (`chain.py`), the other columns are
copies for lookups and must match it (the same row format as `sqlite_store.py`). Sessions run with
`synchronous_commit = on`: a committed batch survives a crash of the database server (given its
`fsync`). Each `append_many` holds a PostgreSQL advisory lock keyed by the store name (writers in
other processes AND on other machines serialise), reads the head inside its transaction, seals,
inserts the rows and the signed checkpoint row in ONE transaction, commits, then writes this
machine's signed checkpoint file (`checkpoint.py`); if that file cannot be written the batch is
deleted again (still under the lock), so callers never get an error for stored entries.

Checkpoints with several writer machines: the row in `chain_checkpoints` moves with every commit
(from any machine); the local file records what THIS machine last appended. Opening and `verify()`
check the store against both: the checkpoint with the highest count must match its entry and every
entry after it must chain and be signed; the other must match its entry. So the log may never
shrink below what the shared row says or below what this machine itself wrote.

Protects against (attacker writes anything in the database and under the platform home, holds no
key, cannot write this machine's checkpoint directory): edited, inserted, deleted or reordered rows,
rows whose columns disagree with their signed entry, forged rows, dropped last rows, a truncated or
dropped table, a deleted or forged checkpoint row, and a rollback (an older signed checkpoint row put
back together with truncation) below what this machine appended. Opening checks the tail cheaply (the
checkpointed entries, the rows after the highest one, the highest seq); `verify()` streams the whole
chain and names the first bad seq; every batch first checks that the head it chains onto is the one
this process last saw (or a signed continuation written by another process or machine).

Does not protect against: a holder of the key; a rollback by someone who can write the database
past the entries this machine wrote (another machine's later appends are covered only by the
shared row, which a database writer can put back together with truncation: run `verify()` on every
writer machine, each catches rollbacks below its own appends); an attacker who can also write the
checkpoint directory; losing entries committed after the last checkpoint file when the process died
in between (at most one batch; the shared row is written with the batch); damage between tail checks
and a full `verify()` in rows the tail check does not read (found by `verify()`, not by opening).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from ensemble_platform.integrity.base_store import COLUMNS, ChainStoreBase, Row, entry_of_row, first_missing_seq_query
from ensemble_platform.integrity.checkpoint import Checkpoint, CheckpointStore, parse_checkpoint
from ensemble_platform.integrity.errors import CheckpointError, IntegrityError
from ensemble_platform.integrity.keys import SigningKey
from ensemble_platform.integrity.store import RecordError
from ensemble_platform.settings import PlatformPaths, masked_url

TABLE_PREFIX = "chain_"
CHECKPOINT_TABLE = "chain_checkpoints"
LOCK_NAMESPACE = b"ensemble_platform/chain/"
NAME_CHARS = 32
PAGE = 1_000
CONNECT_TIMEOUT_S = 10
SHARED_UPSERT = ("INSERT INTO {table} (log, checkpoint) VALUES (%s, %s) "
                 "ON CONFLICT (log) DO UPDATE SET checkpoint = EXCLUDED.checkpoint")


def table_name(name: str) -> str:
    """The table of store `name`: readable, lower-case, and unique per name (a digest of the exact name)."""
    readable = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:NAME_CHARS]
    return f"{TABLE_PREFIX}{readable}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def lock_key(name: str) -> int:
    """The advisory-lock key (signed 64-bit) that serialises the writers of store `name`."""
    return int.from_bytes(hashlib.sha256(LOCK_NAMESPACE + name.encode()).digest()[:8], "big", signed=True)


class PostgresChainStore(ChainStoreBase):
    """A `ChainStore` in one PostgreSQL table. Thread-safe; writers anywhere serialise on an advisory lock.

    `url` is a libpq URL (`postgresql://user:password@host:port/database`; the password is never shown in
    messages). `name`, `key`, `checkpoints`, `paths` and `check_tail` as for `SqliteChainStore`."""

    def __init__(self, url: str, name: str, key: SigningKey | None = None,
                 checkpoints: CheckpointStore | None = None, *, paths: PlatformPaths | None = None,
                 check_tail: bool = True):
        super().__init__(name, key, checkpoints, paths)
        self.url = url
        self.table = table_name(name)
        self.label = f"{name} [{masked_url(url)} table {self.table}]"
        self._conn = self._connect()
        try:
            with self._writer_lock():
                existed = self._create_tables()
                if check_tail:
                    self._refuse_dropped(existed)
                self._open(check_tail)
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresChainStore({masked_url(self.url)!r}, {self.name!r}, key_id={self.key.key_id})"

    def __enter__(self) -> PostgresChainStore:
        return self

    # -- reading ---------------------------------------------------------------------------------

    def count(self) -> int:
        return int(self._one(f"SELECT coalesce(max(seq), 0) FROM {self.table}")[0])

    def existing_ids(self, record_ids: Sequence[str]) -> set[str]:
        if not record_ids:
            return set()
        rows = self._all(f"SELECT record_id FROM {self.table} WHERE record_id = ANY(%s)", (list(record_ids),))
        return {row[0] for row in rows}

    def iter_entries(self, since_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Entries with seq > `since_seq` in order, read a page at a time. Each row's columns are checked
        against its entry; the chain is not (use `verify()`)."""
        for row in self._pages("TRUE", (), since_seq):
            yield entry_of_row(row, self.label)

    def iter_kinds(self, kinds: Sequence[str], since_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Entries of the given kinds with seq > `since_seq`, in order, each checked like `get`."""
        for row in self._pages("kind = ANY(%s)", (list(kinds),), since_seq):
            yield self._checked(row)

    def iter_created(self, start: str, end: str, kinds: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Entries with `start` <= created_at < `end` (text comparison of ISO-8601 UTC times), optionally of
        `kinds`, in created_at order (ties in seq order), each checked like `get`."""
        where = "created_at >= %s AND created_at < %s" + (" AND kind = ANY(%s)" if kinds else "")
        params: tuple[Any, ...] = (start, end, list(kinds)) if kinds else (start, end)
        after: tuple[str, int] = ("", 0)
        while True:
            rows = self._all(f"SELECT {COLUMNS} FROM {self.table} WHERE {where} AND (created_at, seq) > (%s, %s) "
                             f"ORDER BY created_at, seq LIMIT {PAGE}", (*params, *after))
            for row in rows:
                yield self._checked(row)
            if len(rows) < PAGE:
                return
            after = (rows[-1][3], rows[-1][0])

    def check_writable(self) -> str:
        """Where the store writes, after checking this role may append; raises `IntegrityError` if not."""
        allowed = self._one("SELECT has_table_privilege(%s, 'INSERT'), has_table_privilege(%s, 'UPDATE')",
                            (self.table, CHECKPOINT_TABLE))
        if not (allowed and allowed[0] and allowed[1]):
            raise IntegrityError(f"{self.label}: this role may not insert into {self.table} or update "
                                 f"{CHECKPOINT_TABLE}")
        return self.label

    # -- internals: connection -------------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg2

        try:
            conn = psycopg2.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S,
                                    application_name="ensemble_platform decision log")
        except psycopg2.Error as exc:
            raise IntegrityError(f"{self.label}: cannot connect ({str(exc).strip()})") from exc
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SET synchronous_commit = on")
        return conn

    def _close_connection(self) -> None:
        self._conn.close()

    def _ensure_open(self) -> None:
        super()._ensure_open()
        if self._conn.closed:  # the server restarted or the session was cut: a new session (the call that
            self._conn = self._connect()  # found it broken failed; the head this process saw still guards appends)

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            self._ensure_open()
            with self._conn.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchone()

    def _all(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            self._ensure_open()
            with self._conn.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._conn.cursor() as cursor:
            cursor.execute("BEGIN")
            try:
                yield cursor
            except BaseException:
                with contextlib.suppress(Exception):
                    cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """This process's lock plus the session advisory lock of the store name: one writer anywhere."""
        with self._lock:
            self._ensure_open()
            with self._conn.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", (lock_key(self.name),))
            try:
                yield
            finally:
                with contextlib.suppress(Exception), self._conn.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", (lock_key(self.name),))

    def _create_tables(self) -> bool:
        """Create the entries and checkpoint tables if missing; whether the entries table existed."""
        existed = self._one("SELECT to_regclass(%s) IS NOT NULL", (self.table,))[0]
        with self._transaction() as cursor:
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (seq bigint PRIMARY KEY, "
                           f"record_id text NOT NULL UNIQUE, kind text NOT NULL, created_at text NOT NULL, "
                           f"entry text NOT NULL)")
            cursor.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_created_at ON {self.table} (created_at, seq)")
            cursor.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_kind ON {self.table} (kind, seq)")
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (log text PRIMARY KEY, "
                           f"checkpoint text NOT NULL)")
        return bool(existed)

    def _refuse_dropped(self, existed: bool) -> None:
        """A checkpoint says there were entries but the table had to be created: it was dropped."""
        highest = max((c.count for c in self._checkpoints()), default=0)
        if highest and not existed:
            raise CheckpointError(f"{self.label}: truncated: checkpoint says {highest} entries, log has 0 "
                                  f"(table {self.table} did not exist: dropped)", position=1)

    # -- internals: checkpoints ------------------------------------------------------------------

    def _shared_checkpoint(self) -> Checkpoint | None:
        row = self._one(f"SELECT checkpoint FROM {CHECKPOINT_TABLE} WHERE log = %s", (self.name,))
        if row is None:
            return None
        return parse_checkpoint(row[0].encode(), f"{CHECKPOINT_TABLE} row {self.name!r} in {masked_url(self.url)}",
                                self.key, self.name)

    def _checkpoints(self) -> list[Checkpoint]:
        """The valid checkpoints (local file, shared row), highest count first; raises if one is forged."""
        found = [c for c in (self.checkpoints.read(self.name), self._shared_checkpoint()) if c is not None]
        return sorted(found, key=lambda c: c.count, reverse=True)

    def _write_checkpoints(self, checkpoint: Checkpoint) -> None:
        with self._transaction() as cursor:
            cursor.execute(SHARED_UPSERT.format(table=CHECKPOINT_TABLE), (self.name, checkpoint.to_json().decode()))
        self.checkpoints.write(self.name, checkpoint.count, checkpoint.head_sha256)

    # -- internals: rows -------------------------------------------------------------------------

    def _pages(self, where: str, params: tuple[Any, ...], since_seq: int) -> Iterator[Row]:
        """Rows matching `where` with seq > `since_seq` in seq order, a page per query (keyset paging)."""
        after = since_seq
        while True:
            rows = self._all(f"SELECT {COLUMNS} FROM {self.table} WHERE {where} AND seq > %s ORDER BY seq "
                             f"LIMIT {PAGE}", (*params, after))
            yield from rows
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def _row_count(self) -> tuple[int, int]:
        rows, lowest = self._one(f"SELECT count(*), coalesce(min(seq), 1) FROM {self.table}")
        return int(rows), int(lowest)

    def _first_missing_seq(self) -> int:
        return int(self._one(first_missing_seq_query(self.table))[0])

    def _row_of(self, record_id: str) -> Row | None:
        return self._one(f"SELECT {COLUMNS} FROM {self.table} WHERE record_id = %s", (record_id,))

    def _last_row(self) -> Row | None:
        return self._one(f"SELECT {COLUMNS} FROM {self.table} ORDER BY seq DESC LIMIT 1")

    def _rows_from(self, seq: int, limit: int | None = None) -> list[Row]:
        return self._all(f"SELECT {COLUMNS} FROM {self.table} WHERE seq >= %s ORDER BY seq"
                         + (f" LIMIT {int(limit)}" if limit else ""), (seq,))

    def _insert_batch(self, rows: list[Row], checkpoint: Checkpoint) -> str | None:
        """Insert the rows and the shared checkpoint row in one transaction (one message of two statements:
        PostgreSQL runs it as one implicit transaction); returns the shared checkpoint row as it was before."""
        import psycopg2

        before = self._one(f"SELECT checkpoint FROM {CHECKPOINT_TABLE} WHERE log = %s", (self.name,))
        try:
            with self._conn.cursor() as cursor:
                values = b",".join(cursor.mogrify("(%s, %s, %s, %s, %s)", row) for row in rows)
                shared = cursor.mogrify(SHARED_UPSERT.format(table=CHECKPOINT_TABLE),
                                        (self.name, checkpoint.to_json().decode()))
                cursor.execute(f"INSERT INTO {self.table} ({COLUMNS}) VALUES ".encode() + values + b"; " + shared)
        except psycopg2.errors.UniqueViolation as exc:
            raise RecordError(f"{self.label}: a record id of this batch is already stored "
                              f"({str(exc).strip().splitlines()[-1]}); nothing was appended") from exc
        return before[0] if before else None

    def _undo_batch(self, first_seq: int, undo: Any) -> None:
        """Delete the batch and put the shared checkpoint row back as it was."""
        with self._transaction() as cursor:
            cursor.execute(f"DELETE FROM {self.table} WHERE seq >= %s", (first_seq,))
            if undo is None:
                cursor.execute(f"DELETE FROM {CHECKPOINT_TABLE} WHERE log = %s", (self.name,))
            else:
                cursor.execute(f"UPDATE {CHECKPOINT_TABLE} SET checkpoint = %s WHERE log = %s", (undo, self.name))
