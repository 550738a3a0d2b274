"""The CLI's Dagster storage: Dagster's own sqlite storage, with one database engine per event-log
shard kept for the life of the instance.

Why not Dagster's class as it is: `SqliteEventLogStorage._connect` builds a SQLAlchemy engine for
every event it writes and disposes of it after the commit, and closing a database's last connection
makes SQLite checkpoint and delete its write-ahead log. At 10k rows the demo writes ~480 events
(plus their copies in the index shard): a profile put 1.9 s of the graph's ~36 s in those connects,
commits and closes. Here each shard keeps one idle connection between writes (a small pool,
overflow for Dagster's own schema checks). What is written, where, and in which transaction is
Dagster's code unchanged: the files stay Dagster's sqlite storage, which `make ui`'s standard
storage (`instance_settings.ui_settings`) and any other process read and write as before.

A run shard's write-ahead log is checkpointed at every commit (`wal_autocheckpoint=1`), as the
last close did before: the UI's live run view (`SqliteEventLogStorage.watch`) reacts only when the
shard's `.db` file changes, so a log that stayed in the WAL would hold a running job's events
back from it until the command ended. Measured per write: Dagster's way 2.0 ms, kept and
checkpointed 0.8 ms, kept without checkpoints 0.35 ms.

Only the CLI's instance uses it (`cli._instance`): a process that lives for one command. The
engines are disposed with the storage (`dispose`), at interpreter exit, and before `wipe` deletes
shard files.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import yaml
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

# One connection kept per shard; Dagster's schema check opens a second one while the first is out.
_POOL_SIZE = 1
_POOL_OVERFLOW = 4
# Pages in a run shard's WAL before SQLite checkpoints it into the `.db` file: every commit.
RUN_SHARD_AUTOCHECKPOINT_PAGES = 1

STORAGE_MODULE = __name__
STORAGE_CLASS = "PlatformSqliteStorage"
DAGSTER_SQLITE_STORAGE = "DagsterSqliteStorage"


def _checkpoint_every_commit(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA wal_autocheckpoint={RUN_SHARD_AUTOCHECKPOINT_PAGES}")
    cursor.close()


def _dispose_all(engines: dict[str, Engine]) -> None:
    for engine in engines.values():
        engine.dispose()
    engines.clear()


class KeptEngineSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` whose shards each keep one engine (and one idle connection)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: dict[str, Engine] = {}
        # At exit too: the console script ends with os._exit after the atexit handlers.
        self._finalizer = weakref.finalize(self, _dispose_all, self._engines)
        super().__init__(base_dir, inst_data=inst_data)

    def _engine(self, shard: str) -> Engine:
        conn_string = self.conn_string_for_shard(shard)
        engine = self._engines.get(conn_string)
        if engine is None:
            engine = self._engines[conn_string] = create_engine(
                conn_string, poolclass=QueuePool, pool_size=_POOL_SIZE, max_overflow=_POOL_OVERFLOW,
                # Connections go back to the pool and may serve another thread next (always under
                # `_db_lock`, one at a time).
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            if shard != INDEX_SHARD_NAME:  # run shards: what the UI's live view watches
                event.listen(engine, "connect", _checkpoint_every_commit)
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # Dagster's `_connect` with the engine kept (its body otherwise unchanged).
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def wipe(self) -> None:
        with self._db_lock:
            _dispose_all(self._engines)  # no connection may stay open on a file wipe deletes
        super().wipe()

    def dispose(self) -> None:
        super().dispose()  # stops Dagster's watch threads first: none may reopen an engine after
        with self._db_lock:
            _dispose_all(self._engines)


class PlatformSqliteStorage(DagsterSqliteStorage):
    """Dagster's sqlite storage (same directories, same run and schedule storage) with the event log
    of `KeptEngineSqliteEventLogStorage`."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        # DagsterSqliteStorage.__init__ with the event log's class replaced.
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = KeptEngineSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value) -> PlatformSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


def platform_storage_data(storage_data: ConfigurableClassData) -> ConfigurableClassData:
    """The instance's storage as `PlatformSqliteStorage` when it is Dagster's default sqlite storage
    (same settings); any other storage (PostgreSQL, a deployment's own) as it is."""
    if storage_data.class_name != DAGSTER_SQLITE_STORAGE:
        return storage_data
    base_dir = yaml.safe_load(storage_data.config_yaml)["base_dir"]
    return ConfigurableClassData(STORAGE_MODULE, STORAGE_CLASS, yaml.dump({"base_dir": base_dir}))
