"""The review queue on a real keyed decision log: its life cycle with every refusal, the SLA arithmetic on a
controlled clock (known answers), a claim race between two processes, and tampering with the actions."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ensemble_platform.decisions.log import DecisionLog
from ensemble_platform.decisions.queue import (
    CLAIMED,
    OPEN,
    RESOLVED,
    QueueItem,
    ReviewError,
    ReviewQueue,
    sla_status,
)
from ensemble_platform.decisions.records import KIND_DECISION, KIND_REVIEW_ITEM
from ensemble_platform.integrity import IntegrityError
from ensemble_platform.settings import PlatformPaths

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _routed(decision_id: str, at: datetime, reasons=("low_agreement",), segment="rent") -> list[dict]:
    """A decision routed to review and its queue item, as the service writes them."""
    created = at.isoformat(timespec="microseconds")
    decision = {"id": decision_id, "kind": KIND_DECISION, "created_at": created, "dataset": "credit",
                "ensemble_version": "1.0.0", "probability": 0.55, "decision": 1, "agreement": 0.5,
                "needs_review": True, "review_reasons": list(reasons)}
    item = {"id": str(uuid.uuid4()), "kind": KIND_REVIEW_ITEM, "created_at": created, "decision_id": decision_id,
            "request_id": None, "dataset": "credit", "ensemble_version": "1.0.0", "reasons": list(reasons),
            "segment": segment, "probability": 0.55, "decision": 1, "agreement": 0.5, "degraded": False,
            "members": {}, "features": {"Income": 120}}
    return [decision, item]


@pytest.fixture
def log(tmp_path):
    paths = PlatformPaths(tmp_path / "home")
    decision_log = DecisionLog.for_home(paths)
    records = []
    for n, (minutes, reasons, segment) in enumerate([(0, ("low_agreement",), "rent"),
                                                     (10, ("unseen_category",), "owner"),
                                                     (20, ("low_agreement", "degraded"), "rent")]):
        records += _routed(f"d{n}", T0 + timedelta(minutes=minutes), reasons, segment)
    decision_log.store.append_many(records)
    yield paths, decision_log
    decision_log.close()


def test_life_cycle_with_every_refusal(log):
    paths, decision_log = log
    clock = Clock(T0 + timedelta(hours=1))
    queue = ReviewQueue(decision_log.store, sla_hours=24, clock=clock)
    assert [i.decision_id for i in queue.items()] == ["d0", "d1", "d2"]  # oldest first
    assert [i.decision_id for i in queue.items(reason="low_agreement")] == ["d0", "d2"]
    assert [i.decision_id for i in queue.items(segment="owner")] == ["d1"]

    def refused(status: int, text: str, action, *args, **kwargs):
        with pytest.raises(ReviewError, match=text) as caught:
            action(*args, **kwargs)
        assert caught.value.status == status

    refused(404, "not in the review queue", queue.claim, "nope", "ana")
    refused(422, "reviewer must not be blank", queue.claim, "d0", " ")
    refused(409, "not claimed; claim it", queue.resolve, "d0", "ana", 1, "note")
    assert queue.claim("d0", "ana").status == CLAIMED
    assert queue.claim("d0", "ana").claimed_by == "ana"  # again by the holder: no new record
    refused(409, "claimed by 'ana'", queue.claim, "d0", "ben")
    refused(409, "claimed by 'ana', not 'ben'", queue.release, "d0", "ben")
    refused(409, "claimed by 'ana', not 'ben'", queue.resolve, "d0", "ben", 1, "note")
    refused(422, "note must not be blank", queue.resolve, "d0", "ana", 1, "  ")
    refused(422, "decision must be 0 or 1", queue.resolve, "d0", "ana", 2, "note")
    refused(422, "decision must be 0 or 1", queue.resolve, "d0", "ana", True, "note")
    refused(409, "nothing to release", queue.release, "d1", "ana")
    refused(422, "note must not be blank", queue.release, "d0", "ben", force=True)

    clock.now += timedelta(minutes=30)
    done = queue.resolve("d0", "ana", 0, "income verified by phone")
    assert (done.status, done.reviewer_decision, done.resolved_by) == (RESOLVED, 0, "ana")
    assert done.resolution_seconds() == 90 * 60
    refused(409, "already resolved by 'ana'", queue.resolve, "d0", "ana", 1, "again")
    refused(409, "already resolved", queue.claim, "d0", "ben")
    queue.claim("d1", "ben")
    assert queue.release("d1", "ana", force=True, note="ben is on leave").status == OPEN
    assert [i.decision_id for i in queue.items("resolved")] == ["d0"]

    # The actions are chain records; the ensemble's decision record is untouched.
    kinds = [e["kind"] for e in decision_log.entries()]
    assert kinds.count("review_claim") == 2 and kinds.count("review_resolve") == 1
    assert kinds.count("review_release") == 1
    assert decision_log.get("d0")["decision"] == 1 and decision_log.verify() == len(kinds)
    # A second queue over the same log (a restarted service) rebuilds the same state from the chain.
    again = ReviewQueue(decision_log.store, sla_hours=24, clock=clock)
    assert [(i.decision_id, i.status) for i in again.items("all")] == [("d0", RESOLVED), ("d1", OPEN), ("d2", OPEN)]


def _item(created: datetime, status=OPEN, resolved: datetime | None = None) -> QueueItem:
    return QueueItem(decision_id=str(uuid.uuid4()), created_at=created.isoformat(), reasons=("low_agreement",),
                     segment=None, entry={}, status=status,
                     resolved_at=resolved.isoformat() if resolved else None)


def test_sla_arithmetic_known_answers():
    now = T0 + timedelta(hours=48)
    items = [
        _item(T0),                                               # open 48 h: past a 24 h SLA
        _item(T0 + timedelta(hours=30), status=CLAIMED),         # claimed, 18 h old: within
        _item(T0 + timedelta(hours=47)),                         # 1 h old
        _item(T0, RESOLVED, T0 + timedelta(hours=2)),            # resolved in 2 h
        _item(T0, RESOLVED, T0 + timedelta(hours=10)),           # 10 h
        _item(T0, RESOLVED, T0 + timedelta(hours=30)),           # 30 h: late
    ]
    sla = sla_status(items, now, sla_hours=24)
    assert (sla.open, sla.claimed, sla.resolved, sla.depth) == (2, 1, 3, 3)
    assert sla.oldest_open_age_s == 48 * 3600 and sla.past_sla == 1 and sla.breached
    assert (sla.resolved_within_sla, sla.resolved_late) == (2, 1)
    assert sla.median_resolution_s == 10 * 3600 and sla.p90_resolution_s == 30 * 3600  # nearest rank
    # Exactly at the SLA is not past it; a second later is.
    edge = [_item(now - timedelta(hours=24))]
    assert sla_status(edge, now, 24).past_sla == 0
    assert sla_status(edge, now + timedelta(seconds=1), 24).past_sla == 1
    empty = sla_status([], now, 24)
    assert empty.depth == 0 and empty.oldest_open_age_s is None and not empty.breached
    assert empty.median_resolution_s is None


def test_the_queue_clock_drives_the_sla(log):
    _, decision_log = log
    clock = Clock(T0 + timedelta(hours=23, minutes=59))
    queue = ReviewQueue(decision_log.store, sla_hours=24, clock=clock)
    assert queue.sla().past_sla == 0
    clock.now = T0 + timedelta(hours=24, minutes=15)  # d0 (T0) and d1 (T0+10 min) are past; d2 (T0+20 min) not
    assert queue.sla().past_sla == 2 and queue.sla().oldest_open_age_s == (24 * 60 + 15) * 60
    assert queue.items()[0].document(clock.now, 24 * 3600)["past_sla"] is True


def test_a_claim_race_between_processes_has_one_winner(log):
    """Another process claims while this one holds a stale view: the claim is decided inside the store's
    critical section, against the chain as it is, so the second claimant is refused."""
    paths, decision_log = log
    queue = ReviewQueue(decision_log.store, sla_hours=24)
    assert queue.items()[0].status == OPEN  # this process's view, now stale
    other = subprocess.run(
        [sys.executable, "-m", "ensemble_platform.service", "--home", str(paths.home), "reviews", "claim", "d0",
         "--reviewer", "zoe"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert other.returncode == 0, other.stderr
    with pytest.raises(ReviewError, match="claimed by 'zoe'"):
        queue.claim("d0", "ana")
    # Racing threads on two stores of the same file: exactly one claim is recorded.
    second = ReviewQueue.for_home(paths, sla_hours=24)
    results: list[str] = []

    def claim(q: ReviewQueue, who: str) -> None:
        try:
            q.claim("d2", who)
            results.append(who)
        except ReviewError:
            results.append("refused")

    threads = [threading.Thread(target=claim, args=(q, who)) for q, who in ((queue, "ana"), (second, "ben"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results.count("refused") == 1
    claims = [e for e in decision_log.entries() if e["kind"] == "review_claim" and e["decision_id"] == "d2"]
    assert len(claims) == 1
    second.close()


def test_a_forged_resolution_is_rejected(log):
    """Writing a resolution into the database without the key is caught when the queue reads it."""
    paths, decision_log = log
    queue = ReviewQueue(decision_log.store, sla_hours=24)
    queue.claim("d0", "ana")
    queue.resolve("d0", "ana", 1, "ok")
    db = sqlite3.connect(decision_log.path)
    seq, entry = db.execute("SELECT seq, entry FROM entries WHERE kind = 'review_resolve'").fetchone()
    forged = json.loads(entry)
    forged["decision"] = 0  # flip the reviewer's outcome
    db.execute("UPDATE entries SET entry = ? WHERE seq = ?", (json.dumps(forged, sort_keys=True), seq))
    db.commit()
    db.close()
    with pytest.raises(IntegrityError):
        ReviewQueue(decision_log.store, sla_hours=24).items("all")
    with pytest.raises(IntegrityError):
        decision_log.verify()


def _tamper(path: Path, kind: str, change) -> None:
    """Edit (or, with change=None, delete) the first stored row of `kind` without the key."""
    db = sqlite3.connect(path)
    seq, entry = db.execute("SELECT seq, entry FROM entries WHERE kind = ? ORDER BY seq", (kind,)).fetchone()
    if change is None:
        db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
    else:
        edited = json.loads(entry)
        change(edited)
        db.execute("UPDATE entries SET entry = ? WHERE seq = ?", (json.dumps(edited, sort_keys=True), seq))
    db.commit()
    db.close()


def test_a_deleted_resolution_cannot_be_resolved_again(log):
    """Dropping a reviewer's resolution from the middle of the chain makes the item read as claimed again.
    Resolving it a second time (another outcome) is refused naming the missing row, by the store that
    was open when the row went (the running service) and by one opened afterwards; `decisions verify`
    names the gap too. (Before, only `verify` saw it: the second resolution was recorded.)"""
    paths, decision_log = log
    queue = ReviewQueue(decision_log.store, sla_hours=24)
    queue.claim("d0", "ana")
    queue.resolve("d0", "ana", 1, "ok")
    queue.claim("d1", "ben")  # the resolution is no longer the last entry
    seq = sqlite3.connect(decision_log.path).execute("SELECT seq FROM entries WHERE kind = 'review_resolve'").fetchone()[0]
    before = decision_log.store.count()
    _tamper(decision_log.path, "review_resolve", None)
    with pytest.raises(IntegrityError, match=rf"entry {seq}: deleted, inserted or reordered .*1 row\(s\) missing"):
        ReviewQueue(decision_log.store, sla_hours=24).resolve("d0", "ana", 0, "second thoughts")
    assert decision_log.store.count() == before  # nothing was appended
    with pytest.raises(IntegrityError, match=rf"entry {seq}: deleted"):
        DecisionLog(decision_log.path, paths=paths)
    # A junk row below seq 1 to make the count come out even again (re-review): refused too.
    db = sqlite3.connect(decision_log.path)
    db.execute("INSERT INTO entries VALUES (-1, 'junk', 'decision', '2026-01-01T00:00:00+00:00', '{}')")
    db.commit()
    db.close()
    with pytest.raises(IntegrityError, match="a row has seq -1"):
        ReviewQueue(decision_log.store, sla_hours=24).resolve("d0", "ana", 0, "second thoughts")
    with pytest.raises(IntegrityError):
        DecisionLog(decision_log.path, paths=paths)
    with pytest.raises(IntegrityError):
        decision_log.verify()


def test_a_forged_outcome_label_is_rejected_where_labels_are_read(log):
    """Flipping a registered outcome's label in the database: the join that feeds production performance,
    shadow comparisons and retraining refuses the entry (its MAC no longer verifies)."""
    from ensemble_platform.decisions.outcomes import labelled_decisions
    from ensemble_platform.decisions.records import OutcomeRecord, now_iso, outcome_id

    _, decision_log = log
    outcome = OutcomeRecord(id=outcome_id("d0"), created_at=now_iso(), decision_id="d0", request_id=None,
                            dataset="credit", label=1, source_file="labels.csv", source_sha256="0" * 64, line=2)
    decision_log.store.append_many([outcome.model_dump(mode="json")])
    _tamper(decision_log.path, "outcome", lambda entry: entry.update(label=0))
    with pytest.raises(IntegrityError):
        labelled_decisions(decision_log.store, "credit")
