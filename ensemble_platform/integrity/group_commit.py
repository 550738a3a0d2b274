"""Group commit: many submitters, one writer thread, one durable transaction + checkpoint per batch.

`submit(record)` returns a `concurrent.futures.Future` resolved with the sealed entry only after the
batch holding it is committed (durable: WAL fsynced) and checkpointed. `submit_many(records)` is one
group: its records are committed in one batch, all or none (a service request's decisions and
their review items: a caller answered "nothing was decided" must find nothing of it in the log).
A record that is invalid on its own (missing id/kind/created_at, reserved field, duplicate id)
rejects its group's futures and no other. A failure of the batch (disk full, store closed, a head
that does not verify) rejects every future of the batch with that exception; the store's
transaction is rolled back and its head is unchanged.

Batching: the writer takes what is queued, then lingers (at most `max_wait_ms`) until as many
records are queued as the previous batch had: closed-loop submitters are gathered into one batch,
a lone submitter is never delayed. A batch holds whole groups, up to `max_batch` records, or one
group that is larger. Integrity guarantees are the store's (see `sqlite_store.py`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ensemble_platform.integrity.chain import canonical_json
from ensemble_platform.integrity.errors import StoreClosedError
from ensemble_platform.integrity.store import RECORD_ID, ChainStore, RecordError, check_record

DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_WAIT_MS = 2.0


@dataclass(frozen=True)
class _Item:
    record: Mapping[str, Any]
    future: Future = field(default_factory=Future)


class GroupCommitWriter:
    """Batches appends to a `ChainStore` from any number of threads. Close it (or use `with`) before
    closing the store: `close()` commits everything already submitted, then stops the writer."""

    def __init__(self, store: ChainStore, max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0 (got {max_batch}, {max_wait_ms})")
        self.store = store
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: deque[list[_Item]] = deque()  # groups, each committed whole in one batch
        self._queued = 0  # records in the queue
        self._cond = threading.Condition()
        self._closing = False
        self._last_batch = 1
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name=f"group-commit:{store.name}", daemon=True)
        self._thread.start()

    def __enter__(self) -> GroupCommitWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit(self, record: Mapping[str, Any]) -> Future:
        return self.submit_many([record])[0]

    def submit_many(self, records: Iterable[Mapping[str, Any]]) -> list[Future]:
        """Queue records as one group: committed in this order, in one batch, all or none.
        Raises `StoreClosedError` once `close()` was called."""
        items = [_Item(record) for record in records]
        if not items:
            return []
        with self._cond:
            if self._closing:
                raise StoreClosedError(f"{self.store.name}: the group-commit writer is closed")
            self._queue.append(items)
            self._queued += len(items)
            self._cond.notify()
        return [item.future for item in items]

    def close(self, timeout: float | None = None) -> None:
        """Commit everything submitted so far, then stop the writer thread (the store stays open)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while (groups := self._take_batch()) is not None:
            try:
                self._commit(groups)
            except BaseException as exc:  # a bug must not strand submitters
                for item in (item for group in groups for item in group):
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _take_batch(self) -> list[list[_Item]] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            target = min(self._last_batch, self.max_batch)
            deadline = time.monotonic() + self.max_wait
            while self._queued < target and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            groups = [self._queue.popleft()]  # always one whole group, however large
            while self._queue and sum(map(len, groups)) + len(self._queue[0]) <= self.max_batch:
                groups.append(self._queue.popleft())
            size = sum(map(len, groups))
            self._queued -= size
        self._last_batch = size
        return groups

    def _commit(self, groups: list[list[_Item]]) -> None:
        live = self._screen([group for group in groups if self._started(group)])
        if not live:
            return
        try:
            entries = self.store.append_many([item.record for item in live])
        except BaseException as exc:
            for item in live:
                item.future.set_exception(exc)
            return
        self.batches += 1
        for item, entry in zip(live, entries, strict=True):
            item.future.set_result(entry)

    def _started(self, group: list[_Item]) -> bool:
        """Marks the group's futures running; a group with a cancelled one is not committed at all."""
        running = [item.future.set_running_or_notify_cancel() for item in group]
        if all(running):
            return True
        self._reject(group, RecordError(f"{self.store.name}: a record of its group was cancelled before the "
                                        "commit; none of the group was committed"))
        return False

    def _screen(self, groups: list[list[_Item]]) -> list[_Item]:
        """The records of the groups with no record that would fail the whole batch (invalid, not
        strict JSON, submitted twice, already stored), in order; each other group is rejected whole."""
        kept: list[list[_Item]] = []
        seen: set[str] = set()
        for group in groups:
            problem = self._problem(group, seen)
            if problem is not None:
                self._reject(group, problem)
                continue
            seen.update(item.record[RECORD_ID] for item in group)
            kept.append(group)
        try:
            stored = self.store.existing_ids([item.record[RECORD_ID] for group in kept for item in group])
        except BaseException as exc:
            for group in kept:
                self._reject(group, exc)
            return []
        live: list[_Item] = []
        for group in kept:
            again = next((item.record[RECORD_ID] for item in group if item.record[RECORD_ID] in stored), None)
            if again is not None:
                self._reject(group, RecordError(f"{self.store.name}: record id {again!r} is already stored"))
            else:
                live.extend(group)
        return live

    def _problem(self, group: list[_Item], seen: set[str]) -> RecordError | None:
        ids: set[str] = set()
        for item in group:
            try:
                check_record(item.record)
                canonical_json(item.record)
            except RecordError as exc:
                return exc
            except (TypeError, ValueError) as exc:
                return RecordError(f"{self.store.name}: record {item.record.get(RECORD_ID)!r} is not strict JSON ({exc})")
            record_id = item.record[RECORD_ID]
            if record_id in seen or record_id in ids:
                return RecordError(f"{self.store.name}: record id {record_id!r} submitted twice")
            ids.add(record_id)
        return None

    @staticmethod
    def _reject(group: list[_Item], exc: BaseException) -> None:
        for item in group:
            if not item.future.done():
                item.future.set_exception(exc)
