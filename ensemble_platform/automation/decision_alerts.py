"""Which decision-log alerts are new: what the agreement-drop sensor acts on (no Dagster here).

Each tick summarises, for every dataset in the catalogue, the recent UTC days of its decision log
(`decisions.daily`, today's day in progress included) and compares their alerts with the breaches already
acted on (the cursor). A breach is one alert of one dataset on one day (an agreement drop names the
version too); each is acted on once:

- every new breach asks for the day's `decision_log_daily` partition again, so its asset check fails
  where the UI shows it;
- agreement drops, fallback-rate breaches and review-SLA breaches also ask for a re-validation of the
  dataset, one per dataset per tick (in the pattern, falling agreement is the first sign of member drift;
  a re-validation only ever produces a candidate).

Completed days not yet reported are asked for once too (the daily materialisation). Days a dataset's window
has left are dropped from the cursor: they are never looked at again, so it does not grow with history.
The window covers the SLA (an item opened on a day breaches up to `review_sla_hours` later).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.data.spec import load_spec
from ensemble_platform.decisions.daily import Alert, AlertKind, DailySummary
from ensemble_platform.errors import DatasetSpecError
from ensemble_platform.governance.decision_report import BaselineError, summarise_day
from ensemble_platform.policy import OperationsPolicy
from ensemble_platform.settings import PlatformPaths

# The alerts that ask for a re-validation (the others say something about people or load, not the members).
# The alert: falling agreement, too many fallbacks, or review SLA breaches request a re-validation (it
# only ever produces a candidate). Refusals only fail the day's check: re-validating does not fix load.
REVALIDATING: Final[frozenset[AlertKind]] = frozenset({"agreement_drop", "fallback_rate", "sla_breaches"})
MIN_WINDOW_DAYS: Final = 2  # today and yesterday at least
ACTED: Final = "acted"
REPORTED: Final = "reported"


def window_days(policy: OperationsPolicy) -> int:
    """How many days (today included) a dataset's breaches can still appear in: the SLA's span, plus one."""
    return max(MIN_WINDOW_DAYS, math.ceil(policy.review_sla_hours / 24) + 1)


def days_to_check(today: date, policy: OperationsPolicy) -> list[date]:
    """Oldest first, today last."""
    return [today - timedelta(days=back) for back in range(window_days(policy) - 1, -1, -1)]


def breach_key(dataset: str, day: str, alert: Alert) -> str:
    return f"{dataset}|{day}|{alert.key}"


def day_key(dataset: str, day: str) -> str:
    return f"{dataset}|{day}"


@dataclass(frozen=True)
class Breach:
    dataset: str
    spec_path: str
    day: str
    alert: Alert

    @property
    def key(self) -> str:
        return breach_key(self.dataset, self.day, self.alert)


@dataclass(frozen=True)
class DayRequest:
    """A `decision_log_daily` partition to (re)materialise, and why: the breaches it shows, or `daily`."""

    dataset: str
    spec_path: str
    day: str
    breaches: tuple[str, ...] = ()

    @property
    def run_key(self) -> str:
        return f"decision-log:{self.dataset}:{self.day}:" + (",".join(self.breaches) or "daily")


@dataclass(frozen=True)
class Revalidation:
    """One re-validation of a dataset for the breaches that ask for it."""

    dataset: str
    spec_path: str
    breaches: tuple[Breach, ...]

    @property
    def run_key(self) -> str:
        return f"decision-alert:{self.dataset}:" + ",".join(sorted(f"{b.day}:{b.alert.key}" for b in self.breaches))

    @property
    def reason(self) -> str:
        return "; ".join(f"{b.day}: {b.alert.message}" for b in self.breaches)


@dataclass
class AlertTick:
    breaches: list[Breach] = field(default_factory=list)  # new this tick
    days: list[DayRequest] = field(default_factory=list)
    revalidations: list[Revalidation] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)  # every dataset looked at (the partition dimension)
    summaries: list[DailySummary] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cursor: dict[str, list[str]] = field(default_factory=dict)


def read_cursor(text: str | None) -> dict[str, list[str]]:
    """The sensor's cursor (JSON); anything unreadable starts afresh (run keys still stop repeats)."""
    try:
        raw: Any = json.loads(text or "{}")
    except ValueError:
        return {ACTED: [], REPORTED: []}
    if not isinstance(raw, dict):
        return {ACTED: [], REPORTED: []}
    return {name: [str(k) for k in raw.get(name, []) if isinstance(k, str)] for name in (ACTED, REPORTED)}


class DecisionAlerts:
    def __init__(self, paths: PlatformPaths):
        self.paths = paths

    def tick(self, cursor: Mapping[str, list[str]], now: datetime) -> AlertTick:
        acted, reported = set(cursor.get(ACTED, [])), set(cursor.get(REPORTED, []))
        result = AlertTick()
        looked: set[str] = set()
        for dataset, spec_path in DatasetCatalog(self.paths).entries().items():
            try:
                policy = load_spec(spec_path).operations
                summaries = [summarise_day(self.paths, dataset, day, policy, now)
                             for day in days_to_check(now.astimezone(UTC).date(), policy)]
            except (DatasetSpecError, BaselineError) as exc:
                result.skipped.append(f"{dataset}: {exc}")
                continue
            result.datasets.append(dataset)
            for summary in summaries:
                looked.add(day_key(dataset, summary.day))
                result.summaries.append(summary)
                self._day(result, summary, str(spec_path), acted, reported)
            result.revalidations += self._revalidations(dataset, str(spec_path), result.breaches)
        result.cursor = {ACTED: sorted(k for k in acted if k.rsplit("|", 1)[0] in looked),
                         REPORTED: sorted(k for k in reported if k in looked)}
        return result

    @staticmethod
    def _day(result: AlertTick, summary: DailySummary, spec_path: str, acted: set[str], reported: set[str]) -> None:
        """Record the day's new breaches, and whether its partition should be materialised."""
        new = [Breach(summary.dataset, spec_path, summary.day, alert) for alert in summary.alerts
               if breach_key(summary.dataset, summary.day, alert) not in acted]
        acted.update(b.key for b in new)
        result.breaches += new
        key = day_key(summary.dataset, summary.day)
        first_report = summary.complete and key not in reported and _has_entries(summary)
        if new or first_report:
            result.days.append(DayRequest(summary.dataset, spec_path, summary.day,
                                          tuple(sorted(b.alert.key for b in new))))
        if summary.complete:
            reported.add(key)

    @staticmethod
    def _revalidations(dataset: str, spec_path: str, breaches: list[Breach]) -> list[Revalidation]:
        asking = tuple(b for b in breaches if b.dataset == dataset and b.alert.kind in REVALIDATING)
        return [Revalidation(dataset, spec_path, asking)] if asking else []


def _has_entries(summary: DailySummary) -> bool:
    volume = summary.volume
    return bool(volume.decisions or volume.refusals or volume.review_items)
