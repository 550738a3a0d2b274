"""The CLI's Dagster storage (`defs.instance_storage`): Dagster's sqlite files written through engines
kept per shard. What must hold: the engines are reused, every committed event survives a kill -9 of
the writer, Dagster's standard storage reads and writes the same files, and no connection outlives
the storage (exit, dispose, wipe)."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._core.events.log import EventLogEntry
from dagster._core.instance import InstanceRef
from dagster._serdes import ConfigurableClassData

from ensemble_platform import cli
from ensemble_platform.defs.instance_storage import KeptEngineSqliteEventLogStorage, platform_storage_data
from ensemble_platform.settings import PlatformPaths

REPO = Path(__file__).resolve().parents[1]


@dg.op
def _logs_twice(context: dg.OpExecutionContext) -> None:
    context.log.info("first line")
    context.log.info("second line")


@dg.job
def _two_lines():
    _logs_twice()


def _standard_instance(home: Path) -> dg.DagsterInstance:
    """Dagster's own sqlite storage on the home's files (what `make ui` opens)."""
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster")))


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def _runs_dir(home: Path) -> Path:
    return home / "dagster" / "history" / "runs"


def test_the_cli_writes_each_shard_through_one_kept_engine(tmp_path):
    instance = cli._instance(PlatformPaths.from_env(tmp_path / "home"))
    storage = instance.event_log_storage
    assert isinstance(storage, KeptEngineSqliteEventLogStorage)
    first = _two_lines.execute_in_process(instance=instance)
    engines = dict(storage._engines)
    assert len(engines) == 2  # the index shard and the run's shard, for every one of the run's events
    assert all(engine.pool.checkedin() == 1 for engine in engines.values())  # one idle connection kept
    second = _two_lines.execute_in_process(instance=instance)
    assert len(storage._engines) == 3 and all(storage._engines[k] is e for k, e in engines.items())
    for run in (first, second):
        assert {"first line", "second line"} <= set(_messages(instance, run.run_id))
    instance.dispose()
    assert storage._engines == {}


def test_the_standard_storage_reads_and_writes_the_same_files(tmp_path):
    home = tmp_path / "home"
    cli_instance = cli._instance(PlatformPaths.from_env(home))
    cli_run = _two_lines.execute_in_process(instance=cli_instance)
    standard = _standard_instance(home)
    assert "second line" in _messages(standard, cli_run.run_id)
    standard_run = _two_lines.execute_in_process(instance=standard)  # while the CLI's engines are open
    assert {r.run_id for r in cli_instance.get_runs()} == {cli_run.run_id, standard_run.run_id}
    assert "second line" in _messages(cli_instance, standard_run.run_id)
    assert cli_instance.get_run_by_id(cli_run.run_id).is_success


def test_no_connection_outlives_the_process(tmp_path):
    """The console script ends with os._exit after the atexit handlers: the engines are disposed
    there, so SQLite checkpoints each write-ahead log and removes it."""
    home = tmp_path / "home"
    code = ("import os, sys; from ensemble_platform import cli; from ensemble_platform.settings import PlatformPaths; "
            "from ensemble_platform_tests.test_instance_storage import _two_lines; "
            f"i = cli._instance(PlatformPaths.from_env({str(home)!r})); "
            "assert _two_lines.execute_in_process(instance=i).success; "
            "import atexit; atexit._run_exitfuncs(); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=str(REPO))
    assert done.returncode == 0, done.stderr
    leftovers = sorted(p.name for p in _runs_dir(home).iterdir() if p.suffix in (".db-wal", ".db-shm"))
    assert leftovers == []


def test_the_uis_live_view_sees_each_event_as_the_cli_commits_it(tmp_path):
    """Dagster's sqlite watch (the UI's live run view) fires only when a run shard's `.db` file changes:
    the CLI's kept connection checkpoints its write-ahead log at every commit, so nothing waits in it."""
    home = tmp_path / "home"
    cli_storage = cli._instance(PlatformPaths.from_env(home)).event_log_storage
    watcher = _standard_instance(home).event_log_storage
    run_id = "0f0e0d0c-0000-4000-8000-000000000001"
    seen: list[str] = []
    write = lambda k: cli_storage.store_event(  # noqa: E731
        EventLogEntry(error_info=None, level=logging.INFO, user_message=f"line {k}", run_id=run_id,
                      timestamp=time.time()))
    write(0)  # the shard exists before the watch starts
    def on_event(entry: EventLogEntry, _cursor: str) -> None:
        seen.append(entry.user_message)

    watcher.watch(run_id, None, on_event)
    try:
        for k in range(1, 4):
            time.sleep(0.3)  # the watchdog's inotify events, one write at a time
            write(k)
            deadline = time.monotonic() + 20
            while f"line {k}" not in seen:
                assert time.monotonic() < deadline, f"the watch never saw line {k} (saw {seen})"
                time.sleep(0.05)
    finally:
        watcher.end_watch(run_id, on_event)
        watcher.dispose()


_KILLED_WRITER = """
import sys, time
from pathlib import Path
import dagster as dg
from ensemble_platform import cli
from ensemble_platform.settings import PlatformPaths

home, ready = Path(sys.argv[1]), Path(sys.argv[2])

@dg.op
def logs_then_hangs(context):
    for k in range(50):
        context.log.info(f"line {k}")
    ready.with_suffix(".tmp").write_text(context.run_id)
    ready.with_suffix(".tmp").replace(ready)
    time.sleep(600)

@dg.job
def hangs():
    logs_then_hangs()

hangs.execute_in_process(instance=cli._instance(PlatformPaths.from_env(home)))
"""


def test_every_committed_event_survives_a_kill_9_of_the_writer(tmp_path):
    home, ready = tmp_path / "home", tmp_path / "ready"
    with (tmp_path / "writer.log").open("w") as log:
        writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(home), str(ready)], cwd=str(REPO),
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert writer.poll() is None, (tmp_path / "writer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the writer never got to its last line"
            time.sleep(0.1)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    run_id = ready.read_text()
    assert (_runs_dir(home) / f"{run_id}.db-wal").exists()  # killed with the run shard's connection open
    for instance in (_standard_instance(home), cli._instance(PlatformPaths.from_env(home))):
        messages = _messages(instance, run_id)
        assert [f"line {k}" for k in range(50)] == [m for m in messages if m.startswith("line ")]
        assert instance.get_run_by_id(run_id) is not None


def test_wipe_closes_the_kept_connections_before_it_deletes_the_shards(tmp_path):
    instance = cli._instance(PlatformPaths.from_env(tmp_path / "home"))
    storage = instance.event_log_storage
    assert isinstance(storage, KeptEngineSqliteEventLogStorage)
    before = _two_lines.execute_in_process(instance=instance)
    storage.wipe()
    assert [Path(k).name for k in storage._engines] == ["index.db"]  # reopened by wipe's own index clean-up
    assert not (_runs_dir(tmp_path / "home") / f"{before.run_id}.db").exists()
    after = _two_lines.execute_in_process(instance=instance)
    assert "second line" in _messages(_standard_instance(tmp_path / "home"), after.run_id)


def test_storage_other_than_dagsters_sqlite_is_left_as_it_is():
    postgres = ConfigurableClassData("dagster_postgres", "DagsterPostgresStorage", "postgres_url: postgresql://h/db\n")
    assert platform_storage_data(postgres) is postgres
