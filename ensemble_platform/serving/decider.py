"""The decider: validated rows in, decisions out, with degraded modes (plain Python, no web framework).

Each member scores in its own worker pool with a per-member deadline. A member that raises, misses its
deadline, or returns NaN/inf/a value outside [0, 1] is excluded for the rows concerned, with the reason.
The remaining members are combined:

  SoftAverage, WeightedAverage, GreedySelection   weights renormalised over the remaining members (if
                                                  all weight was on excluded members: majority vote,
                                                  flagged `fallback`)
  Cascade, Router (lazy)                          each row calls only the members it needs (`skipped` says
                                                  why the others were not called); a called member failing
                                                  re-decides the batch eagerly: the full ensemble's weights
                                                  renormalised over the working members, degraded
  MajorityVote, Stacking (and any other combiner)  majority vote of the remaining members (`fallback`);
                                                  the stacker itself raising: majority vote of all
                                                  members (`fallback`)

Fewer working members than `min_members` for any row refuses the whole request (`RefusalError`).
`min_members` is capped at the number of served members (pruned members are not in the runtime): under
model selection (one served member) that member failing refuses the request.
Every degraded row is routed to human review.

Batch invariance (`ensemble.batching`): members, combiner and calibrator are evaluated on fixed blocks of
rows, exactly as `EnsembleRuntime.score` evaluates them, so a row gets the same bits alone or in any
batch, and with every member healthy the result equals `runtime.score(rows)` (the validated scores)
bit for bit at any batch size; replaying one stored row reproduces it exactly.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ensemble_platform.data.schema import LARGEST_USABLE
from ensemble_platform.ensemble.batching import blocked, member_probabilities
from ensemble_platform.ensemble.cost_aware import LazyCombiner
from ensemble_platform.ensemble.runtime import EnsembleRuntime, missing_shares
from ensemble_platform.ensemble.strategies import MajorityVote, SoftAverage, WeightedAverage
from ensemble_platform.errors import DataError, PlatformError
from ensemble_platform.evaluation.agreement import vote_agreement

# Numbers beyond this magnitude are refused: the tree members compute in float32, where a larger
# magnitude overflows to infinity (a smaller bound can be configured, never a larger one).
DEFAULT_MAX_ABS_VALUE = LARGEST_USABLE
# A number sent as text: plain decimal or exponent notation. Python's float() also takes "1_000",
# "infinity" and non-ASCII digits ("١٢"), which the training table's parser (pandas) does not.
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
DEFAULT_MEMBER_TIMEOUT_S = 2.0
DEFAULT_MAX_MISSING_SHARE = 0.5
MEMBER_WORKERS = 4
TIE_EPSILON = 1e-6

# Review reasons.
LOW_AGREEMENT = "low_agreement"
UNSEEN_CATEGORY = "unseen_category"
DEGRADED = "degraded"
MISSING_FEATURES = "missing_features"
REVIEW_REASONS = (LOW_AGREEMENT, UNSEEN_CATEGORY, DEGRADED, MISSING_FEATURES)

# Why a member was excluded (metrics label values).
MemberFailure = Literal["exception", "timeout", "non_finite", "out_of_range", "bad_shape", "excluded"]
# Why the combination fell back to a majority vote.
COMBINER_CANNOT_SKIP = "combiner_needs_every_member"
WEIGHT_ON_EXCLUDED = "all_weight_on_excluded_members"
COMBINER_FAILED = "combiner_failed"


class DecisionInputError(DataError):
    """A request row cannot be scored; names the row index and the column."""

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None):
        self.row = row
        self.column = column
        super().__init__(message)


class RefusalError(PlatformError):
    """Too few working members to decide: `reason` says which rows and why; `members` the member outcomes."""

    def __init__(self, reason: str, members: Mapping[str, MemberOutput], rows: Sequence[int]):
        self.reason = reason
        self.members = dict(members)
        self.rows = list(rows)
        super().__init__(reason)


@dataclass(frozen=True)
class MemberOutput:
    """One member's output for one row: a probability, or why there is none."""

    registered_model: str
    version: str
    probability: float | None
    error: str | None = None
    reason: MemberFailure | None = None


@dataclass(frozen=True)
class RowDecision:
    probability: float  # after the calibrator
    combined: float  # the combination before calibration
    decision: int
    agreement: float  # share of the voting members whose own vote matches the decision
    needs_review: bool
    review_reasons: tuple[str, ...]
    members: dict[str, MemberOutput]
    degraded: bool
    excluded: dict[str, str]  # member -> why it was excluded for this row
    fallback: bool
    fallback_reason: str | None
    unseen_category: bool
    missing_share: float
    # Lazy strategies (cascade, router): members not called for this row -> why (routed / exited at stage k).
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DecisionBatch:
    rows: list[RowDecision]
    features: list[dict[str, Any]]  # the validated rows as scored (canonical JSON values)
    seconds: float
    member_seconds: dict[str, float] = field(default_factory=dict)


# --- input validation ---------------------------------------------------------------------------

def _numeric_value(value: Any, row: int, column: str, max_abs: float) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DecisionInputError(f"row {row}, column {column!r}: expected a number, got {type(value).__name__} "
                                 f"{value!r:.50}", row=row, column=column)
    if isinstance(value, float) and math.isnan(value):
        return math.nan
    try:
        if isinstance(value, str) and not _NUMBER_TEXT.fullmatch(value.strip()):
            raise ValueError(value)
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        raise DecisionInputError(f"row {row}, column {column!r}: unparseable number {value!r:.50}",
                                 row=row, column=column) from None
    if not math.isfinite(number) or abs(number) > max_abs:
        raise DecisionInputError(f"row {row}, column {column!r}: {value!r:.50} is not a finite number within "
                                 f"+-{max_abs:g}", row=row, column=column)
    return number


def _categorical_value(value: Any, row: int, column: str) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise DecisionInputError(f"row {row}, column {column!r}: {value!r} is not a category", row=row, column=column)
    if not isinstance(value, (str, int, float)):
        raise DecisionInputError(f"row {row}, column {column!r}: expected text, got {type(value).__name__} "
                                 f"{value!r:.50}", row=row, column=column)
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")  # JSON's \ud800 escapes parse to text no record can store
        except UnicodeEncodeError:
            raise DecisionInputError(f"row {row}, column {column!r}: {value!r:.50} is not valid Unicode text "
                                     "(a lone surrogate)", row=row, column=column) from None
    return str(value)


def validate_rows(rows: Sequence[Mapping[str, Any]], numeric: Sequence[str], categorical: Sequence[str],
                  max_abs: float = DEFAULT_MAX_ABS_VALUE) -> list[dict[str, Any]]:
    """The rows as canonical feature dicts (numbers as float, NaN for missing; categories as text or None).
    Extra columns are dropped. Raises `DecisionInputError` naming the row index and the column."""
    max_abs = min(max_abs, LARGEST_USABLE)
    canonical: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DecisionInputError(f"row {index}: expected an object of column -> value, got {type(row).__name__}",
                                     row=index)
        clean: dict[str, Any] = {}
        for column in (*numeric, *categorical):
            if column not in row:
                raise DecisionInputError(f"row {index}: missing column {column!r}", row=index, column=column)
        for column in numeric:
            clean[column] = _numeric_value(row[column], index, column, max_abs)
        for column in categorical:
            clean[column] = _categorical_value(row[column], index, column)
        canonical.append(clean)
    return canonical


def features_frame(rows: Sequence[Mapping[str, Any]], numeric: Sequence[str],
                   categorical: Sequence[str]) -> pd.DataFrame:
    """Canonical rows as the frame the runtime scores (float64 numerics, object categoricals)."""
    data: dict[str, Any] = {c: np.array([r[c] for r in rows], dtype="float64") for c in numeric}
    data.update({c: pd.Series([r[c] for r in rows], dtype="object") for c in categorical})
    return pd.DataFrame(data, index=pd.RangeIndex(len(rows)))


def jsonable_features(row: Mapping[str, Any]) -> dict[str, Any]:
    """A canonical row with NaN as None (strict JSON)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def majority_vote(P: np.ndarray, threshold: float, tie_breaker: int | None) -> np.ndarray:
    """Positive vote share of the columns of P; exact ties are broken by column `tie_breaker` (or, without
    one, by the mean probability) moving the share by `TIE_EPSILON`."""
    votes = (P >= threshold).astype(float)
    share = votes.mean(axis=1)
    lean = votes[:, tie_breaker] == 1.0 if tie_breaker is not None else P.mean(axis=1) >= threshold
    return np.where(np.isclose(share, 0.5), 0.5 + np.where(lean, TIE_EPSILON, -TIE_EPSILON), share)


# --- the decider --------------------------------------------------------------------------------

# Why a lazy strategy could not decide a batch as planned (`Decider._decide_lazy`).
_MEMBER_TIMED_OUT = "timed_out"
_MEMBER_RAISED = "raised"
# Parts one request may be split into to find the rows a failing member fails on (eager path: calls
# of that member; lazy path: splits of the request). Enough for a few such rows in 10,000 (about 14
# halvings each); past it, the rest of the request is decided as one (a member down fails on every
# row and must not cost a call per row).
ISOLATION_BUDGET = 64


@dataclass
class _Isolation:
    """What one request may still spend finding the rows a failing member fails on."""

    budget: int  # calls (eager) and splits (lazy) left
    deadline: float  # monotonic time after which a lazy request is no longer split


class _SplitAbandoned(Exception):
    """A lazy request's split ran out of budget or time: it is decided whole instead."""


def _joined(first: DecisionBatch, second: DecisionBatch, started: float) -> DecisionBatch:
    """Two consecutive parts of one request's decisions as one batch (member seconds added up)."""
    seconds = {name: first.member_seconds.get(name, 0.0) + second.member_seconds.get(name, 0.0)
               for name in {**first.member_seconds, **second.member_seconds}}
    return DecisionBatch(first.rows + second.rows, first.features + second.features,
                         time.perf_counter() - started, seconds)

@dataclass
class _MemberRun:
    values: np.ndarray | None
    error: str | None
    reason: MemberFailure | None
    seconds: float
    # Rows the member raised on when retried in parts (`_isolated`): row -> (reason, message); its
    # `values` are NaN there and the member's own answers everywhere else.
    row_failures: dict[int, tuple[str, str]] | None = None


def _bad_shape(shape: tuple[int, ...] | None, rows: int) -> tuple[MemberFailure, str]:
    return "bad_shape", f"bad_shape: returned shape {shape} for {rows} rows"


class Decider:
    """Turns validated rows into decisions with one runtime (a verified bundle's) and its manifest."""

    def __init__(self, runtime: EnsembleRuntime, manifest: Mapping[str, Any], *,
                 member_timeout_s: float = DEFAULT_MEMBER_TIMEOUT_S, min_members: int = 2,
                 max_missing_share: float = DEFAULT_MAX_MISSING_SHARE, max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
                 member_workers: int = MEMBER_WORKERS):
        if member_timeout_s <= 0 or min_members < 1 or not 0 <= max_missing_share <= 1:
            raise ValueError(f"member_timeout_s must be > 0, min_members >= 1, max_missing_share in [0, 1] "
                             f"(got {member_timeout_s}, {min_members}, {max_missing_share})")
        self.runtime = runtime
        self.manifest = dict(manifest)
        self.member_timeout_s = member_timeout_s
        # Capped at the served members: a model-selection runtime (one member) refuses when it fails.
        self.min_members = min(min_members, len(runtime.members))
        self.max_missing_share = max_missing_share
        self.max_abs_value = max_abs_value
        listed = {m["name"]: m for m in self.manifest.get("members", [])}
        self.member_refs = {name: (str(listed.get(name, {}).get("registered_model", name)),
                                   str(listed.get(name, {}).get("version", "unregistered")))
                            for name in runtime.members}
        self._pools = {name: ThreadPoolExecutor(member_workers, thread_name_prefix=f"member-{name}")
                       for name in runtime.members}
        self._closed = threading.Event()
        runtime.scoring  # noqa: B018 (built now, at load, not on the first request)

    # -- identity --------------------------------------------------------------------------------

    @property
    def dataset(self) -> str:
        return str(self.manifest.get("dataset", self.runtime.dataset))

    @property
    def ensemble_version(self) -> str:
        return str(self.manifest.get("ensemble_version", self.runtime.version))

    @property
    def config_hash(self) -> str:
        return str(self.manifest.get("config_hash", ""))

    @property
    def features(self) -> list[str]:
        return self.runtime.schema.features

    def close(self) -> None:
        self._closed.set()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    # -- entry points ----------------------------------------------------------------------------

    def validate(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        schema = self.runtime.schema
        return validate_rows(rows, schema.numeric, schema.categorical, self.max_abs_value)

    def decide(self, rows: Sequence[Mapping[str, Any]],
               forced_exclusions: Sequence[Mapping[str, str]] | None = None) -> DecisionBatch:
        """Decisions for `rows` (validated here). `forced_exclusions[i]` (replay) excludes those members
        for row i with the given reason. Raises `DecisionInputError` or `RefusalError`."""
        return self.decide_validated(self.validate(rows), forced_exclusions)

    def decide_validated(self, canonical: Sequence[Mapping[str, Any]],
                         forced_exclusions: Sequence[Mapping[str, str]] | None = None) -> DecisionBatch:
        """`decide` for rows `validate` already returned."""
        isolation = _Isolation(ISOLATION_BUDGET, time.monotonic() + self.member_timeout_s)
        return self._decide(canonical, forced_exclusions, isolation, top=True)

    def _decide(self, canonical: Sequence[Mapping[str, Any]], forced_exclusions: Sequence[Mapping[str, str]] | None,
                isolation: _Isolation, top: bool) -> DecisionBatch:
        started = time.perf_counter()
        if not canonical:
            return DecisionBatch([], [], 0.0)
        schema = self.runtime.schema
        X = self.runtime.model_input(features_frame(canonical, schema.numeric, schema.categorical))
        unseen = self.runtime.unseen_categories(X)
        # Replay passes each row's recorded exclusions: none recorded is a lazy decision, decided lazily again.
        if self.runtime.lazy and not any(forced_exclusions or ()):
            lazy = self._decide_lazy(X, unseen, isolation.deadline)
            if isinstance(lazy, tuple):
                decisions, seconds = lazy
                return DecisionBatch(decisions, [jsonable_features(r) for r in canonical],
                                     time.perf_counter() - started, seconds)
            if not top and (lazy == _MEMBER_TIMED_OUT or time.monotonic() >= isolation.deadline):
                raise _SplitAbandoned  # a timeout is the whole request's
            if lazy == _MEMBER_RAISED and len(canonical) > 1:
                # A member failed on some row: each half is decided on its own (down to that row), so
                # one row never sends the others to the full ensemble.
                try:
                    return self._split(canonical, isolation, started)
                except (_SplitAbandoned, RefusalError):
                    if not top:
                        raise
                # Out of budget or time, or a row refused: the request is decided whole, eagerly (its
                # refusal names every short row of the request).
        runs = self._run_members(X, isolation)
        P, failures = self._member_matrix(runs, len(X), forced_exclusions)
        self._refuse_if_too_few(P, failures, runs)
        combined, fallback = self._combine(P, X)
        proba = blocked(lambda positions: self.runtime.calibrator.transform(combined[positions]), len(combined))
        decisions = self._rows(P, failures, combined, fallback, proba, unseen, X)
        return DecisionBatch(decisions, [jsonable_features(r) for r in canonical], time.perf_counter() - started,
                             {name: run.seconds for name, run in runs.items()})

    # -- lazy strategies (cascade, router) ---------------------------------------------------------

    def _split(self, canonical: Sequence[Mapping[str, Any]], isolation: _Isolation, started: float) -> DecisionBatch:
        if isolation.budget <= 0 or time.monotonic() >= isolation.deadline:
            raise _SplitAbandoned
        isolation.budget -= 1
        half = len(canonical) // 2
        return _joined(self._decide(canonical[:half], None, isolation, top=False),
                       self._decide(canonical[half:], None, isolation, top=False), started)

    def _decide_lazy(self, X: pd.DataFrame, unseen: np.ndarray,
                     deadline: float) -> tuple[list[RowDecision], dict[str, float]] | str:
        """Decisions calling each member only on the rows that need it; else why not: a called member
        timed out (`_MEMBER_TIMED_OUT`: the batch is decided eagerly, rows get the full ensemble over
        the working members, degraded) or failed on some rows (`_MEMBER_RAISED`: see `decide_validated`)."""
        combiner = self.runtime.combiner
        assert isinstance(combiner, LazyCombiner)
        names, models = list(self.runtime.members), list(self.runtime.members.values())
        P = np.full((len(X), len(names)), np.nan)
        seconds = dict.fromkeys(names, 0.0)
        failed: str | None = None

        def fetch(j: int, rows: np.ndarray) -> np.ndarray:
            nonlocal failed
            run = self._run_member(names[j], models[j], X.iloc[rows], deadline)
            seconds[names[j]] += run.seconds
            values = run.values
            if (values is None or values.shape != (len(rows),) or not np.all(np.isfinite(values))
                    or np.any((values < 0) | (values > 1))):
                failed = _MEMBER_TIMED_OUT if run.reason == "timeout" or failed == _MEMBER_TIMED_OUT else _MEMBER_RAISED
                return np.full(len(rows), 0.5)  # placeholder: the batch is decided another way
            P[rows, j] = values
            return values

        result = combiner.lazy_proba(fetch, len(X), X if combiner.needs_features else None)
        if failed is not None:
            return failed
        combined = result.proba
        proba = blocked(lambda positions: self.runtime.calibrator.transform(combined[positions]), len(combined))
        skipped = [{name: combiner.route_reason(int(result.route[i]), names)
                    for j, name in enumerate(names) if not result.called[i, j]} for i in range(len(X))]
        none: list[str | None] = [None] * len(X)
        return self._rows(P, [{} for _ in range(len(X))], combined, none, proba, unseen, X, skipped), seconds

    def _run_member(self, name: str, model: Any, X: pd.DataFrame, deadline: float) -> _MemberRun:
        """One member on some rows, in its pool, by the request's deadline."""
        def timed() -> tuple[np.ndarray, float]:
            begun = time.perf_counter()
            values = member_probabilities(model, X)
            return values, time.perf_counter() - begun

        future = self._pools[name].submit(timed)
        try:
            values, seconds = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            future.cancel()
            return self._timed_out()
        except Exception as exc:  # a member's own failure: the batch is decided eagerly, degraded
            return _MemberRun(None, f"exception: {type(exc).__name__}: {exc}"[:500], "exception", 0.0)
        return _MemberRun(values, None, None, seconds)

    # -- members ---------------------------------------------------------------------------------

    def _timed_out(self) -> _MemberRun:
        return _MemberRun(None, f"timeout: no answer within {self.member_timeout_s:g}s", "timeout",
                          self.member_timeout_s)

    def _run_members(self, X: pd.DataFrame, isolation: _Isolation) -> dict[str, _MemberRun]:
        try:  # preprocessing shared by members, once; failing, each member preprocesses (and fails) on its own
            inputs = self.runtime.scoring.preprocess(X)
        except Exception:
            inputs = {}

        def timed(name: str, model: Any) -> tuple[np.ndarray, float]:
            begun = time.perf_counter()
            values = member_probabilities(model, X, inputs.get(name))
            return values, time.perf_counter() - begun

        submitted = time.monotonic()
        futures: dict[str, Future] = {name: self._pools[name].submit(timed, name, model)
                                      for name, model in self.runtime.members.items()}
        runs: dict[str, _MemberRun] = {}
        for name, future in futures.items():
            remaining = max(0.0, submitted + self.member_timeout_s - time.monotonic())
            try:
                values, seconds = future.result(timeout=remaining)
            except TimeoutError:
                future.cancel()
                runs[name] = self._timed_out()
                continue
            except Exception as exc:  # a member's own failure: exclude it where it fails, keep serving
                run = _MemberRun(None, f"exception: {type(exc).__name__}: {exc}"[:500], "exception",
                                 time.monotonic() - submitted)
                runs[name] = self._isolated(name, self.runtime.members[name], X, run,
                                            submitted + self.member_timeout_s, isolation)
                continue
            runs[name] = _MemberRun(values, None, None, seconds)
        return runs

    def _isolated(self, name: str, model: Any, X: pd.DataFrame, failed: _MemberRun, deadline: float,
                  isolation: _Isolation) -> _MemberRun:
        """A member that raised on several rows, asked again in halves (by the same deadline) down to
        the rows it raises on: it is excluded for those rows only, so no row's decision depends on the
        other rows of its request. Rows left when the deadline passes or the request's `ISOLATION_BUDGET`
        is spent keep the first failure (a member down fails everywhere); a retry that misses the
        deadline is a timeout for its rows."""
        if len(X) < 2:
            return failed
        begun = time.perf_counter()
        values = np.full(len(X), np.nan)
        row_failures: dict[int, tuple[str, str]] = {}
        pending = [np.arange(len(X) // 2, len(X)), np.arange(len(X) // 2)]
        while pending:
            rows = pending.pop()
            if isolation.budget <= 0 or time.monotonic() >= deadline:  # no calls or time left: its first failure
                run = _MemberRun(None, failed.error, failed.reason, 0.0)
            else:
                isolation.budget -= 1
                run = self._run_member(name, model, X.iloc[rows], deadline)
            if run.values is not None and run.values.shape == (len(rows),):
                values[rows] = run.values
            elif run.reason == "exception" and len(rows) > 1 and isolation.budget > 0:
                half = len(rows) // 2
                pending += [rows[half:], rows[:half]]
            else:
                why = ((str(run.reason), str(run.error)) if run.values is None
                       else _bad_shape(run.values.shape, len(rows)))
                row_failures.update(dict.fromkeys(rows.tolist(), why))
        # Its seconds: the first call's and every retry's (the member's whole cost to this request).
        return _MemberRun(values, failed.error, failed.reason, failed.seconds + time.perf_counter() - begun,
                          row_failures)

    def _member_matrix(self, runs: Mapping[str, _MemberRun], n: int,
                       forced: Sequence[Mapping[str, str]] | None) -> tuple[np.ndarray, list[dict[str, tuple[str, str]]]]:
        """(P with NaN where a member is excluded, per row: member -> (reason code, message))."""
        P = np.full((n, len(runs)), np.nan)
        failures: list[dict[str, tuple[str, str]]] = [{} for _ in range(n)]
        for j, (name, run) in enumerate(runs.items()):
            values = run.values
            if values is not None and values.shape != (n,):
                reason, message = _bad_shape(values.shape, n)
                run = _MemberRun(None, message, reason, run.seconds)
                values = None
            if values is None:
                for row in failures:
                    row[name] = (str(run.reason), str(run.error))
                continue
            raised = run.row_failures or {}
            for i in range(n):
                if i in raised:
                    failures[i][name] = raised[i]
                    continue
                value = float(values[i])
                if not math.isfinite(value):
                    failures[i][name] = ("non_finite", f"non_finite: returned {value!r}")
                elif not 0.0 <= value <= 1.0:
                    failures[i][name] = ("out_of_range", f"out_of_range: returned {value!r}, outside [0, 1]")
                else:
                    P[i, j] = value
        for i, excluded in enumerate(forced or []):
            for name, why in excluded.items():
                if name in runs:
                    P[i, list(runs).index(name)] = np.nan
                    failures[i][name] = ("excluded", str(why))
        return P, failures

    def _refuse_if_too_few(self, P: np.ndarray, failures: list[dict[str, tuple[str, str]]],
                           runs: Mapping[str, _MemberRun]) -> None:
        working = np.isfinite(P).sum(axis=1)
        short = np.flatnonzero(working < self.min_members)
        if not len(short):
            return
        first = int(short[0])
        why = "; ".join(f"{name}: {message}" for name, (_, message) in failures[first].items())
        reason = (f"{len(short)} of {len(P)} row(s) (first: row {first}) have {int(working[first])} working "
                  f"member(s), fewer than min_members={self.min_members}: {why}")
        members = {name: MemberOutput(*self.member_refs[name], probability=None if name in failures[first]
                                      else float(P[first, j]), error=failures[first].get(name, (None, None))[1],
                                      reason=failures[first].get(name, (None, None))[0])  # type: ignore[arg-type]
                   for j, name in enumerate(runs)}
        raise RefusalError(reason, members, [int(i) for i in short])

    # -- combining -------------------------------------------------------------------------------

    def _combine(self, P: np.ndarray, X: pd.DataFrame) -> tuple[np.ndarray, list[str | None]]:
        """(combined probability before calibration, per row: the fallback reason or None)."""
        n = len(P)
        combined = np.full(n, np.nan)
        fallback: list[str | None] = [None] * n
        available = np.isfinite(P)
        patterns: dict[tuple[int, ...], list[int]] = {}
        for i in range(n):
            patterns.setdefault(tuple(np.flatnonzero(available[i]).tolist()), []).append(i)
        for columns, rows in patterns.items():
            idx = np.array(rows)
            rows_X = X if len(idx) == len(X) else X.iloc[idx]  # idx is every row, in order: X itself
            values, reason = self._combine_group(P[np.ix_(idx, np.array(columns, dtype=int))], rows_X, columns)
            combined[idx] = values
            for i in rows:
                fallback[i] = reason
        return combined, fallback

    def _combine_group(self, P: np.ndarray, X: pd.DataFrame, columns: tuple[int, ...]) -> tuple[np.ndarray, str | None]:
        combiner = self.runtime.combiner
        if len(columns) == len(self.runtime.members):
            try:
                needs = combiner.needs_features  # the combiner ignores X otherwise: no per-block copy
                values = blocked(lambda pos: self.runtime.combined_proba(P[pos], X.iloc[pos] if needs else X), len(P))
                if np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1)):
                    return values, None
                problem = "returned values that are not probabilities"
            except Exception as exc:  # the stacker itself failed: vote instead, flagged
                problem = f"{type(exc).__name__}: {exc}"
            return self._vote(P, columns), f"{COMBINER_FAILED}: {problem}"[:300]
        if isinstance(combiner, (WeightedAverage, LazyCombiner)):  # GreedySelection; lazy: the full ensemble
            full = combiner.weights_ if isinstance(combiner, WeightedAverage) else combiner.full_weights()
            weights = np.asarray(full, dtype=float)[list(columns)]
            total = float(weights.sum())
            if total <= 0:
                return self._vote(P, columns), WEIGHT_ON_EXCLUDED
            normalised = weights / total
            return blocked(lambda pos: (P[pos] * normalised).sum(axis=1), len(P)), None
        if isinstance(combiner, SoftAverage):
            return blocked(lambda pos: P[pos].mean(axis=1), len(P)), None
        return self._vote(P, columns), COMBINER_CANNOT_SKIP

    def _vote(self, P: np.ndarray, columns: tuple[int, ...]) -> np.ndarray:
        combiner = self.runtime.combiner
        threshold = self.runtime.decision_threshold
        tie_breaker = None
        if isinstance(combiner, MajorityVote):
            threshold = combiner.threshold
            original = getattr(combiner, "tie_breaker_", None)
            tie_breaker = columns.index(original) if original in columns else None
        return majority_vote(P, threshold, tie_breaker)

    # -- per-row documents -----------------------------------------------------------------------

    def _rows(self, P: np.ndarray, failures: list[dict[str, tuple[str, str]]], combined: np.ndarray,
              fallback: list[str | None], proba: np.ndarray, unseen: np.ndarray, X: pd.DataFrame,
              skipped: list[dict[str, str]] | None = None) -> list[RowDecision]:
        threshold = self.runtime.decision_threshold
        names = list(self.runtime.members)
        missing_share = missing_shares(X)
        rows: list[RowDecision] = []
        for i in range(len(P)):
            voting = np.isfinite(P[i])
            agreement = float(vote_agreement(P[i:i + 1, voting], proba[i:i + 1], threshold)[0])
            degraded = bool(failures[i])
            reasons = [reason for reason, flagged in (
                (LOW_AGREEMENT, agreement < self.runtime.agreement_threshold),
                (UNSEEN_CATEGORY, bool(unseen[i])),
                (DEGRADED, degraded),
                (MISSING_FEATURES, missing_share[i] > self.max_missing_share),
            ) if flagged]
            members = {name: MemberOutput(*self.member_refs[name],
                                          probability=float(P[i, j]) if voting[j] else None,
                                          error=failures[i][name][1] if name in failures[i] else None,
                                          reason=failures[i][name][0] if name in failures[i] else None)  # type: ignore[arg-type]
                       for j, name in enumerate(names) if not skipped or name not in skipped[i]}
            rows.append(RowDecision(
                probability=float(proba[i]), combined=float(combined[i]), decision=int(proba[i] >= threshold),
                agreement=agreement, needs_review=bool(reasons), review_reasons=tuple(reasons), members=members,
                degraded=degraded, excluded={name: message for name, (_, message) in failures[i].items()},
                fallback=fallback[i] is not None, fallback_reason=fallback[i], unseen_category=bool(unseen[i]),
                missing_share=float(missing_share[i]), skipped=dict(skipped[i]) if skipped else {},
            ))
        return rows
