"""The decision log: every decision and refusal, appended to the keyed hash-chained SQLite store
(`ensemble_platform.integrity`) through a group-commit writer. `submit_many` returns futures resolved only
once the records are durable and checkpointed; the service answers after awaiting them."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from ensemble_platform.decisions.records import CREATED_AT
from ensemble_platform.integrity import GroupCommitWriter, SqliteChainStore
from ensemble_platform.settings import PlatformPaths

STORE_NAME = "decisions"
STORE_FILE = "decisions.sqlite"


def decision_log_path(paths: PlatformPaths) -> Path:
    return paths.home / "decisions" / STORE_FILE


def open_decision_store(paths: PlatformPaths) -> SqliteChainStore:
    """The home's decision-log store on its own (tail checked on open; no group-commit writer): for readers
    and for the CLI's read-check-append actions. Close it."""
    return SqliteChainStore(decision_log_path(paths), STORE_NAME, paths=paths)


class DecisionLogLike(Protocol):
    enabled: bool

    def submit_many(self, records: Sequence[Mapping[str, Any]]) -> list[Future]: ...

    def get(self, record_id: str) -> dict[str, Any] | None: ...

    def writable(self) -> tuple[bool, str]: ...

    def close(self) -> None: ...


class DecisionLog:
    """The keyed SQLite chain store of one platform home, with a group-commit writer."""

    enabled = True

    def __init__(self, path: Path, *, paths: PlatformPaths | None = None, name: str = STORE_NAME):
        self.path = Path(path)
        self.store = SqliteChainStore(self.path, name, paths=paths)
        self.writer = GroupCommitWriter(self.store)
        self._last_error: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_home(cls, paths: PlatformPaths) -> DecisionLog:
        return cls(decision_log_path(paths), paths=paths)

    def submit_many(self, records: Sequence[Mapping[str, Any]]) -> list[Future]:
        futures = self.writer.submit_many(records)
        for future in futures:
            future.add_done_callback(self._note)
        return futures

    def _note(self, future: Future) -> None:
        error = future.exception()
        with self._lock:
            self._last_error = None if error is None else f"{type(error).__name__}: {error}"

    def get(self, record_id: str) -> dict[str, Any] | None:
        return self.store.get(record_id)

    def entries(self, since: str | None = None) -> Iterator[dict[str, Any]]:
        for entry in self.store.iter_entries():
            if since is None or str(entry.get(CREATED_AT, "")) >= since:
                yield entry

    def entries_between(self, start: str, end: str, kinds: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Entries with `start` <= created_at < `end` (optionally only of `kinds`) in created_at order, each
        checked like `get` (see `SqliteChainStore.iter_created`); `("2026-01-01", "2026-01-02")` is one UTC day."""
        return self.store.iter_created(start, end, kinds)

    def count(self) -> int:
        return self.store.count()

    def verify(self) -> int:
        return self.store.verify()

    def writable(self) -> tuple[bool, str]:
        """(ok, why): the store is open, its directory writable and the last append did not fail."""
        try:
            self.store.count()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if not os.access(self.path.parent, os.W_OK):
            return False, f"{self.path.parent} is not writable"
        with self._lock:
            if self._last_error:
                return False, f"last append failed: {self._last_error}"
        return True, str(self.path)

    def close(self) -> None:
        self.writer.close()
        self.store.close()


class DisabledDecisionLog:
    """No log at all: for benchmarks measuring what the log costs. `/ready` says so loudly."""

    enabled = False

    def submit_many(self, records: Sequence[Mapping[str, Any]]) -> list[Future]:
        futures: list[Future] = []
        for record in records:
            future: Future = Future()
            future.set_result(dict(record))
            futures.append(future)
        return futures

    def get(self, record_id: str) -> dict[str, Any] | None:
        return None

    def writable(self) -> tuple[bool, str]:
        return True, "DISABLED: decisions are not recorded (benchmark mode)"

    def close(self) -> None:
        return None
