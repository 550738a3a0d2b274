"""The human review queue: decisions routed to review, worked by reviewers, with an SLA.

The queue is not a second store: its state is derived from the decision log's own chain, from the
`review_item` record written with each routed decision and the `review_claim`, `review_release` and
`review_resolve` records reviewers append. So every claim and resolution is as tamper-evident as
the decisions, and nobody can resolve an item without a record of who and when.

Each action is read-check-append in one critical section of the store (`append_checked`: no other
thread or process appends in between), so two reviewers cannot both claim one item, nor an item be
resolved twice, even when the service and the CLI act on the same log at once.

States: open → claimed (by one reviewer) → resolved; a claim can be released (by its holder, or by
anyone with `force` and a note) back to open. Resolving needs the claim. The reviewer's outcome is
recorded next to the ensemble's decision, never over it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal

from ensemble_platform.decisions.log import DecisionStore, open_decision_store
from ensemble_platform.decisions.records import (
    KIND_REVIEW_CLAIM,
    KIND_REVIEW_ITEM,
    KIND_REVIEW_RELEASE,
    KIND_REVIEW_RESOLVE,
    REVIEW_KINDS,
    ReviewActionRecord,
    stored_time,
    utc_now,
)
from ensemble_platform.errors import PlatformError
from ensemble_platform.integrity.chain import SEQ
from ensemble_platform.settings import PlatformPaths

Status = Literal["open", "claimed", "resolved"]
OPEN: Final[Status] = "open"
CLAIMED: Final[Status] = "claimed"
RESOLVED: Final[Status] = "resolved"
UNRESOLVED = (OPEN, CLAIMED)
MAX_TEXT = 5000


class ReviewError(PlatformError):
    """A queue action refused, with the reason. `status`: the HTTP status that says it (404, 409, 422)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class QueueItem:
    """One decision's review item and where it stands."""

    decision_id: str
    created_at: str
    reasons: tuple[str, ...]
    segment: str | None
    entry: Mapping[str, Any]  # the review_item entry: probability, decision, agreement, members, features
    status: Status = OPEN
    claimed_by: str | None = None
    claimed_at: str | None = None
    claimed_with: str | None = None  # the name of the service token the claim was made with
    resolved_by: str | None = None
    resolved_at: str | None = None
    reviewer_decision: int | None = None
    note: str | None = None

    def age_seconds(self, now: datetime) -> float:
        return max(0.0, (now - stored_time(self.created_at)).total_seconds())

    def resolution_seconds(self) -> float | None:
        if self.resolved_at is None:
            return None
        return max(0.0, (stored_time(self.resolved_at) - stored_time(self.created_at)).total_seconds())

    def document(self, now: datetime, sla_seconds: float) -> dict[str, Any]:
        """JSON-ready view for the API and the CLI."""
        age = self.age_seconds(now)
        return {
            "decision_id": self.decision_id, "status": self.status, "created_at": self.created_at,
            "reasons": list(self.reasons), "segment": self.segment,
            "age_hours": round(age / 3600, 4),
            "past_sla": self.status != RESOLVED and age > sla_seconds,
            "claimed_by": self.claimed_by, "claimed_at": self.claimed_at,
            "resolved_by": self.resolved_by, "resolved_at": self.resolved_at,
            "reviewer_decision": self.reviewer_decision, "note": self.note,
            "ensemble": {k: self.entry.get(k) for k in ("probability", "decision", "agreement", "degraded",
                                                          "ensemble_version", "request_id")},
            "members": self.entry.get("members", {}),
            "features": self.entry.get("features", {}),
        }


@dataclass(frozen=True)
class SlaStatus:
    """The queue against its SLA at `now` (seconds; None where there is nothing to measure)."""

    sla_hours: float
    open: int
    claimed: int
    resolved: int
    oldest_open_age_s: float | None
    past_sla: int
    resolved_within_sla: int
    resolved_late: int
    median_resolution_s: float | None
    p90_resolution_s: float | None

    @property
    def depth(self) -> int:
        return self.open + self.claimed

    @property
    def breached(self) -> bool:
        return self.past_sla > 0

    def document(self) -> dict[str, Any]:
        return {"sla_hours": self.sla_hours, "depth": self.depth, "open": self.open, "claimed": self.claimed,
                "resolved": self.resolved, "oldest_open_age_hours": _hours(self.oldest_open_age_s),
                "past_sla": self.past_sla, "breached": self.breached,
                "resolved_within_sla": self.resolved_within_sla, "resolved_late": self.resolved_late,
                "median_resolution_hours": _hours(self.median_resolution_s),
                "p90_resolution_hours": _hours(self.p90_resolution_s)}


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, 4)


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (no interpolation: an SLA figure is an observed time)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-int(q * 1000) * len(ordered) // 1000))  # ceil(q * n) in integers
    return ordered[min(rank, len(ordered)) - 1]


def sla_status(items: Iterable[QueueItem], now: datetime, sla_hours: float) -> SlaStatus:
    """The SLA arithmetic: depth, oldest open age, past-SLA count, resolution times."""
    limit = sla_hours * 3600
    counts = {OPEN: 0, CLAIMED: 0, RESOLVED: 0}
    oldest: float | None = None
    past = within = late = 0
    durations: list[float] = []
    for item in items:
        counts[item.status] += 1
        if item.status == RESOLVED:
            seconds = item.resolution_seconds() or 0.0
            durations.append(seconds)
            within, late = (within + 1, late) if seconds <= limit else (within, late + 1)
            continue
        age = item.age_seconds(now)
        oldest = age if oldest is None else max(oldest, age)
        past += age > limit
    return SlaStatus(sla_hours, counts[OPEN], counts[CLAIMED], counts[RESOLVED], oldest, past, within, late,
                     _quantile(durations, 0.5), _quantile(durations, 0.9))


def _holds(item: QueueItem, reviewer: str, token_name: str | None) -> bool:
    """`reviewer` acting with `token_name` holds `item`'s claim. Over the API the reviewer is text in
    the request body that anyone with the review scope can type, so an action made with a token must
    come with the token the claim was made with. A caller without one (the command line, which holds
    the signing key, or a service run with --no-auth) is matched by name."""
    if item.claimed_by != reviewer:
        return False
    return token_name is None or item.claimed_with == token_name


def _holder(item: QueueItem) -> str:
    return _actor(str(item.claimed_by), item.claimed_with)


def _actor(reviewer: str, token_name: str | None) -> str:
    return repr(reviewer) + (f" (token {token_name!r})" if token_name else "")


def _refuse_if_resolved(item: QueueItem) -> None:
    if item.status == RESOLVED:
        raise ReviewError(f"decision {item.decision_id!r} was already resolved by {item.resolved_by!r} at "
                          f"{item.resolved_at}; a resolution is final", 409)


def _text(value: str | None, field: str, *, required: bool) -> str:
    text = (value or "").strip()
    if required and not text:
        raise ReviewError(f"{field} must not be blank", 422)
    if len(text) > MAX_TEXT:
        raise ReviewError(f"{field} is {len(text)} characters; at most {MAX_TEXT}", 422)
    return text


class ReviewQueue:
    """The review queue of one decision log. Thread-safe; processes sharing the log see each other's
    actions (every read catches up with the chain first). `clock` is injectable for SLA tests."""

    def __init__(self, store: DecisionStore, *, sla_hours: float = 24.0,
                 clock: Callable[[], datetime] = utc_now):
        if sla_hours <= 0:
            raise ValueError(f"sla_hours must be > 0, got {sla_hours}")
        self.store = store
        self.sla_hours = sla_hours
        self.clock = clock
        self._items: dict[str, QueueItem] = {}
        self._seen_seq = 0
        self._lock = threading.RLock()

    @classmethod
    def for_home(cls, paths: PlatformPaths, *, sla_hours: float = 24.0) -> ReviewQueue:
        """The queue of the home's decision log, on a store of its own (close it)."""
        return cls(open_decision_store(paths), sla_hours=sla_hours)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ReviewQueue:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Apply the review records appended since the last read (by anyone)."""
        with self._lock:
            for entry in self.store.iter_kinds(REVIEW_KINDS, self._seen_seq):
                self._apply(entry)
                self._seen_seq = int(entry[SEQ])

    def items(self, status: Status | Literal["all", "unresolved"] = "unresolved", reason: str | None = None,
              segment: str | None = None, limit: int | None = None, dataset: str | None = None) -> list[QueueItem]:
        """Items oldest first, filtered by status, a review reason, a segment, a dataset."""
        self.refresh()
        with self._lock:
            chosen = [item for item in self._items.values()
                      if (status == "all" or (item.status in UNRESOLVED if status == "unresolved"
                                              else item.status == status))
                      and (reason is None or reason in item.reasons)
                      and (segment is None or item.segment == segment)
                      and (dataset is None or item.entry.get("dataset") == dataset)]
        chosen.sort(key=lambda item: (item.created_at, int(item.entry.get(SEQ, 0))))  # ties: in log order
        return chosen[:limit] if limit is not None else chosen

    def get(self, decision_id: str) -> QueueItem:
        with self._lock:
            return self._current(decision_id)

    def sla(self, dataset: str | None = None) -> SlaStatus:
        """The queue (of one dataset, or all) against the SLA, now."""
        return sla_status(self.items("all", dataset=dataset), self.clock(), self.sla_hours)

    # -- acting ----------------------------------------------------------------------------------

    def claim(self, decision_id: str, reviewer: str, *, token_name: str | None = None) -> QueueItem:
        """Claim an open item. Claiming one's own claim again is a no-op; another's claim is refused."""
        reviewer = _text(reviewer, "reviewer", required=True)

        def build() -> list[dict[str, Any]]:
            item = self._current(decision_id)
            _refuse_if_resolved(item)
            if item.status == CLAIMED:
                if _holds(item, reviewer, token_name):
                    return []
                raise ReviewError(f"decision {decision_id!r} is claimed by {_holder(item)}, not "
                                  f"{_actor(reviewer, token_name)}, since {item.claimed_at}; they can release it", 409)
            return [self._action(KIND_REVIEW_CLAIM, decision_id, reviewer, token_name)]

        return self._act(decision_id, build)

    def release(self, decision_id: str, reviewer: str, *, note: str = "", force: bool = False,
                token_name: str | None = None) -> QueueItem:
        """Give a claim back. Only its holder may, unless `force` (with a note saying why)."""
        reviewer = _text(reviewer, "reviewer", required=True)
        note = _text(note, "note", required=force)

        def build() -> list[dict[str, Any]]:
            item = self._current(decision_id)
            if item.status != CLAIMED:
                raise ReviewError(f"decision {decision_id!r} is {item.status}, not claimed: nothing to release", 409)
            if not force and not _holds(item, reviewer, token_name):
                raise ReviewError(f"decision {decision_id!r} is claimed by {_holder(item)}, not "
                                  f"{_actor(reviewer, token_name)}; only they can release it (or force it, with a "
                                  f"note)", 409)
            return [self._action(KIND_REVIEW_RELEASE, decision_id, reviewer, token_name, note=note, forced=force)]

        return self._act(decision_id, build)

    def resolve(self, decision_id: str, reviewer: str, decision: int, note: str, *,
                token_name: str | None = None) -> QueueItem:
        """Record the reviewer's outcome (the class they decide) with a note. Needs the reviewer's claim."""
        reviewer = _text(reviewer, "reviewer", required=True)
        note = _text(note, "note", required=True)
        if isinstance(decision, bool) or decision not in (0, 1):
            raise ReviewError(f"decision must be 0 or 1 (the class the reviewer decides), got {decision!r}", 422)

        def build() -> list[dict[str, Any]]:
            item = self._current(decision_id)
            _refuse_if_resolved(item)
            if item.status == OPEN:
                raise ReviewError(f"decision {decision_id!r} is not claimed; claim it before resolving it", 409)
            if not _holds(item, reviewer, token_name):
                raise ReviewError(f"decision {decision_id!r} is claimed by {_holder(item)}, not "
                                  f"{_actor(reviewer, token_name)}", 409)
            return [self._action(KIND_REVIEW_RESOLVE, decision_id, reviewer, token_name, note=note,
                                 decision=decision)]

        return self._act(decision_id, build)

    # -- internals -------------------------------------------------------------------------------

    def _act(self, decision_id: str, build: Callable[[], list[dict[str, Any]]]) -> QueueItem:
        with self._lock:
            for entry in self.store.append_checked(build):
                self._apply(entry)
                self._seen_seq = max(self._seen_seq, int(entry[SEQ]))
            return self._items[decision_id]

    def _current(self, decision_id: str) -> QueueItem:
        """Catch up with the chain, then the item as it stands (inside the store's critical section when
        acting); 404 when the decision has no queue item."""
        self.refresh()
        item = self._items.get(decision_id)
        if item is None:
            raise ReviewError(f"decision {decision_id!r} is not in the review queue (it was not routed to review, "
                              f"or is not in this decision log)", 404)
        return item

    def _action(self, kind: str, decision_id: str, reviewer: str, token_name: str | None, *, note: str = "",
                decision: int | None = None, forced: bool = False) -> dict[str, Any]:
        record = ReviewActionRecord(id=str(uuid.uuid4()), kind=kind,  # type: ignore[arg-type]
                                    created_at=self.clock().isoformat(timespec="microseconds"),
                                    decision_id=decision_id, reviewer=reviewer, token_name=token_name, note=note,
                                    decision=decision, forced=forced)
        return record.model_dump(mode="json")

    def _apply(self, entry: Mapping[str, Any]) -> None:
        """Fold one stored review record into the state (records were checked when appended)."""
        kind, decision_id = entry.get("kind"), str(entry.get("decision_id"))
        if kind == KIND_REVIEW_ITEM:
            self._items.setdefault(decision_id, QueueItem(
                decision_id=decision_id, created_at=str(entry["created_at"]),
                reasons=tuple(entry.get("reasons") or ()), segment=entry.get("segment"), entry=dict(entry)))
            return
        item = self._items.get(decision_id)
        if item is None:
            return
        if kind == KIND_REVIEW_CLAIM:
            item = replace(item, status=CLAIMED, claimed_by=entry["reviewer"], claimed_at=entry["created_at"],
                           claimed_with=entry.get("token_name"))
        elif kind == KIND_REVIEW_RELEASE:
            item = replace(item, status=OPEN, claimed_by=None, claimed_at=None, claimed_with=None)
        elif kind == KIND_REVIEW_RESOLVE:
            item = replace(item, status=RESOLVED, resolved_by=entry["reviewer"], resolved_at=entry["created_at"],
                           reviewer_decision=entry.get("decision"), note=entry.get("note"))
        self._items[decision_id] = item
