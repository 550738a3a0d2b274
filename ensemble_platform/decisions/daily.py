"""One UTC day of one dataset's decision log in numbers: volume, the agreement distribution against the
validated baseline, review rate and SLA, degraded / fallback / refusal rates, per-member error rates, the
segments most often sent to review, and the alerts the dataset's `operations:` policy raises on them.

Pure functions over an iterable of stored entries (no Dagster, no files): `day_entries` streams what a
summary needs from a `DecisionLog` by its created_at index, `daily_summary` folds them. Memory stays
bounded by the day's review items and the distinct agreement values, segments and members, never by the
number of decisions.

Which rows count: `decision`, `refusal` and `review_item` entries of `dataset` created on `day` (UTC), and
the `review_resolve` entries (any day up to `now`) of that day's review items. Every other kind is ignored.

The review SLA of a day is that of the items opened that day, as of `now`: an item resolved later than
`review_sla_hours` after it was opened, or still unresolved and older than that, is a breach.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict

from ensemble_platform.decisions.log import DecisionLog
from ensemble_platform.decisions.records import (
    AGREEMENT,
    BATCH_SIZE,
    CREATED_AT,
    DATASET,
    DECISION_ID,
    DEGRADED,
    ENSEMBLE_VERSION,
    FALLBACK,
    FEATURES,
    ID,
    KIND,
    KIND_DECISION,
    KIND_REFUSAL,
    KIND_REVIEW_ITEM,
    KIND_REVIEW_RESOLVE,
    MEMBER_PROBABILITY,
    MEMBER_REASON,
    MEMBERS,
    REASONS,
    REVIEW_REASONS,
    ROW_INDEX,
    SEGMENT,
    UNSEEN_CATEGORY,
    stored_time,
)
from ensemble_platform.errors import PlatformError
from ensemble_platform.policy import OperationsPolicy
from ensemble_platform.serving.decider import LOW_AGREEMENT

DAY_KINDS: Final = (KIND_DECISION, KIND_REFUSAL, KIND_REVIEW_ITEM)
QUANTILES: Final = (0.1, 0.25, 0.5, 0.75, 0.9)
LEVEL_DIGITS: Final = 6  # vote shares are compared with the baseline's levels at this precision
TOP_SEGMENTS: Final = 10
MAX_SEGMENTS: Final = 10_000  # distinct segments tracked; further values are counted under OTHER_SEGMENT
OTHER_SEGMENT: Final = "(other)"
UNKNOWN_REASON: Final = "unknown"

AlertKind = Literal["agreement_drop", "fallback_rate", "refusal_rate", "sla_breaches"]


class DecisionLogReadError(PlatformError):
    """A stored entry lacks a field the daily summary reads, or holds a value of the wrong type."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AgreementBaseline(_Frozen):
    """What the validated version's agreement report says about its holdout (`agreement.json`)."""

    ensemble_version: str
    mean: float  # mean vote share
    review_share: float | None = None  # share of holdout rows below the review threshold
    review_threshold: float | None = None
    levels: dict[str, float] = {}  # vote share (LEVEL_DIGITS decimals, as text) -> share of holdout rows
    source: str | None = None  # where it was read from


class AgreementLevel(_Frozen):
    vote_share: float
    decisions: int
    share: float
    baseline_share: float | None  # None: no baseline, or the level is not in it


class VersionAgreement(_Frozen):
    """The agreement of one ensemble version's decisions of the day, against its validated baseline."""

    ensemble_version: str
    decisions: int
    mean: float | None
    quantiles: dict[str, float]  # "p10" ... "p90", nearest rank
    low_agreement_share: float | None  # share of decisions routed to review for low agreement
    levels: list[AgreementLevel]
    baseline_mean: float | None
    baseline_review_share: float | None
    drop: float | None  # baseline_mean - mean (positive: the members agree less than on the holdout)


class Volume(_Frozen):
    decisions: int
    requests: int  # requests decided (their row 0) plus requests refused
    refusals: int  # refused requests
    refused_rows: int
    review_items: int


class Rates(_Frozen):
    """Shares of the day's decisions (refusal rate: of its requests); None when there is nothing to divide."""

    review_rate: float | None
    degraded_rate: float | None
    fallback_rate: float | None
    unseen_category_rate: float | None
    refusal_rate: float | None


class ReviewSla(_Frozen):
    """The SLA of the review items opened on the day, as of `as_of`."""

    sla_hours: float
    as_of: str
    items: int
    resolved: int
    resolved_within_sla: int
    resolved_late: int
    unresolved: int
    unresolved_past_sla: int
    breaches: int  # resolved_late + unresolved_past_sla
    median_resolution_hours: float | None
    p90_resolution_hours: float | None


class MemberErrors(_Frozen):
    member: str
    decisions: int  # decisions the member was part of
    errors: int  # ... in which it gave no probability (excluded)
    error_rate: float
    reasons: dict[str, int]  # failure reason (exception, timeout, ...) -> count


class SegmentReview(_Frozen):
    segment: str
    review_items: int
    share_of_reviews: float
    decisions: int | None  # decisions of the segment (None: the decisions do not store the segment column)
    review_rate: float | None


class Alert(_Frozen):
    kind: AlertKind
    subject: str | None = None  # the ensemble version of an agreement drop
    value: float
    limit: float
    message: str

    @property
    def key(self) -> str:
        """Names the breach within its dataset and day (what the sensor acts on once)."""
        return self.kind if self.subject is None else f"{self.kind}:{self.subject}"


class DailySummary(_Frozen):
    dataset: str
    day: str  # YYYY-MM-DD, UTC
    as_of: str  # `now`: the SLA and the day's completeness are as of this moment
    complete: bool  # the day had ended at `as_of`
    policy: OperationsPolicy
    volume: Volume
    rates: Rates
    agreement_mean: float | None  # over every version's decisions
    agreement: list[VersionAgreement]  # one per ensemble version, by version
    review_reasons: dict[str, int]
    sla: ReviewSla
    members: list[MemberErrors]
    top_segments: list[SegmentReview]
    judged: bool  # enough decisions (policy.min_daily_decisions) to alert on
    alerts: list[Alert]
    notes: list[str]

    def headline(self) -> dict[str, float | int]:
        """The numbers worth plotting across days (None values left out)."""
        worst_drop = max((v.drop for v in self.agreement if v.drop is not None), default=None)
        numbers: dict[str, float | int | None] = {
            "decisions": self.volume.decisions, "requests": self.volume.requests,
            "refusals": self.volume.refusals, "refused_rows": self.volume.refused_rows,
            "review_items": self.volume.review_items, **self.rates.model_dump(),
            "agreement_mean": self.agreement_mean, "agreement_drop": worst_drop,
            "sla_breaches": self.sla.breaches, "unresolved_past_sla": self.sla.unresolved_past_sla,
            "median_resolution_hours": self.sla.median_resolution_hours, "alerts": len(self.alerts),
        }
        return {k: v for k, v in numbers.items() if v is not None}


Baselines = Mapping[str, AgreementBaseline] | Callable[[str], AgreementBaseline | None]


# --- reading -------------------------------------------------------------------------------------

def day_bounds(day: date) -> tuple[str, str]:
    """The created_at text bounds of a UTC day, for `DecisionLog.entries_between`."""
    return day.isoformat(), (day + timedelta(days=1)).isoformat()


def day_entries(log: DecisionLog, day: date, now: datetime) -> Iterator[dict[str, Any]]:
    """What `daily_summary` reads, by the created_at index: the day's decisions, refusals and review items,
    then the resolutions recorded from the day's start up to `now`'s day."""
    start, end = day_bounds(day)
    yield from log.entries_between(start, end, DAY_KINDS)
    yield from log.entries_between(start, day_bounds(max(day, _utc(now).date()))[1], (KIND_REVIEW_RESOLVE,))


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _field(entry: Mapping[str, Any], name: str) -> Any:
    if name not in entry:
        raise DecisionLogReadError(f"decision log entry {entry.get(ID)!r} ({entry.get(KIND)}) has no field {name!r}")
    return entry[name]


def _number(entry: Mapping[str, Any], name: str) -> float:
    value = _field(entry, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DecisionLogReadError(f"decision log entry {entry.get(ID)!r}: field {name!r} must be a finite number, "
                                   f"got {value!r}")
    return float(value)


def _segment_of(features: Mapping[str, Any], column: str) -> str | None:
    """As the service names a review item's segment (`service.recording`): the value as text; none for null/NaN."""
    value = features.get(column)
    return None if value is None or value != value else str(value)


# --- folding -------------------------------------------------------------------------------------

@dataclass
class _VersionTally:
    agreement: Counter[float] = field(default_factory=Counter)  # exact agreement value -> decisions
    low_agreement: int = 0


@dataclass
class _DayTally:
    """Counts of one day, folded entry by entry."""

    dataset: str
    day: date
    now: datetime
    segment_column: str | None
    decisions: int = 0
    requests: int = 0
    refusals: int = 0
    refused_rows: int = 0
    degraded: int = 0
    fallback: int = 0
    unseen: int = 0
    versions: dict[str, _VersionTally] = field(default_factory=dict)
    member_seen: Counter[str] = field(default_factory=Counter)
    member_errors: dict[str, Counter[str]] = field(default_factory=dict)
    decision_segments: Counter[str] = field(default_factory=Counter)
    segments_stored: bool = False
    review_segments: Counter[str] = field(default_factory=Counter)
    review_reasons: Counter[str] = field(default_factory=Counter)
    opened: dict[str, datetime] = field(default_factory=dict)  # review item's decision id -> opened at
    resolved: dict[str, datetime] = field(default_factory=dict)  # decision id -> first resolution at

    def add(self, entry: Mapping[str, Any]) -> None:
        kind = entry.get(KIND)
        if kind == KIND_REVIEW_RESOLVE:
            self._resolution(entry)
            return
        if kind not in DAY_KINDS or entry.get(DATASET) != self.dataset:
            return
        if stored_time(str(_field(entry, CREATED_AT))).date() != self.day:
            return
        if kind == KIND_DECISION:
            self._decision(entry)
        elif kind == KIND_REFUSAL:
            self.refusals += 1
            self.requests += 1
            self.refused_rows += int(_number(entry, BATCH_SIZE))
        else:
            self._review_item(entry)

    def _decision(self, entry: Mapping[str, Any]) -> None:
        self.decisions += 1
        self.requests += int(_number(entry, ROW_INDEX)) == 0  # each request's batch has one row 0
        self.degraded += bool(_field(entry, DEGRADED))
        self.fallback += bool(_field(entry, FALLBACK))
        self.unseen += bool(entry.get(UNSEEN_CATEGORY, False))
        version = self.versions.setdefault(str(_field(entry, ENSEMBLE_VERSION)), _VersionTally())
        version.agreement[_number(entry, AGREEMENT)] += 1
        version.low_agreement += LOW_AGREEMENT in (_field(entry, REVIEW_REASONS) or ())
        members = _field(entry, MEMBERS)
        if not isinstance(members, Mapping):
            raise DecisionLogReadError(f"decision log entry {entry.get(ID)!r}: field {MEMBERS!r} must be a mapping")
        for name, member in sorted(members.items()):
            self.member_seen[name] += 1
            if member.get(MEMBER_PROBABILITY) is None:
                self.member_errors.setdefault(name, Counter())[str(member.get(MEMBER_REASON) or UNKNOWN_REASON)] += 1
        if self.segment_column is not None:
            features = entry.get(FEATURES) or {}
            if self.segment_column in features:
                self.segments_stored = True
                self._count_segment(self.decision_segments, _segment_of(features, self.segment_column))

    def _review_item(self, entry: Mapping[str, Any]) -> None:
        decision_id = str(_field(entry, DECISION_ID))
        if decision_id in self.opened:
            return
        self.opened[decision_id] = stored_time(str(entry[CREATED_AT]))
        self.review_reasons.update(str(r) for r in (_field(entry, REASONS) or ()))
        segment = entry.get(SEGMENT)
        self._count_segment(self.review_segments, None if segment is None else str(segment))

    def _resolution(self, entry: Mapping[str, Any]) -> None:
        decision_id = str(entry.get(DECISION_ID))
        at = stored_time(str(_field(entry, CREATED_AT)))
        if decision_id in self.opened and decision_id not in self.resolved and at <= self.now:
            self.resolved[decision_id] = at

    @staticmethod
    def _count_segment(counter: Counter[str], segment: str | None) -> None:
        if segment is None:
            return
        if segment not in counter and len(counter) >= MAX_SEGMENTS:
            segment = OTHER_SEGMENT
        counter[segment] += 1


def tally(entries: Iterable[Mapping[str, Any]], day: date, dataset: str, now: datetime,
          segment_column: str | None = None) -> _DayTally:
    day_tally = _DayTally(dataset, day, _utc(now), segment_column)
    for entry in entries:
        day_tally.add(entry)
    return day_tally


# --- the numbers ---------------------------------------------------------------------------------

def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _nearest_rank(counts: Mapping[float, int], q: float) -> float:
    """The nearest-rank quantile of values given with their counts (no interpolation: an observed value)."""
    total = sum(counts.values())
    rank = max(1, math.ceil(round(q * total, 9)))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    raise ValueError("no values")


def _mean(counts: Mapping[float, int]) -> float | None:
    total = sum(counts.values())
    return math.fsum(value * n for value, n in sorted(counts.items())) / total if total else None


def level_key(vote_share: float) -> str:
    return f"{vote_share:.{LEVEL_DIGITS}f}"


def _levels(counts: Mapping[float, int], baseline: AgreementBaseline | None) -> list[AgreementLevel]:
    merged: Counter[str] = Counter()
    for value, n in counts.items():
        merged[level_key(value)] += n
    total = sum(merged.values())
    known = baseline.levels if baseline else {}
    return [AgreementLevel(vote_share=float(key), decisions=merged[key], share=merged[key] / total if total else 0.0,
                           baseline_share=known.get(key))
            for key in sorted(set(merged) | set(known), key=float)]


def _version_agreement(version: str, tallied: _VersionTally, baseline: AgreementBaseline | None) -> VersionAgreement:
    decisions = sum(tallied.agreement.values())
    mean = _mean(tallied.agreement)
    return VersionAgreement(
        ensemble_version=version, decisions=decisions, mean=mean,
        quantiles={f"p{round(q * 100)}": _nearest_rank(tallied.agreement, q) for q in QUANTILES} if decisions else {},
        low_agreement_share=_share(tallied.low_agreement, decisions), levels=_levels(tallied.agreement, baseline),
        baseline_mean=baseline.mean if baseline else None,
        baseline_review_share=baseline.review_share if baseline else None,
        drop=baseline.mean - mean if baseline and mean is not None else None,
    )


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600


def review_sla(opened: Mapping[str, datetime], resolved: Mapping[str, datetime], now: datetime,
               sla_hours: float) -> ReviewSla:
    """Resolution times and breaches of the items `opened` (decision id -> opened at), as of `now`."""
    limit = sla_hours * 3600
    durations: list[float] = []
    past = 0
    for decision_id, at in opened.items():
        if decision_id in resolved:
            durations.append(max(0.0, (resolved[decision_id] - at).total_seconds()))
        else:
            past += (now - at).total_seconds() > limit
    late = sum(d > limit for d in durations)
    counts = Counter(durations)
    return ReviewSla(
        sla_hours=sla_hours, as_of=now.isoformat(), items=len(opened), resolved=len(durations),
        resolved_within_sla=len(durations) - late, resolved_late=late, unresolved=len(opened) - len(durations),
        unresolved_past_sla=past, breaches=late + past,
        median_resolution_hours=_hours(_nearest_rank(counts, 0.5) if durations else None),
        p90_resolution_hours=_hours(_nearest_rank(counts, 0.9) if durations else None),
    )


def _member_errors(day: _DayTally) -> list[MemberErrors]:
    rows = []
    for name in sorted(day.member_seen):
        reasons = day.member_errors.get(name, Counter())
        errors = sum(reasons.values())
        rows.append(MemberErrors(member=name, decisions=day.member_seen[name], errors=errors,
                                 error_rate=errors / day.member_seen[name], reasons=dict(sorted(reasons.items()))))
    return rows


def _top_segments(day: _DayTally) -> list[SegmentReview]:
    reviews = sum(day.review_segments.values())
    ranked = sorted(day.review_segments.items(), key=lambda item: (-item[1], item[0]))[:TOP_SEGMENTS]
    rows = []
    for segment, count in ranked:
        decisions = day.decision_segments.get(segment) if day.segments_stored else None
        rows.append(SegmentReview(segment=segment, review_items=count, share_of_reviews=count / reviews,
                                  decisions=decisions, review_rate=_share(count, decisions) if decisions else None))
    return rows


def _rate_alerts(rates: Rates, policy: OperationsPolicy,
                 kinds: tuple[AlertKind, ...] = ("fallback_rate", "refusal_rate")) -> list[Alert]:
    limits: dict[AlertKind, tuple[float | None, float, str]] = {
        "fallback_rate": (rates.fallback_rate, policy.max_fallback_rate, "share of fallback decisions"),
        "refusal_rate": (rates.refusal_rate, policy.max_refusal_rate, "share of refused requests"),
    }
    return [Alert(kind=kind, value=value, limit=limit, message=f"{what} is {value:.4f}, above the limit {limit:g}")
            for kind in kinds for value, limit, what in [limits[kind]] if value is not None and value > limit]


def alerts(policy: OperationsPolicy, decisions: int, rates: Rates, agreement: Iterable[VersionAgreement],
           sla: ReviewSla, requests: int | None = None) -> list[Alert]:
    """What crosses the policy's limits. Nothing on a day with fewer than `min_daily_decisions` decisions,
    and no agreement alert for a version with fewer decisions than that; except the refusal rate, judged
    on `requests` (decided and refused) reaching that number: an outage refuses everything and decides
    nothing, and is the day that alert is for."""
    if decisions < policy.min_daily_decisions:
        return _rate_alerts(rates, policy, ("refusal_rate",)) if (requests or 0) >= policy.min_daily_decisions else []
    found: list[Alert] = []
    for version in agreement:
        if (version.drop is not None and version.mean is not None and version.baseline_mean is not None
                and version.decisions >= policy.min_daily_decisions and version.drop > policy.agreement_drop):
            found.append(Alert(
                kind="agreement_drop", subject=version.ensemble_version, value=version.mean,
                limit=version.baseline_mean - policy.agreement_drop,
                message=f"mean agreement of {version.ensemble_version} is {version.mean:.4f}, {version.drop:.4f} "
                        f"below its validated baseline {version.baseline_mean:.4f} (limit: a drop of "
                        f"{policy.agreement_drop:g}); falling agreement is the first sign of member drift"))
    found += _rate_alerts(rates, policy)
    if sla.breaches > policy.max_sla_breaches:
        found.append(Alert(kind="sla_breaches", value=sla.breaches, limit=policy.max_sla_breaches,
                           message=f"{sla.breaches} review item(s) of the day breached the {sla.sla_hours:g} h SLA "
                                   f"({sla.resolved_late} resolved late, {sla.unresolved_past_sla} still open); "
                                   f"at most {policy.max_sla_breaches} allowed"))
    return found


def summarise(day: _DayTally, baselines: Baselines, policy: OperationsPolicy) -> DailySummary:
    lookup = baselines.get if isinstance(baselines, Mapping) else baselines
    versions = [_version_agreement(v, day.versions[v], lookup(v)) for v in sorted(day.versions)]
    every = sum((t.agreement for t in day.versions.values()), Counter())
    rates = Rates(review_rate=_share(len(day.opened), day.decisions), degraded_rate=_share(day.degraded, day.decisions),
                  fallback_rate=_share(day.fallback, day.decisions),
                  unseen_category_rate=_share(day.unseen, day.decisions),
                  refusal_rate=_share(day.refusals, day.requests))
    sla = review_sla(day.opened, day.resolved, day.now, policy.review_sla_hours)
    notes = [f"no validated agreement baseline for ensemble version {v.ensemble_version}: its agreement is "
             f"reported, not judged" for v in versions if v.baseline_mean is None]
    judged = day.decisions >= policy.min_daily_decisions
    if not judged:
        notes.append(f"{day.decisions} decision(s): fewer than min_daily_decisions ({policy.min_daily_decisions}); "
                     f"reported, not alerted on (but for the refusal rate, judged on requests)")
    complete = day.now >= datetime.combine(day.day + timedelta(days=1), datetime.min.time(), UTC)
    return DailySummary(
        dataset=day.dataset, day=day.day.isoformat(), as_of=day.now.isoformat(), complete=complete, policy=policy,
        volume=Volume(decisions=day.decisions, requests=day.requests, refusals=day.refusals,
                      refused_rows=day.refused_rows, review_items=len(day.opened)),
        rates=rates, agreement_mean=_mean(every), agreement=versions,
        review_reasons=dict(sorted(day.review_reasons.items())), sla=sla, members=_member_errors(day),
        top_segments=_top_segments(day), judged=judged,
        alerts=alerts(policy, day.decisions, rates, versions, sla, day.requests), notes=notes,
    )


def daily_summary(entries: Iterable[Mapping[str, Any]], day: date, dataset: str, baselines: Baselines,
                  policy: OperationsPolicy, now: datetime) -> DailySummary:
    """The summary of `dataset`'s decisions on the UTC `day`, as of `now`. `entries`: stored entries in log
    order (the whole log, or `day_entries`); `baselines`: ensemble version -> its validated agreement
    baseline (a mapping, or a lookup returning None when a version has none)."""
    return summarise(tally(entries, day, dataset, now, policy.segment_column), baselines, policy)
