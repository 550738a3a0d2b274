"""Shadow scoring: a staging candidate scores every production request off the response path.

`ShadowScorer.submit(rows, records)` is called after production's records are durable and
before the answer is sent; it only puts a reference on a queue bounded in rows and returns (it never
raises and never blocks: past `max_queued_rows` the request is dropped and counted). One worker thread,
started at a lower CPU priority (`nice`, Linux: per thread, inherited by the candidate's member threads
it starts), gathers requests for up to `linger_s` (or `max_batch_rows` rows) and scores them in one pass:
scoring is mostly per-call overhead (a 64-row block costs about what one row does), so coalescing is
what keeps the shadow's CPU, and with it its cost on production's latency, small; it holds the GIL as
production does, so a lower nice alone buys little (bench/README.md). It validates the raw rows with the
CANDIDATE's schema (row by row: one row its schema refuses fails alone), decides them, and appends one
`ShadowRecord` per production decision to the decision log, without anybody awaiting the write. Whatever the candidate does (raises, hangs past its member deadline, returns NaN, refuses) is
caught, counted and recorded as that row's shadow error; production's answer was already final.

Isolation. A candidate pass costs ~50 ms of mostly GIL-holding Python (sklearn's per-call overhead)
whether it scores 1 row or 64; run in the service's process it slows every production request it
overlaps about twofold (bench: single-row p99 +34 ms). `ProcessCandidate` (the default of `open_shadow`)
runs the candidate's decider in a spawned child process at nice +10: no shared GIL, and the OS gives
production the CPU first. The queue, the records and the log writes stay in the service. A child that
dies or hangs is recorded as the rows' shadow error and started again for the next pass. The child is
spawned (never forked from a process with threads): an entry script must guard its top level with
`if __name__ == "__main__"` (`python -m ensemble_platform.service` and the console scripts do).
`Decider` itself (in-thread) is a `Candidate` too: tests inject faults into it.

The candidate comes from a verified bundle: `staging_bundle` finds the staging version's bundle the
way production's is found (exported, or reused when intact, for its approval in force: a candidate
needs the approval production would need, since the bundle carries it); both isolations load it with
the verified-bundle loader (nothing in it executes code); `open_shadow` checks it serves the same
dataset as production and is another version.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from ensemble_platform import __version__
from ensemble_platform.decisions.log import DecisionLogLike
from ensemble_platform.decisions.records import (
    SHADOW_EXCEPTION,
    SHADOW_INVALID_INPUT,
    SHADOW_REFUSED,
    ShadowErrorKind,
    ShadowRecord,
    input_sha256,
    now_iso,
)
from ensemble_platform.errors import DataError, PlatformError
from ensemble_platform.policy import GovernancePolicy
from ensemble_platform.service.recording import member_documents, new_id
from ensemble_platform.serving.decider import (
    DEFAULT_MAX_ABS_VALUE,
    Decider,
    DecisionBatch,
    RefusalError,
    RowDecision,
    jsonable_features,
    validate_rows,
)
from ensemble_platform.settings import PlatformPaths

log = logging.getLogger("ensemble_platform.service.shadow")

DEFAULT_MAX_QUEUED_ROWS = 4096  # rows waiting for the candidate; a request past it is dropped (and counted)
DEFAULT_MAX_BATCH_ROWS = 256  # rows of coalesced requests the candidate scores at once
DEFAULT_LINGER_S = 1.0  # how long the worker gathers requests before scoring them together
DEFAULT_NICE = 10  # added to the candidate's nice value (its process, or the worker thread in-thread)
CANDIDATE_MEMBER_WORKERS = 1  # threads per candidate member (production has 4)
PROCESS_START_TIMEOUT_S = 120.0
PROCESS_ANSWER_GRACE_S = 30.0  # beyond the member deadline, before a silent child counts as hung
Isolation = Literal["process", "thread"]
POLL_SECONDS = 0.05
ERROR_TEXT_LIMIT = 500
_ROW_PREFIX = re.compile(r"^row 0\b")


@dataclass(frozen=True)
class ShadowStats:
    """Counters since start (rows are production decisions) and the queue now."""

    candidate_version: str
    submitted: int  # rows accepted onto the queue
    scored: int  # rows the candidate scored (recorded with its output)
    failed: int  # rows the candidate could not score (recorded as shadow errors)
    dropped: int  # rows never scored: queue full, or still queued when closing timed out (not recorded)
    record_failures: int  # shadow records the decision log could not write
    queue_depth: int  # requests waiting
    queued_rows: int  # their rows
    queue_capacity: int  # max_queued_rows
    batches: int  # candidate scoring passes
    busy_seconds: float  # the worker's time scoring and recording
    isolation: str  # "process": the candidate decides in a child process; "thread": in the worker thread
    nice: int | None  # the candidate's nice value (its process, or the worker thread; None: unknown)

    def document(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Submission:
    rows: Sequence[Mapping[str, Any]]
    records: Sequence[Any]  # production's DecisionRecord models (or their dumps)
    answered: float  # time.monotonic() at submission


@dataclass(frozen=True)
class _Produced:
    """What a shadow record copies from the production decision it shadows."""

    decision_id: str
    request_id: str | None
    dataset: str
    version: str
    probability: float
    decision: int
    agreement: float
    row_index: int
    answered: float


def _field(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def _produced(record: Any, answered: float) -> _Produced:
    return _Produced(
        decision_id=str(_field(record, "id")), request_id=_field(record, "request_id"),
        dataset=str(_field(record, "dataset")), version=str(_field(record, "ensemble_version")),
        probability=float(_field(record, "probability")), decision=int(_field(record, "decision")),
        agreement=float(_field(record, "agreement")), row_index=int(_field(record, "row_index")), answered=answered)


def _lower_priority(increment: int) -> int | None:
    """Raise the calling thread's nice value by `increment` (Linux: nice is per thread, and threads it
    starts inherit it); returns the value now, None where threads cannot be reniced."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if increment > 0:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (AttributeError, OSError):
        return None


def _text(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text[:ERROR_TEXT_LIMIT]


class Candidate(Protocol):
    """What the scorer needs of the candidate: `Decider` (in-thread) or `ProcessCandidate`."""

    @property
    def dataset(self) -> str: ...

    @property
    def ensemble_version(self) -> str: ...

    @property
    def config_hash(self) -> str: ...

    def validate(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...

    def decide_validated(self, canonical: Sequence[Mapping[str, Any]]) -> DecisionBatch: ...

    def close(self) -> None: ...


class ShadowScorer:
    """A candidate scoring production's requests from one background thread (see the module)."""

    def __init__(self, decider: Candidate, decision_log: DecisionLogLike, *, manifest_sha256: str,
                 max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
                 linger_s: float = DEFAULT_LINGER_S, nice: int = DEFAULT_NICE):
        if max_queued_rows < 1 or max_batch_rows < 1 or linger_s < 0 or nice < 0:
            raise ValueError(f"max_queued_rows and max_batch_rows must be >= 1, linger_s and nice >= 0 "
                             f"(got {max_queued_rows}, {max_batch_rows}, {linger_s}, {nice})")
        self.decider = decider
        self.decision_log = decision_log
        self.manifest_sha256 = manifest_sha256
        self.max_queued_rows = max_queued_rows
        self.max_batch_rows = max_batch_rows
        self.linger_s = linger_s
        self._nice_increment = nice
        self._queue: queue.SimpleQueue[_Submission] = queue.SimpleQueue()
        self._queued_rows = 0
        self._flush = threading.Event()  # set while somebody drains: score what is queued without lingering
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._counts = {"submitted": 0, "scored": 0, "failed": 0, "dropped": 0, "record_failures": 0, "batches": 0}
        self._busy = 0.0
        self._pending = 0  # submissions queued or being scored
        self._futures: set[Future] = set()
        self._nice: int | None = None
        self._closing = False
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"shadow:{decider.ensemble_version}", daemon=True)
        self._thread.start()
        self._started.wait(5.0)

    # -- the response path ---------------------------------------------------------------------

    def submit(self, rows: Sequence[Mapping[str, Any]], records: Sequence[Any]) -> bool:
        """Queue production's request (its raw `rows` and the decision `records` stored for them) for the
        candidate; True when queued, False when dropped (queue full, closing). Never raises, never blocks."""
        try:
            n = len(records)
            submission = _Submission(rows, records, time.monotonic())
            with self._lock:
                # A request larger than the bound still goes in when nothing waits (it is scored in chunks).
                if self._closing or (self._queued_rows and self._queued_rows + n > self.max_queued_rows):
                    self._counts["dropped"] += n
                    return False
                self._pending += 1
                self._queued_rows += n
                self._counts["submitted"] += n
                self._queue.put(submission)  # unbounded SimpleQueue: never blocks (the bound is the check above)
            return True
        except Exception as exc:  # the answer must go out whatever happens here
            log.error("shadow submit failed: %s", _text(exc))
            return False

    # -- observing and stopping ------------------------------------------------------------------

    def stats(self) -> ShadowStats:
        with self._lock:
            counts, busy, rows = dict(self._counts), self._busy, self._queued_rows
        return ShadowStats(candidate_version=self.decider.ensemble_version, queue_depth=self._queue.qsize(),
                           queued_rows=rows, queue_capacity=self.max_queued_rows, busy_seconds=busy,
                           isolation="process" if isinstance(self.decider, ProcessCandidate) else "thread",
                           nice=getattr(self.decider, "nice", self._nice), **counts)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is scored and its records are durable; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._flush.set()
        try:
            with self._idle:
                while self._pending:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._idle.wait(remaining)
                futures = set(self._futures)
        finally:
            self._flush.clear()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return not wait_futures(futures, timeout=remaining).not_done

    def close(self, timeout: float = 10.0) -> ShadowStats:
        """Stop taking requests, score what is queued (for at most `timeout` seconds; the rest is dropped
        and counted), stop the worker and the candidate. Close it before the decision log."""
        with self._lock:
            self._closing = True
        drained = self.drain(timeout)
        self._stop.set()
        self._thread.join(timeout if drained else 1.0)
        leftover = 0
        while True:
            try:
                leftover += len(self._queue.get_nowait().records)
            except queue.Empty:
                break
        with self._lock:
            self._counts["dropped"] += leftover
            self._queued_rows = 0
        self.decider.close()
        stats = self.stats()
        if not drained:
            log.warning("shadow %s closed before it caught up: %d row(s) dropped", stats.candidate_version,
                        stats.dropped)
        return stats

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        self._nice = _lower_priority(self._nice_increment)
        self._started.set()
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            batch = self._gather(first)
            with self._lock:
                self._queued_rows -= sum(len(s.records) for s in batch)
            started = time.perf_counter()
            try:
                self._score(batch)
            except Exception as exc:  # a bug here must not stop shadowing, nor touch production
                log.error("shadow scoring failed: %s", _text(exc))
                rows = sum(len(s.records) for s in batch)
                with self._lock:
                    self._counts["failed"] += rows
            finally:
                with self._lock:
                    self._busy += time.perf_counter() - started
                    self._counts["batches"] += 1
                    self._pending -= len(batch)
                    self._idle.notify_all()

    def _gather(self, first: _Submission) -> list[_Submission]:
        """`first` and the requests that come within `linger_s` of it, up to `max_batch_rows` rows; no
        lingering while closing or draining."""
        batch, rows = [first], len(first.records)
        deadline = time.monotonic() + self.linger_s
        while rows < self.max_batch_rows:
            lingering = not (self._closing or self._flush.is_set() or self._stop.is_set())
            remaining = deadline - time.monotonic() if lingering else 0.0
            try:
                submission = self._queue.get(timeout=min(remaining, POLL_SECONDS)) if remaining > 0 \
                    else self._queue.get_nowait()
            except queue.Empty:
                if remaining > 0:
                    continue
                break
            batch.append(submission)
            rows += len(submission.records)
        return batch

    def _score(self, batch: Sequence[_Submission]) -> None:
        records: list[ShadowRecord] = []
        valid: list[tuple[_Produced, dict[str, Any]]] = []
        for submission in batch:
            for record in submission.records:
                try:
                    produced = _produced(record, submission.answered)
                except Exception as exc:
                    log.error("shadow: a production record could not be read: %s", _text(exc))
                    with self._lock:
                        self._counts["failed"] += 1
                    continue
                canonical, error = self._validate(submission.rows, produced.row_index)
                if canonical is None:
                    records.append(self._error(produced, SHADOW_INVALID_INPUT, error, 0.0))
                else:
                    valid.append((produced, canonical))
        for start in range(0, len(valid), self.max_batch_rows):
            records.extend(self._decide(valid[start:start + self.max_batch_rows]))
        self._record(records)

    def _validate(self, rows: Sequence[Mapping[str, Any]], index: int) -> tuple[dict[str, Any] | None, str]:
        """The row as the candidate's schema reads it, or why it cannot (row numbers as in the request)."""
        if not 0 <= index < len(rows):
            return None, f"production row {index} is not in the request's {len(rows)} row(s)"
        try:
            return self.decider.validate([rows[index]])[0], ""
        except DataError as exc:
            return None, _text(_ROW_PREFIX.sub(f"row {index}", str(exc)))
        except Exception as exc:
            return None, _text(exc)

    def _decide(self, chunk: Sequence[tuple[_Produced, dict[str, Any]]]) -> list[ShadowRecord]:
        """Decide the chunk; rows the candidate refuses (too few working members) are recorded as refused
        and the rest decided again (a row's result does not depend on its batch)."""
        out: list[ShadowRecord] = []
        remaining = list(chunk)
        for _ in range(3):
            if not remaining:
                return out
            started = time.perf_counter()
            try:
                decided = self.decider.decide_validated([canonical for _, canonical in remaining])
            except RefusalError as exc:
                refused = set(exc.rows)
                seconds = time.perf_counter() - started
                out += [self._error(p, SHADOW_REFUSED, _text(exc.reason), seconds)
                        for i, (p, _) in enumerate(remaining) if i in refused]
                remaining = [item for i, item in enumerate(remaining) if i not in refused]
                continue
            except Exception as exc:
                seconds = time.perf_counter() - started
                return out + [self._error(p, SHADOW_EXCEPTION, _text(exc), seconds) for p, _ in remaining]
            latency = decided.seconds * 1000
            return out + [self._scored(p, canonical, row, latency)
                          for (p, canonical), row in zip(remaining, decided.rows, strict=True)]
        return out + [self._error(p, SHADOW_REFUSED, "refused again after its refused rows were set aside", 0.0)
                      for p, _ in remaining]

    # -- records ---------------------------------------------------------------------------------

    def _base(self, produced: _Produced, latency_ms: float) -> dict[str, Any]:
        decider = self.decider
        return {
            "id": new_id(), "created_at": now_iso(), "decision_id": produced.decision_id,
            "request_id": produced.request_id, "dataset": produced.dataset,
            "production_version": produced.version, "production_probability": produced.probability,
            "production_decision": produced.decision, "production_agreement": produced.agreement,
            "candidate_version": decider.ensemble_version, "config_hash": decider.config_hash,
            "manifest_sha256": self.manifest_sha256, "code_version": __version__, "latency_ms": latency_ms,
            "lag_ms": (time.monotonic() - produced.answered) * 1000,
        }

    def _scored(self, produced: _Produced, canonical: Mapping[str, Any], row: RowDecision,
                latency_ms: float) -> ShadowRecord:
        values = (row.probability, row.agreement)
        if not all(math.isfinite(v) for v in values):
            return self._error(produced, SHADOW_EXCEPTION, f"non_finite: the candidate returned {values!r}",
                               latency_ms)
        return ShadowRecord(
            **self._base(produced, latency_ms), probability=row.probability, decision=row.decision,
            agreement=row.agreement, needs_review=row.needs_review, degraded=row.degraded,
            members=member_documents(row.members), error=None, error_kind=None,
            input_sha256=input_sha256(jsonable_features(canonical)))

    def _error(self, produced: _Produced, kind: ShadowErrorKind, error: str, latency_ms: float) -> ShadowRecord:
        return ShadowRecord(
            **self._base(produced, latency_ms), probability=None, decision=None, agreement=None,
            needs_review=None, degraded=None, members={}, error=error, error_kind=kind, input_sha256=None)

    def _record(self, records: Sequence[ShadowRecord]) -> None:
        failed = sum(r.error is not None for r in records)
        with self._lock:
            self._counts["scored"] += len(records) - failed
            self._counts["failed"] += failed
        if not records:
            return
        try:
            futures = self.decision_log.submit_many([r.model_dump(mode="json") for r in records])
        except Exception as exc:
            log.error("shadow records not written: %s", _text(exc))
            with self._lock:
                self._counts["record_failures"] += len(records)
            return
        with self._lock:
            self._futures.update(futures)
        for future in futures:
            future.add_done_callback(self._written)

    def _written(self, future: Future) -> None:
        with self._lock:
            self._futures.discard(future)
            if future.exception() is not None:
                self._counts["record_failures"] += 1


# --- the candidate in a process of its own --------------------------------------------------------

def _candidate_process(conn: Connection, directory: str, manifest_sha256: str, options: dict[str, Any]) -> None:
    """The child: load the verified bundle, answer `decide_validated` requests until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops it (close), not the terminal's Ctrl-C
    try:
        if options.get("nice"):
            os.nice(int(options["nice"]))
        decider = candidate_decider(Path(directory), manifest_sha256, member_timeout_s=options["member_timeout_s"],
                                    max_missing_share=options["max_missing_share"], min_members=options["min_members"])
    except BaseException as exc:
        conn.send(("failed", _text(exc)))
        return
    schema = decider.runtime.schema
    conn.send(("ready", {"dataset": decider.dataset, "ensemble_version": decider.ensemble_version,
                         "config_hash": decider.config_hash, "numeric": list(schema.numeric),
                         "categorical": list(schema.categorical), "max_abs_value": decider.max_abs_value,
                         "nice": os.getpriority(os.PRIO_PROCESS, 0)}))
    try:
        while (canonical := conn.recv()) is not None:
            try:
                batch = decider.decide_validated(canonical)
                conn.send(("ok", DecisionBatch(batch.rows, [], batch.seconds, batch.member_seconds)))
            except RefusalError as exc:  # its constructor does not survive pickling: send the parts
                conn.send(("refused", exc.reason, exc.rows))
            except Exception as exc:
                conn.send(("error", _text(exc)))
    except (EOFError, OSError):
        pass  # the service went away
    finally:
        decider.close()


class ProcessCandidate:
    """The candidate's decider in a spawned child process (see the module): a `Candidate`. The child loads
    and verifies the bundle itself; rows are validated here with the schema it reports, decided there."""

    def __init__(self, directory: Path, manifest_sha256: str, *, member_timeout_s: float, max_missing_share: float,
                 min_members: int | None = None, nice: int = DEFAULT_NICE,
                 start_timeout_s: float = PROCESS_START_TIMEOUT_S):
        self.directory = Path(directory)
        self.manifest_sha256 = manifest_sha256
        self.answer_timeout_s = member_timeout_s + PROCESS_ANSWER_GRACE_S
        self.start_timeout_s = start_timeout_s
        self._options = {"member_timeout_s": member_timeout_s, "max_missing_share": max_missing_share,
                         "min_members": min_members, "nice": nice}
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self.restarts = -1
        self.info = self._start()

    def _start(self) -> dict[str, Any]:
        context = multiprocessing.get_context("spawn")  # never fork a process with threads
        parent, child = context.Pipe()
        process = context.Process(target=_candidate_process, name=f"shadow-candidate:{self.directory.name}",
                                  args=(child, str(self.directory), self.manifest_sha256, self._options), daemon=True)
        process.start()
        child.close()
        ready: tuple[Any, ...]
        try:
            ready = parent.recv() if parent.poll(self.start_timeout_s) else ("failed", "no answer in time")
        except (EOFError, OSError) as exc:
            ready = ("failed", f"the process ended: {_text(exc)}")
        if ready[0] != "ready":
            process.kill()
            process.join(5)
            parent.close()
            raise PlatformError(f"the shadow candidate process for {self.directory} did not start: {ready[1]}")
        self._process, self._conn = process, parent
        self.restarts += 1
        return cast(dict[str, Any], ready[1])

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    @property
    def dataset(self) -> str:
        return str(self.info["dataset"])

    @property
    def ensemble_version(self) -> str:
        return str(self.info["ensemble_version"])

    @property
    def config_hash(self) -> str:
        return str(self.info["config_hash"])

    @property
    def nice(self) -> int | None:
        return self.info.get("nice")

    def validate(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return validate_rows(rows, self.info["numeric"], self.info["categorical"],
                             float(self.info.get("max_abs_value", DEFAULT_MAX_ABS_VALUE)))

    def decide_validated(self, canonical: Sequence[Mapping[str, Any]]) -> DecisionBatch:
        """The child's decisions; raises `RefusalError` as the decider does, or `RuntimeError` when the child
        failed, died or hung (it is then replaced for the next call)."""
        with self._lock:
            if self._conn is None:
                self.info = self._start()
            conn = self._conn
            assert conn is not None
            try:
                conn.send([dict(row) for row in canonical])
                answer = conn.recv() if conn.poll(self.answer_timeout_s) else None
            except (EOFError, OSError) as exc:
                answer, problem = None, f"the candidate process died: {_text(exc)}"
            else:
                problem = f"the candidate process gave no answer within {self.answer_timeout_s:g}s (hung)"
            if answer is None:
                self._stop_process()
                raise RuntimeError(problem)
        if answer[0] == "ok":
            batch: DecisionBatch = answer[1]
            return batch
        if answer[0] == "refused":
            raise RefusalError(answer[1], {}, answer[2])
        raise RuntimeError(answer[1])

    def _stop_process(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            conn.close()
        if process is not None:
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)

    def close(self) -> None:
        with self._lock:
            self._stop_process()


# --- finding and opening the candidate ------------------------------------------------------------

def staging_bundle(paths: PlatformPaths, dataset: str, version: str) -> tuple[Path, str]:
    """(bundle directory, manifest SHA-256) of `version` of `dataset`, which must be in staging. The bundle
    is the one production would get: exported for the approval in force (reused when an intact one
    exists, verified file by file), so the version needs that approval (the bundle carries it). A
    version whose registry entry already records a manifest hash (it served before) must match it."""
    from ensemble_platform.governance.approvals import ReleaseRefused
    from ensemble_platform.governance.release import Release
    from ensemble_platform.tags import BUNDLE_TAGS

    release = Release(paths)
    registered = release.registry.ensemble_version(dataset, version)
    stage = release.registry.stage_state(dataset).stage_of(str(registered.version))
    if stage != "staging":
        raise PlatformError(f"{dataset} {version} is {stage or 'not staged'}, not in staging: only a staging "
                            f"version is shadowed (promote it --to staging first)")
    try:
        bundle = release.export(dataset, version)
    except ReleaseRefused as exc:
        raise PlatformError(f"{dataset} {version} cannot be shadowed: its bundle is the one production would get, "
                            f"and {exc}") from exc
    recorded = registered.tags.get(BUNDLE_TAGS[1])
    if recorded and recorded != bundle.manifest_sha256:
        raise PlatformError(f"the bundle of {dataset} {version} has manifest SHA-256 {bundle.manifest_sha256}, "
                            f"but the registry recorded {recorded}; nothing was loaded")
    return Path(bundle.path), bundle.manifest_sha256


def candidate_decider(directory: Path, manifest_sha256: str, *, member_timeout_s: float,
                      max_missing_share: float, min_members: int | None = None) -> Decider:
    """The candidate's decider from its verified bundle (its own min_members unless given)."""
    from ensemble_platform.service.runner import load_verified_bundle

    manifest, runtime, _ = load_verified_bundle(directory, manifest_sha256)
    listed = manifest.get("governance")
    governance: dict[str, Any] = listed if isinstance(listed, dict) else {}
    return Decider(runtime, manifest, member_timeout_s=member_timeout_s,
                   min_members=min_members or int(governance.get("min_members", GovernancePolicy().min_members)),
                   max_missing_share=max_missing_share, member_workers=CANDIDATE_MEMBER_WORKERS)


def open_shadow(paths: PlatformPaths, version: str, production: Decider, decision_log: DecisionLogLike, *,
                member_timeout_s: float, max_missing_share: float, isolation: Isolation = "process",
                max_queued_rows: int = DEFAULT_MAX_QUEUED_ROWS, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
                linger_s: float = DEFAULT_LINGER_S, nice: int = DEFAULT_NICE) -> ShadowScorer:
    """`serve --shadow VERSION`: the staging `version` of production's dataset, verified and loaded (in a
    process of its own unless `isolation="thread"`), scoring beside `production` into `decision_log`."""
    directory, manifest_sha256 = staging_bundle(paths, production.dataset, version)
    candidate: Candidate
    if isolation == "process":
        candidate = ProcessCandidate(directory, manifest_sha256, member_timeout_s=member_timeout_s,
                                     max_missing_share=max_missing_share, nice=nice)
    else:
        candidate = candidate_decider(directory, manifest_sha256, member_timeout_s=member_timeout_s,
                                      max_missing_share=max_missing_share)
    if candidate.dataset != production.dataset or candidate.ensemble_version == production.ensemble_version:
        candidate.close()
        raise PlatformError(f"the shadow must be another version of {production.dataset} than production "
                            f"{production.ensemble_version}; {directory} is {candidate.dataset} "
                            f"{candidate.ensemble_version}")
    return ShadowScorer(candidate, decision_log, manifest_sha256=manifest_sha256, max_queued_rows=max_queued_rows,
                        max_batch_rows=max_batch_rows, linger_s=linger_s,
                        nice=nice if isolation == "thread" else 0)  # a process is reniced as a whole


class ShadowCollector:
    """Prometheus collector of a scorer's counters, read at scrape time:
    `<prefix>_shadow_rows_total{outcome=submitted|scored|failed|dropped|record_failed}`,
    `<prefix>_shadow_queue_depth`, `<prefix>_shadow_busy_seconds_total`."""

    def __init__(self, scorer: ShadowScorer, prefix: str):
        self.scorer = scorer
        self.prefix = prefix

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.scorer.stats()
        rows = CounterMetricFamily(f"{self.prefix}_shadow_rows", "Production decisions sent to the shadow "
                                   f"candidate {stats.candidate_version}, by outcome", labels=["outcome"])
        for outcome, value in (("submitted", stats.submitted), ("scored", stats.scored), ("failed", stats.failed),
                               ("dropped", stats.dropped), ("record_failed", stats.record_failures)):
            rows.add_metric([outcome], value)
        yield rows
        yield GaugeMetricFamily(f"{self.prefix}_shadow_queue_depth", "Requests waiting for the shadow candidate",
                                value=stats.queue_depth)
        yield CounterMetricFamily(f"{self.prefix}_shadow_busy_seconds", "Time the shadow worker spent scoring "
                                  "and recording", value=stats.busy_seconds)
