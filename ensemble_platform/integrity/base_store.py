"""The chain bookkeeping every decision-log store shares; a store supplies only its SQL and locking.

`ChainStoreBase` owns what must be the same whatever holds the rows: the row format (`entry_of_row`:
a row's columns and text must agree with its signed entry), the open-time tail check against the
checkpoints, `verify()`, the head this process last saw (every batch chains onto it or onto a signed
continuation of it), sealing a batch, and checkpoint-or-undo after a commit. Subclasses
(`sqlite_store.py`, `postgres_store.py`) implement the primitives at the bottom: reading rows,
inserting a sealed batch in one transaction, undoing it, the writer lock and the checkpoints they
check against. See each store's module docstring for what it protects against.
"""

from __future__ import annotations

import contextlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

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
from ensemble_platform.integrity.store import (
    RECORD_CREATED_AT,
    RECORD_ID,
    RECORD_KIND,
    RecordError,
    check_record,
)
from ensemble_platform.settings import PlatformPaths

COLUMNS = "seq, record_id, kind, created_at, entry"
TEXT: Final = 4  # the column holding the entry's text

Row = tuple[int, str, str, str, str]


def first_missing_seq_query(table: str) -> str:
    """SQL (SQLite and PostgreSQL) for the lowest seq >= 1 without a row: 1, or the first seq after a
    row whose successor is missing (the head's successor when none is)."""
    return (f"SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM {table} WHERE seq = 1) THEN 1 "
            f"ELSE (SELECT min(a.seq) + 1 FROM {table} a "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} b WHERE b.seq = a.seq + 1)) END")


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


class ChainStoreBase(ABC):
    """A `ChainStore` whose rows live in one table. Thread-safe: every call holds `self._lock`.

    `name` identifies the store in its checkpoint(s); `key` and `checkpoints` default to the configured
    key and the checkpoint directory of `paths` (default: the home in `ENSEMBLE_PLATFORM_HOME`).
    Subclasses set `self.label` (names the store in errors) and open their connection, then call
    `_open(check_tail)` under their writer lock."""

    def __init__(self, name: str, key: SigningKey | None, checkpoints: CheckpointStore | None,
                 paths: PlatformPaths | None):
        self.name = name
        self.key = key or load_signing_key(paths)
        self.checkpoints = checkpoints or CheckpointStore(self.key, paths=paths)
        self.label = name
        self._lock = threading.RLock()
        self._closed = False
        self._head: dict[str, Any] | None = None
        self._head_text: str | None = None

    def __enter__(self) -> ChainStoreBase:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _open(self, check_tail: bool) -> None:
        """Check the tail (unless `check_tail` is off: `reanchor` only) and remember the head. Call under
        the writer lock; closes the connection if the store does not open."""
        try:
            if check_tail:
                self._check_tail_or_locate()
            self._head, self._head_text = self._read_head()
        except BaseException:
            self._close_connection()
            raise

    # -- reading ---------------------------------------------------------------------------------

    def head(self) -> dict[str, Any] | None:
        with self._lock:
            self._ensure_open()
            return self._read_head()[0]

    def get(self, record_id: str) -> dict[str, Any] | None:
        """The entry of `record_id` after checking its columns, hash and MAC (not its place in the chain)."""
        row = self._row_of(record_id)
        return None if row is None else self._checked(row)

    def verify(self) -> int:
        """Check every entry in order (seq, link, hash, MAC, columns) and the store against its
        checkpoint(s); returns the number of entries. Raises `ChainError` naming the first bad seq,
        `CheckpointError` (truncated, rewritten, no checkpoint) or `KeyMismatchError`."""
        return self._verify(None)

    def verified_entries(self) -> list[dict[str, Any]]:
        """Every entry, in order, after the checks `verify` makes (what exports may hand on: `iter_entries`
        checks each row's columns alone)."""
        entries: list[dict[str, Any]] = []
        self._verify(entries.append)
        return entries

    def _verify(self, each: Callable[[dict[str, Any]], None] | None) -> int:
        checkpoints = self._checkpoints()
        wanted = {c.count for c in checkpoints}
        total, anchors = 0, {}
        for entry in self._verified_entries():
            total += 1
            if each is not None:
                each(entry)
            if total in wanted:
                anchors[total] = entry
        if not checkpoints:
            verify_tail([], total, None, self.key, name=self.label)
        for checkpoint in checkpoints:
            anchor = anchors.get(checkpoint.count)
            verify_tail([anchor] if anchor else [], total, checkpoint, self.key, name=self.label)
        return total

    # -- writing ---------------------------------------------------------------------------------

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Seal `records` onto the chain in one transaction (all or none), then checkpoint. Raises
        `RecordError` (bad or duplicate record), `IntegrityError` (the head it would chain onto does
        not verify), `StoreClosedError` or the database's own error (e.g. disk full); in every case
        nothing was stored and the head is unchanged."""
        records = list(records)
        return self._append(lambda: records, whole=False)

    def append_checked(self, build: Callable[[], Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """Append what `build()` returns with no other writer (thread, process or, for a shared database,
        machine) in between: `build` reads the store's current state, refuses by raising, or returns the
        records to seal. Read-check-append in one critical section, e.g. claiming a review item nobody
        else claimed meanwhile. First checks that no row was deleted from the middle (`_check_no_gaps`):
        a check that reads "not claimed / resolved / labelled yet" would pass again for a deleted record."""
        return self._append(build, whole=True)

    def _append(self, build: Callable[[], Sequence[Mapping[str, Any]]], whole: bool) -> list[dict[str, Any]]:
        with self._writer_lock():
            if whole:
                self._check_no_gaps()
            records = list(build())
            if not records:
                return []
            self._check_records(records)
            entries, rows = self._seal_batch(records, self._current_head())
            undo = self._insert_batch(rows, Checkpoint.signed(self.name, entries[-1][SEQ], entries[-1][SHA], self.key))
            self._checkpoint_or_undo(entries, undo)
            self._head, self._head_text = entries[-1], rows[-1][TEXT]
            return entries

    def reanchor(self) -> int:
        """Operator action for a store whose checkpoint is legitimately missing (home moved, checkpoint
        directory lost): verify the whole chain, then checkpoint its head. Trusts that no last rows
        were dropped meanwhile. Returns the number of entries."""
        with self._writer_lock():
            total, last = 0, None
            for entry in self._verified_entries():
                total, last = total + 1, entry
            count, head = (last[SEQ], last[SHA]) if last else (0, GENESIS)
            self._write_checkpoints(Checkpoint.signed(self.name, count, head, self.key))
            self._head, self._head_text = self._read_head()
            return total

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_connection()

    # -- shared internals ------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self.label}: the store is closed")

    def _checked(self, row: Row) -> dict[str, Any]:
        """The entry of `row` after checking its columns, hash and MAC (not its place in the chain)."""
        entry = entry_of_row(row, self.label)
        check_entry(entry, self.key, position=row[0], expected_seq=row[0], prev_sha256=str(entry.get(PREV)),
                    name=self.label)
        return entry

    def _verified_entries(self) -> Iterator[dict[str, Any]]:
        """Every entry in order, each checked (seq, link, hash, MAC, columns) before it is yielded."""
        expected, previous = 1, GENESIS
        for entry in self.iter_entries():
            check_entry(entry, self.key, position=expected, expected_seq=expected, prev_sha256=previous,
                        name=self.label)
            previous, expected = entry[SHA], expected + 1
            yield entry

    def _read_head(self) -> tuple[dict[str, Any] | None, str | None]:
        row = self._last_row()
        return (entry_of_row(row, self.label), row[TEXT]) if row else (None, None)

    def _check_tail_or_locate(self) -> None:
        """The cheap tail check; if it fails, a full `verify()` names the FIRST bad position when that
        is earlier than the tail (e.g. every entry unsigned), else the tail's error stands."""
        try:
            self._check_tail()
        except IntegrityError:
            self.verify()
            raise

    def _check_tail(self) -> None:
        """Cheap open-time check: each checkpointed entry, every entry after the highest, and the highest seq."""
        checkpoints = self._checkpoints()
        total = self.count()
        if not checkpoints:
            verify_tail([], total, None, self.key, name=self.label)
            return
        highest, *others = checkpoints
        tail = [entry_of_row(row, self.label) for row in self._rows_from(max(highest.count, 1))]
        verify_tail(tail, total, highest, self.key, name=self.label)
        for checkpoint in others:
            anchor = self._rows_from(max(checkpoint.count, 1), limit=1)
            verify_tail([entry_of_row(row, self.label) for row in anchor], total, checkpoint, self.key, name=self.label)
        self._check_no_gaps()

    def _check_no_gaps(self) -> None:
        """Every seq from 1 to the head has its row. The tail check reads only the checkpointed rows and
        those after them, so without this a row deleted from the middle went unseen until `verify`.
        One count over the table's smallest index: ~17 ms per million rows (SQLite, measured), so it
        runs when a store opens and before read-check-append, not on the decisions' group commits."""
        highest = self.count()
        rows, lowest = self._row_count()
        if rows and lowest < 1:  # a row below seq 1, which no reader visits, could stand in for a deleted one
            raise ChainError(1, REORDERED, name=self.label,
                             detail=f"a row has seq {lowest}: seqs count from 1; nothing was appended")
        if rows != highest:
            missing = self._first_missing_seq()
            raise ChainError(missing, REORDERED, name=self.label,
                             detail=f"{highest - rows} row(s) missing: {rows} rows for seq 1..{highest}, "
                                    f"the first missing is seq {missing}; nothing was appended")

    def _check_records(self, records: list[Mapping[str, Any]]) -> None:
        seen: set[str] = set()
        for record in records:
            check_record(record)
            if record[RECORD_ID] in seen:
                raise RecordError(f"{self.label}: record id {record[RECORD_ID]!r} appears twice in one batch")
            seen.add(record[RECORD_ID])

    def _current_head(self) -> dict[str, Any] | None:
        """The head to chain onto, checked against the head this process last saw: the same row, or a
        signed continuation of it (another writer appended). Call under the writer lock."""
        row = self._last_row()
        if self._head is not None and row is not None and row[0] == self._head[SEQ] and row[TEXT] == self._head_text:
            return self._head
        known = self._head[SEQ] if self._head else 0
        if (row[0] if row else 0) < known:
            raise CheckpointError(f"{self.label}: truncated: this process last saw {known} entries, the store has "
                                  f"{row[0] if row else 0}; nothing was appended", position=(row[0] if row else 0) + 1)
        rows = self._rows_from(max(known, 1))
        if self._head is not None:
            if not rows or rows[0][TEXT] != self._head_text:
                raise ChainError(known, EDITED, name=self.label, detail="the head entry changed since this process "
                                                                       "saw it; nothing was appended")
            rows = rows[1:]
        entries = [entry_of_row(row, self.label) for row in rows]
        verify_entries(entries, self.key, name=self.label, after=self._head)
        return entries[-1] if entries else self._head

    def _seal_batch(self, records: list[Mapping[str, Any]],
                    previous: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[Row]]:
        """The batch's sealed entries, chained onto `previous`, and the rows that store them."""
        entries: list[dict[str, Any]] = []
        rows: list[Row] = []
        for record in records:
            entry = seal(record, previous, self.key)
            rows.append((entry[SEQ], record[RECORD_ID], record[RECORD_KIND], record[RECORD_CREATED_AT],
                         entry_text(entry)))
            entries.append(entry)
            previous = entry
        return entries, rows

    def _checkpoint_or_undo(self, entries: list[dict[str, Any]], undo: Any) -> None:
        """Write this machine's checkpoint for the committed batch; if that fails, undo the batch (still
        under the writer lock) so the caller's error is true."""
        try:
            self.checkpoints.write(self.name, entries[-1][SEQ], entries[-1][SHA])
        except BaseException:
            # If the undo fails too, the batch stays as signed entries: still a valid store.
            with contextlib.suppress(Exception):
                self._undo_batch(entries[0][SEQ], undo)
            raise

    # -- what a store supplies -------------------------------------------------------------------

    @abstractmethod
    def count(self) -> int:
        """The highest seq (0 when empty)."""

    @abstractmethod
    def iter_entries(self, since_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Entries with seq > `since_seq` in order, each row checked by `entry_of_row`."""

    @abstractmethod
    def _close_connection(self) -> None: ...

    @abstractmethod
    def _writer_lock(self) -> contextlib.AbstractContextManager[None]:
        """This process's `_lock` plus the store's own lock that serialises every writer; checks the
        store is open."""

    @abstractmethod
    def _checkpoints(self) -> list[Checkpoint]:
        """The valid checkpoints to check against, highest count first; raises if one is forged."""

    @abstractmethod
    def _write_checkpoints(self, checkpoint: Checkpoint) -> None:
        """Write `checkpoint` everywhere the store keeps one (for `reanchor`)."""

    @abstractmethod
    def _row_count(self) -> tuple[int, int]:
        """(the number of rows, the lowest seq) (`count` is the highest seq)."""

    @abstractmethod
    def _first_missing_seq(self) -> int:
        """The lowest seq in 1..count() without a row (call when rows are missing)."""

    @abstractmethod
    def _row_of(self, record_id: str) -> Row | None: ...

    @abstractmethod
    def _last_row(self) -> Row | None: ...

    @abstractmethod
    def _rows_from(self, seq: int, limit: int | None = None) -> list[Row]:
        """Rows with seq >= `seq` in seq order (at most `limit`)."""

    @abstractmethod
    def _insert_batch(self, rows: list[Row], checkpoint: Checkpoint) -> Any:
        """Insert `rows` in one transaction (all or none; a duplicate record id raises `RecordError`),
        with `checkpoint` if the store keeps one in the database; returns what `_undo_batch` needs."""

    @abstractmethod
    def _undo_batch(self, first_seq: int, undo: Any) -> None:
        """Delete the rows from `first_seq` on (and put back what `_insert_batch` replaced)."""
