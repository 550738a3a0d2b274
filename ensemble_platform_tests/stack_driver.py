"""Drive the native stack (scripts/stack.sh) from Python: start it on free ports, submit runs to its
queue through the webserver, read them back from PostgreSQL. Used by test_stack_e2e and
bench/bench_stack.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ensemble_platform.settings import DATASET_TAG

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
STACK_SCRIPT = REPO / "scripts" / "stack.sh"
LOCATION = "ensemble_platform"
PARTITION_TAG = "dagster/partition"
REQUIRE_STACK_ENV = "ENSEMBLE_PLATFORM_REQUIRE_STACK"  # CI sets it: a stack that does not start fails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    home: Path
    dagster_home: Path
    mlflow_uri: str
    web_port: int


def start_stack(max_runs: int) -> Stack | str:
    """A running stack, or why it did not start (its processes stopped and its directory removed)."""
    # Under /tmp itself: the PostgreSQL cluster runs as a non-root user that must reach its directory.
    root = Path(tempfile.mkdtemp(prefix="ensemble-platform-stack-"))
    env = {**os.environ, "STACK_DIR": str(root), "STACK_PG_PORT": str(free_port()),
           "STACK_MLFLOW_PORT": str(free_port()), "STACK_GRPC_PORT": str(free_port()),
           "STACK_WEB_PORT": str(free_port()), "STACK_MAX_RUNS": str(max_runs),
           "STACK_BIN": str(Path(sys.executable).parent),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = subprocess.run([str(STACK_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        subprocess.run([str(STACK_SCRIPT), "stop"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(root, ignore_errors=True)
        return f"the stack did not start (exit {started.returncode}):\n{started.stderr[-3000:]}"
    exports = subprocess.run([str(STACK_SCRIPT), "env"], env=env, capture_output=True, text=True, check=True).stdout
    settings = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines() if "=" in line)
    return Stack(root, {**env, **settings}, Path(settings["ENSEMBLE_PLATFORM_HOME"]), Path(settings["DAGSTER_HOME"]),
                 settings["ENSEMBLE_PLATFORM_MLFLOW_URI"], int(env["STACK_WEB_PORT"]))


def stop_stack(stack: Stack) -> None:
    subprocess.run([str(STACK_SCRIPT), "stop"], env=stack.env, capture_output=True, timeout=300)
    shutil.rmtree(stack.root, ignore_errors=True)


@dataclass
class Postgres:
    """PostgreSQL alone (`scripts/stack.sh postgres`): its databases dagster, mlflow and decisions."""

    root: Path
    env: dict[str, str]
    port: int

    def url(self, database: str = "decisions") -> str:
        return f"postgresql://platform@127.0.0.1:{self.port}/{database}"


def start_postgres() -> Postgres | str:
    """A running PostgreSQL on a free loopback port in a temp dir, or why it did not start (then cleaned up)."""
    root = Path(tempfile.mkdtemp(prefix="ensemble-platform-pg-"))
    port = free_port()
    env = {**os.environ, "STACK_DIR": str(root), "STACK_PG_PORT": str(port)}
    started = subprocess.run([str(STACK_SCRIPT), "postgres"], env=env, capture_output=True, text=True, timeout=300)
    postgres = Postgres(root, env, port)
    if started.returncode != 0:
        stop_postgres(postgres)
        return f"PostgreSQL did not start (exit {started.returncode}):\n{started.stderr[-3000:]}"
    return postgres


def started_or_skip(started: T | str) -> T:
    """What `start_stack`/`start_postgres` started; if they returned why they could not, skip the test
    (fail it when `ENSEMBLE_PLATFORM_REQUIRE_STACK` is set)."""
    import pytest

    if isinstance(started, str):
        if os.environ.get(REQUIRE_STACK_ENV):
            pytest.fail(started)
        pytest.skip(started)
    return started


def stop_postgres(postgres: Postgres) -> None:
    subprocess.run([str(STACK_SCRIPT), "stop"], env=postgres.env, capture_output=True, timeout=300)
    shutil.rmtree(postgres.root, ignore_errors=True)


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


class Queue:
    """Runs submitted to the webserver (GraphQL), queued by the QueuedRunCoordinator and launched
    by the daemon in their own processes; read back from the PostgreSQL run storage."""

    def __init__(self, stack: Stack):
        import dagster as dg
        from dagster_graphql import DagsterGraphQLClient

        self.client = DagsterGraphQLClient("127.0.0.1", port_number=stack.web_port, timeout=120)
        self.instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
        self.stack = stack

    def submit(self, job: str, spec: Path, partition: str | None = None) -> str:
        tags = {DATASET_TAG: str(spec)} | ({PARTITION_TAG: partition} if partition else {})
        return self.client.submit_job_execution(job, repository_location_name=LOCATION,
                                                repository_name="__repository__", tags=tags)

    def wait(self, run_ids: list[str], timeout: float = 900) -> None:
        import dagster as dg

        done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
        deadline = time.monotonic() + timeout
        while True:
            runs = {run_id: self.instance.get_run_by_id(run_id) for run_id in run_ids}
            if all(run is not None and run.status in done for run in runs.values()):
                break
            assert time.monotonic() < deadline, f"runs not finished after {timeout}s: {runs}"
            time.sleep(1)
        failed = [run_id for run_id, run in runs.items() if run.status != dg.DagsterRunStatus.SUCCESS]
        assert not failed, f"runs failed: {self._failures(failed)} (stack logs: {self.stack.root / 'logs'})"

    def _failures(self, run_ids: list[str]) -> dict[str, list[str]]:
        return {run_id: [e.message for e in self.instance.all_logs(run_id)
                         if e.dagster_event is not None and e.dagster_event.is_failure][-3:] for run_id in run_ids}

    def intervals(self, run_ids: list[str]) -> list[tuple[float, float]]:
        records = [self.instance.get_run_record_by_id(run_id) for run_id in run_ids]
        return [(r.start_time, r.end_time) for r in records if r is not None and r.start_time and r.end_time]
