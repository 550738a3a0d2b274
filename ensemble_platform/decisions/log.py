"""The decision log: every decision and refusal, appended to the keyed hash-chained store
(`ensemble_platform.integrity`) through a group-commit writer. `submit_many` returns futures resolved only
once the records are durable and checkpointed; the service answers after awaiting them.

One setting chooses the store (`ENSEMBLE_PLATFORM_DECISION_STORE`): unset, the SQLite file under the home;
a `postgresql://` URL, the shared PostgreSQL store. `open_decision_store` is the only place that asks."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from ensemble_platform.decisions.records import CREATED_AT
from ensemble_platform.errors import PlatformError
from ensemble_platform.integrity import GroupCommitWriter, PostgresChainStore, SqliteChainStore
from ensemble_platform.settings import DECISION_STORE_ENV, PlatformPaths, configured_decision_store, masked_url

STORE_NAME = "decisions"
STORE_FILE = "decisions.sqlite"

# Every store the decision log can live in; all have the same methods (`ChainStore` plus kind/created_at reads).
DecisionStore = SqliteChainStore | PostgresChainStore


def decision_log_path(paths: PlatformPaths) -> Path:
    """The SQLite decision log's file under the home (used when no PostgreSQL store is configured)."""
    return paths.home / "decisions" / STORE_FILE


def _store_url() -> str | None:
    try:
        return configured_decision_store()
    except ValueError as exc:
        raise PlatformError(str(exc)) from exc


def decision_store_location(paths: PlatformPaths) -> str:
    """Where the decision log of `paths` lives, for messages (a PostgreSQL password masked)."""
    url = _store_url()
    return f"{masked_url(url)} ({DECISION_STORE_ENV})" if url else str(decision_log_path(paths))


def decision_log_exists(paths: PlatformPaths) -> bool:
    """Whether anything was ever logged: the SQLite file exists, or the PostgreSQL store holds entries
    (opening it checks its tail: a store truncated to nothing is an error, not "nothing logged")."""
    url = _store_url()
    if url is None:
        return decision_log_path(paths).is_file()
    with PostgresChainStore(url, STORE_NAME, paths=paths) as store:
        return store.count() > 0


def open_decision_store(paths: PlatformPaths, *, name: str = STORE_NAME) -> DecisionStore:
    """The home's decision-log store on its own (tail checked on open; no group-commit writer): for readers
    and for the CLI's read-check-append actions. The configured store (`ENSEMBLE_PLATFORM_DECISION_STORE`)
    or the SQLite file under the home. Close it."""
    url = _store_url()
    if url is not None:
        return PostgresChainStore(url, name, paths=paths)
    return SqliteChainStore(decision_log_path(paths), name, paths=paths)


class DecisionLogLike(Protocol):
    enabled: bool

    def submit_many(self, records: Sequence[Mapping[str, Any]]) -> list[Future]: ...

    def get(self, record_id: str) -> dict[str, Any] | None: ...

    def writable(self) -> tuple[bool, str]: ...

    def close(self) -> None: ...


class DecisionLog:
    """The keyed chain store of one platform home (SQLite file, or the configured PostgreSQL store), with a
    group-commit writer. `DecisionLog(path)` is a SQLite file of one's choosing (benchmarks)."""

    enabled = True

    def __init__(self, path: Path | None = None, *, paths: PlatformPaths | None = None, name: str = STORE_NAME,
                 store: DecisionStore | None = None):
        if store is None:
            if path is None:
                raise PlatformError("DecisionLog needs a SQLite path or an open store")
            store = SqliteChainStore(Path(path), name, paths=paths)
        self.store: DecisionStore = store
        self.path: Path | None = getattr(store, "path", None)  # the SQLite file, when the store is one
        self.where = store.label  # names the store in messages (a PostgreSQL password masked)
        self.writer = GroupCommitWriter(self.store)
        self._last_error: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_home(cls, paths: PlatformPaths) -> DecisionLog:
        """The decision log the deployment configures for `paths` (see `open_decision_store`)."""
        return cls(store=open_decision_store(paths))

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
        """Entries created at `since` or later, each row's columns checked (not its hash, MAC or place:
        for reading; what leaves the platform goes through `verified_entries`)."""
        for entry in self.store.iter_entries():
            if since is None or str(entry.get(CREATED_AT, "")) >= since:
                yield entry

    def verified_entries(self, since: str | None = None) -> list[dict[str, Any]]:
        """Entries created at `since` or later, after the whole log verified (chain, MACs, checkpoint)."""
        return [entry for entry in self.store.verified_entries()
                if since is None or str(entry.get(CREATED_AT, "")) >= since]

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
            where = self.store.check_writable()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        with self._lock:
            if self._last_error:
                return False, f"last append failed: {self._last_error}"
        return True, where

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
