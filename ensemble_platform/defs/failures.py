"""Failures a person can act on: a lifecycle run refused by a blocking data check ends with each
failing expectation (column, expected, observed, the spec field that changes it), not with a
Dagster traceback; tracebacks go to the home's log file (`logs/cli.log`), the cause to the terminal."""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster._core.errors import DagsterAssetCheckFailedError

from ensemble_platform.defs.runner import LifecycleRun, materialize_lifecycle
from ensemble_platform.errors import PlatformError

LOG_FILE = Path("logs") / "cli.log"
_STACK_TRACE = "Stack Trace:"


class DataCheckRefused(PlatformError):
    """A blocking data check failed: nothing downstream ran."""


def log_path(home: Path) -> Path:
    return home / LOG_FILE


def log_traceback(home: Path, exc: BaseException) -> Path:
    """Append the traceback of `exc` to the home's log file (a temp file when the home does not
    exist: an error must not create a home); returns the file."""
    path = log_path(home) if home.is_dir() else Path(tempfile.gettempdir()) / "ensemble-platform-cli.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(exc)) + "\n")
    return path


class _StackTracesToLog(io.TextIOBase):
    """A stand-in for stderr during a run: every line goes to the log file, and to the terminal
    except the stack traces in Dagster's failure events (a blank line ends one)."""

    def __init__(self, terminal, log) -> None:
        self.terminal, self.log, self.skipping, self.pending = terminal, log, False, ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip() == _STACK_TRACE:
                self.skipping = True
                self.terminal.write(f"(stack trace in {self.log.name})\n")
            elif self.skipping and not line.strip():
                self.skipping = False
            if not self.skipping:
                self.terminal.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()


@contextlib.contextmanager
def stack_traces_to_log(home: Path) -> Iterator[None]:
    path = log_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    with open(path, "a", encoding="utf-8") as log:
        sys.stderr = _StackTracesToLog(terminal, log)
        try:
            yield
        finally:
            stream, sys.stderr = sys.stderr, terminal
            if isinstance(stream, _StackTracesToLog) and stream.pending and not stream.skipping:
                terminal.write(stream.pending)


def failing_checks(instance: dg.DagsterInstance, run_id: str | None = None) -> list[str]:
    """One line per failing expectation of every failed blocking check in the run (default: the
    instance's latest run), from the `result` metadata the data checks attach."""
    if run_id is None:
        runs = instance.get_runs(limit=1)
        if not runs:
            return []
        run_id = runs[0].run_id
    lines = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = record.dagster_event.event_specific_data if record.dagster_event else None
        if evaluation is None or evaluation.passed:
            continue
        result = evaluation.metadata.get("result")
        outcomes = (result.value or {}).get("outcomes", []) if result is not None else []
        failed = [o for o in outcomes if not o.get("success")]
        lines.append(f"{evaluation.asset_key.to_user_string()} check {evaluation.check_name} failed "
                     f"({len(failed)} expectation(s)):")
        for o in failed:
            lines.append(f"  - column {o.get('column') or '(table)'}: {o.get('expectation')}: expected "
                         f"{o.get('expected') or '(see the suite)'}, observed {o.get('observed')}"
                         + (f"; change: {o['remedy']}" if o.get("remedy") else ""))
    return lines


def run_lifecycle_or_refuse(defs: dg.Definitions, instance: dg.DagsterInstance, home: Path, **kwargs) -> LifecycleRun:
    """`materialize_lifecycle`, with Dagster's stack traces sent to the log file; a blocking check
    failure becomes a DataCheckRefused naming each failing expectation."""
    try:
        with stack_traces_to_log(home):
            return materialize_lifecycle(defs, instance, **kwargs)
    except DagsterAssetCheckFailedError as exc:
        lines = failing_checks(instance)
        raise DataCheckRefused(
            "a blocking data check failed; nothing downstream ran:\n" + "\n".join(lines or [str(exc)])
        ) from exc
