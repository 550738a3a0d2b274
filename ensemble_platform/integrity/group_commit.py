"""Group commit: many submitters, one writer thread, one durable transaction + checkpoint per batch.

`submit(record)` returns a `concurrent.futures.Future` resolved with the sealed entry only after the
batch holding it is committed (durable: WAL fsynced) and checkpointed. A record that is invalid on
its own (missing id/kind/created_at, reserved field, duplicate id) rejects only its own future. A
failure of the batch (disk full, store closed, a head that does not verify) rejects every future of
the batch with that exception; the store's transaction is rolled back and its head is unchanged.

Batching: the writer takes what is queued, then lingers (at most `max_wait_ms`) until as many
records are queued as the previous batch had: closed-loop submitters are gathered into one batch,
a lone submitter is never delayed. Integrity guarantees are the store's (see `sqlite_store.py`).
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
        self._queue: deque[_Item] = deque()
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
        """Queue records in order (they are committed in this order, possibly across batches).
        Raises `StoreClosedError` once `close()` was called."""
        items = [_Item(record) for record in records]
        with self._cond:
            if self._closing:
                raise StoreClosedError(f"{self.store.name}: the group-commit writer is closed")
            self._queue.extend(items)
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
        while (batch := self._take_batch()) is not None:
            try:
                self._commit(batch)
            except BaseException as exc:  # a bug must not strand submitters
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            target = min(self._last_batch, self.max_batch)
            deadline = time.monotonic() + self.max_wait
            while len(self._queue) < target and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            size = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(size)]
        self._last_batch = size
        return batch

    def _commit(self, batch: list[_Item]) -> None:
        live = self._screen([item for item in batch if item.future.set_running_or_notify_cancel()])
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

    def _screen(self, items: list[_Item]) -> list[_Item]:
        """Reject, one by one, records that would fail the whole batch; keep the rest in order."""
        kept: list[_Item] = []
        seen: set[str] = set()
        for item in items:
            try:
                check_record(item.record)
                canonical_json(item.record)
                if item.record[RECORD_ID] in seen:
                    raise RecordError(f"{self.store.name}: record id {item.record[RECORD_ID]!r} submitted twice")
            except (RecordError, TypeError, ValueError) as exc:
                item.future.set_exception(exc if isinstance(exc, RecordError) else RecordError(
                    f"{self.store.name}: record {item.record.get(RECORD_ID)!r} is not strict JSON ({exc})"))
                continue
            seen.add(item.record[RECORD_ID])
            kept.append(item)
        try:
            stored = self.store.existing_ids([item.record[RECORD_ID] for item in kept])
        except BaseException as exc:
            for item in kept:
                item.future.set_exception(exc)
            return []
        for item in kept:
            if item.record[RECORD_ID] in stored:
                item.future.set_exception(RecordError(f"{self.store.name}: record id {item.record[RECORD_ID]!r} "
                                                      f"is already stored"))
        return [item for item in kept if item.record[RECORD_ID] not in stored]
