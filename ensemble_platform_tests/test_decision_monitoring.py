"""The decision log in Dagster, on a real keyed SQLite decision log and a real Dagster instance: a day's
summary has the hand-computed volume, rates, agreement against the validated baseline, review SLA, member
errors and review segments; a thin day is reported but never alerted on; the report is inert HTML; the
daily asset's check fails on the alerts; the agreement-drop sensor fires once per breach and not again."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ensemble_platform.automation.decision_alerts import ACTED, DecisionAlerts, days_to_check, window_days
from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.data.spec import load_spec
from ensemble_platform.decisions.daily import DailySummary, daily_summary
from ensemble_platform.decisions.log import DecisionLog, decision_log_path
from ensemble_platform.decisions.records import (
    DecisionRecord,
    MemberDocument,
    RefusalRecord,
    ReviewActionRecord,
    ReviewItemRecord,
)
from ensemble_platform.definitions import build_definitions
from ensemble_platform.governance.decision_report import (
    Baselines,
    baseline_path,
    decision_document,
    publish_decision_report,
    summarise_day,
)
from ensemble_platform.settings import DATASET_TAG, TRIGGER_TAG, PlatformPaths
from ensemble_platform_tests.test_report_safety import IMG, SCRIPT, assert_inert

DATASET = "credit_slice"
THIN = "thin_slice"
D0, D1, D2 = date(2026, 3, 9), date(2026, 3, 10), date(2026, 3, 11)
MEMBERS = ("a", "b", "c")
OPERATIONS = {"segment_column": "Home", "agreement_drop": 0.05, "max_fallback_rate": 0.05, "max_refusal_rate": 0.1,
              "max_sla_breaches": 0, "min_daily_decisions": 10, "review_sla_hours": 24}
BASELINE_MEAN = 0.9


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> str:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC).isoformat(timespec="microseconds")


def _header(created_at: str, dataset: str, version: str) -> dict:
    return {"id": str(uuid.uuid4()), "created_at": created_at, "request_id": None, "dataset": dataset,
            "ensemble_version": version, "config_hash": "c" * 64, "manifest_sha256": "m" * 64, "code_version": "0.1.0"}


def decision(created_at: str, agreement: float, *, row: int = 0, home: str = "owner", version: str = "1.0.0",
             dataset: str = DATASET, reasons: tuple[str, ...] = (), failed: dict[str, str] | None = None,
             fallback: bool = False) -> dict:
    failed = failed or {}
    members = {m: MemberDocument(registered_model=f"{dataset}.{m}", version="1",
                                 probability=None if m in failed else 0.4,
                                 error=f"{m} failed" if m in failed else None, reason=failed.get(m))
               for m in MEMBERS}
    return DecisionRecord(
        **_header(created_at, dataset, version), row_index=row, batch_size=row + 1, members=members,
        combined_uncalibrated=0.4, probability=0.4, decision=0, decision_threshold=0.5, agreement=agreement,
        needs_review=bool(reasons), review_reasons=list(reasons), degraded=bool(failed),
        excluded_members={m: f"{m} failed" for m in failed}, fallback=fallback,
        fallback_reason="all_weight_on_excluded_members" if fallback else None, unseen_category=False,
        missing_share=0.0, max_missing_share=0.5, latency_ms=3.0, input_sha256="0" * 64,
        stored_columns=["Home"], features={"Home": home},
    ).model_dump(mode="json")


def review_item(record: dict, segment: str) -> dict:
    return ReviewItemRecord(
        id=str(uuid.uuid4()), created_at=record["created_at"], decision_id=record["id"], request_id=None,
        dataset=record["dataset"], ensemble_version=record["ensemble_version"], reasons=record["review_reasons"],
        segment=segment, probability=0.4, decision=0, agreement=record["agreement"], degraded=record["degraded"],
        members=record["members"], features=record["features"],
    ).model_dump(mode="json")


def action(kind: str, record: dict, created_at: str) -> dict:
    return ReviewActionRecord(id=str(uuid.uuid4()), kind=kind, created_at=created_at, decision_id=record["id"],
                              reviewer="rita", token_name=None, note="checked",
                              decision=0 if kind == "review_resolve" else None).model_dump(mode="json")


def refusal(created_at: str, rows: int) -> dict:
    return RefusalRecord(**_header(created_at, DATASET, "1.0.0"), reason="too few members", batch_size=rows,
                         refused_rows=list(range(rows)), min_members=2, members={}, input_sha256=["0" * 64] * rows,
                         latency_ms=2.0).model_dump(mode="json")


def day_one() -> list[dict]:
    """D1 of credit_slice. 1.0.0: 12 decisions in three requests (rows 0-5, 0-3, 0-1) with vote shares 1 (x6,
    one of them degraded: member c timed out, majority-vote fallback), 2/3 (x4), 1/3 (x2, low agreement).
    1.1.0 (no baseline): 2 decisions in one request. One refused request of 3 rows. Review items: the two
    low-agreement decisions (segment "rent", 4 decisions) and the degraded one (segment SCRIPT, 2 decisions)."""
    t = lambda h, m=0: at(D1, h, m)  # noqa: E731
    low = [decision(t(10), 1 / 3, row=0, home="rent", reasons=("low_agreement",)),
           decision(t(11), 1 / 3, row=1, home="rent", reasons=("low_agreement",))]
    degraded = decision(t(20), 1.0, row=2, home=SCRIPT, reasons=("degraded",), failed={"c": "timeout"}, fallback=True)
    first = [*low, degraded, decision(t(20), 1.0, row=3, home="rent"), decision(t(20), 1.0, row=4, home="rent"),
             decision(t(20), 1.0, row=5, home=SCRIPT)]
    second = [decision(t(12), 2 / 3, row=r) for r in range(4)]
    third = [decision(t(13), 1.0, row=r) for r in range(2)]
    newer = [decision(t(14), 1.0, row=r, version="1.1.0") for r in range(2)]
    items = [review_item(low[0], "rent"), review_item(low[1], "rent"), review_item(degraded, SCRIPT)]
    return [*first, *items, *second, *third, *newer, refusal(t(15), 3),
            action("review_claim", low[0], t(11)), action("review_resolve", low[0], t(12)),  # 2 h: within SLA
            action("review_claim", low[1], t(12)), action("review_resolve", low[1], at(D2, 13)),  # 26 h: late
            # items[2] (opened 20:00) is never resolved.
            {"id": str(uuid.uuid4()), "kind": "shadow", "created_at": t(16), "dataset": DATASET}]  # unknown: ignored


def noise() -> list[dict]:
    """Rows that are not D1 of credit_slice: another dataset on D1, credit_slice on D0 (a thin day of five
    low-agreement decisions, the last a microsecond before midnight) and on D2."""
    return [decision(at(D1, 9), 0.0, dataset="other"),
            *[decision(at(D0, 23, 59, 59), 1 / 3, row=r) for r in range(5)],
            decision(at(D2, 1), 1.0)]


def write_spec(root: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "source": "data.csv", "target": "Status", "positive_label": "bad",
                                    "operations": OPERATIONS}))
    return path


def write_baseline(paths: PlatformPaths, dataset: str, version: str = "1.0.0") -> None:
    """What the validated version's agreement report holds (the fields the baseline reads)."""
    levels = [{"vote_share": 0.333333, "members_agreeing": 1, "rows": 10, "share": 0.05, "accuracy": 0.5},
              {"vote_share": 0.666667, "members_agreeing": 2, "rows": 30, "share": 0.15, "accuracy": 0.7},
              {"vote_share": 1.0, "members_agreeing": 3, "rows": 160, "share": 0.8, "accuracy": 0.9}]
    path = baseline_path(paths, dataset, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"vote_share": {"mean": BASELINE_MEAN, "unanimous_share": 0.8, "levels": levels},
                                "review": {"rows": 10, "share": 0.05}, "review_threshold": 0.6}))


def make_home(root: Path, datasets: tuple[str, ...] = (DATASET,)) -> PlatformPaths:
    paths = PlatformPaths.from_env(root / "home").ensure()
    for name in datasets:
        DatasetCatalog(paths).register(load_spec(write_spec(root, name)))
        write_baseline(paths, name)
    return paths


def append(paths: PlatformPaths, records: list[dict]) -> None:
    log = DecisionLog(decision_log_path(paths), paths=paths)
    try:
        log.store.append_many(records)
    finally:
        log.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> PlatformPaths:
    paths = make_home(tmp_path_factory.mktemp("decision-days"))
    append(paths, [*noise(), *day_one()])
    return paths


# --- the daily summary -----------------------------------------------------------------------------

def test_a_day_has_the_hand_computed_numbers(home):
    spec = DatasetCatalog(home).spec(DATASET)
    now = datetime(2026, 3, 12, tzinfo=UTC)  # D1 + 2 days
    summary = summarise_day(home, DATASET, D1, spec.operations, now)

    volume = summary.volume
    assert (volume.decisions, volume.requests, volume.refusals, volume.refused_rows, volume.review_items) == (
        14, 5, 1, 3, 3)
    rates = summary.rates
    assert rates.review_rate == pytest.approx(3 / 14) and rates.degraded_rate == pytest.approx(1 / 14)
    assert rates.fallback_rate == pytest.approx(1 / 14) and rates.refusal_rate == pytest.approx(1 / 5)
    assert rates.unseen_category_rate == 0
    assert summary.agreement_mean == pytest.approx((6 + 4 * 2 / 3 + 2 / 3 + 2) / 14)

    old, new = summary.agreement
    assert (old.ensemble_version, old.decisions, new.ensemble_version, new.decisions) == ("1.0.0", 12, "1.1.0", 2)
    assert old.mean == pytest.approx(7 / 9) and old.baseline_mean == BASELINE_MEAN
    assert old.drop == pytest.approx(BASELINE_MEAN - 7 / 9) and old.baseline_review_share == 0.05
    assert old.quantiles == pytest.approx({"p10": 1 / 3, "p25": 2 / 3, "p50": 2 / 3, "p75": 1.0, "p90": 1.0})
    assert old.low_agreement_share == pytest.approx(2 / 12)
    assert [(lv.vote_share, lv.decisions, lv.baseline_share) for lv in old.levels] == [
        (0.333333, 2, 0.05), (0.666667, 4, 0.15), (1.0, 6, 0.8)]
    assert [lv.share for lv in old.levels] == pytest.approx([2 / 12, 4 / 12, 6 / 12])
    assert new.mean == 1.0 and new.baseline_mean is None and new.drop is None
    assert summary.notes == ["no validated agreement baseline for ensemble version 1.1.0: its agreement is "
                             "reported, not judged"]

    sla = summary.sla
    assert (sla.items, sla.resolved, sla.resolved_within_sla, sla.resolved_late, sla.unresolved,
            sla.unresolved_past_sla, sla.breaches) == (3, 2, 1, 1, 1, 1, 2)
    assert (sla.median_resolution_hours, sla.p90_resolution_hours) == pytest.approx((2.0, 26.0))
    assert summary.review_reasons == {"degraded": 1, "low_agreement": 2}

    members = {m.member: m for m in summary.members}
    assert (members["c"].decisions, members["c"].errors, members["c"].reasons) == (14, 1, {"timeout": 1})
    assert members["c"].error_rate == pytest.approx(1 / 14) and members["a"].errors == members["b"].errors == 0

    assert [(s.segment, s.review_items, s.decisions) for s in summary.top_segments] == [("rent", 2, 4), (SCRIPT, 1, 2)]
    assert [s.review_rate for s in summary.top_segments] == [0.5, 0.5]
    assert [s.share_of_reviews for s in summary.top_segments] == pytest.approx([2 / 3, 1 / 3])

    assert summary.judged and summary.complete
    assert [a.key for a in summary.alerts] == ["agreement_drop:1.0.0", "fallback_rate", "refusal_rate", "sla_breaches"]

    # The same numbers from the whole log in seq order as from the created_at index.
    log = DecisionLog.for_home(home)
    try:
        whole = daily_summary(log.entries(), D1, DATASET, Baselines(home, DATASET), spec.operations, now)
    finally:
        log.close()
    assert whole == summary


def test_the_sla_is_as_of_now(home):
    """Half a day after D1: the late resolution has not happened yet, the item it resolves is past the SLA,
    the 20:00 item is not yet; the day is complete."""
    spec = DatasetCatalog(home).spec(DATASET)
    sla = summarise_day(home, DATASET, D1, spec.operations, datetime(2026, 3, 11, 12, tzinfo=UTC)).sla
    assert (sla.resolved, sla.resolved_late, sla.unresolved, sla.unresolved_past_sla, sla.breaches) == (1, 0, 2, 1, 1)
    assert sla.median_resolution_hours == pytest.approx(2.0)


def test_a_thin_day_is_reported_but_not_alerted_on(home):
    spec = DatasetCatalog(home).spec(DATASET)
    summary = summarise_day(home, DATASET, D0, spec.operations, datetime(2026, 3, 12, tzinfo=UTC))
    assert summary.volume.decisions == 5 and summary.agreement[0].mean == pytest.approx(1 / 3)
    assert summary.agreement[0].drop == pytest.approx(BASELINE_MEAN - 1 / 3)  # a drop, on too few decisions
    assert not summary.judged and summary.alerts == []
    empty = summarise_day(home, DATASET, date(2026, 1, 1), spec.operations, datetime(2026, 3, 12, tzinfo=UTC))
    assert empty.volume.decisions == 0 and empty.agreement_mean is None and empty.rates.review_rate is None


def test_an_outage_that_refuses_every_request_alerts_on_the_refusal_rate(home):
    """A day of refused requests and no decisions: the refusal rate is judged on requests (it needed
    `min_daily_decisions` decisions, so the day the alert is for never raised it); other alerts still
    need decisions."""
    spec = DatasetCatalog(home).spec(DATASET)
    minimum = spec.operations.min_daily_decisions
    outage = [refusal(f"2026-03-20T{i // 60:02d}:{i % 60:02d}:00.000000+00:00", 2) for i in range(minimum)]
    now = datetime(2026, 3, 21, tzinfo=UTC)
    summary = daily_summary(outage, date(2026, 3, 20), DATASET, {}, spec.operations, now)
    assert summary.volume.decisions == 0 and summary.volume.refusals == minimum
    assert [(a.kind, a.value) for a in summary.alerts] == [("refusal_rate", 1.0)]
    quiet = daily_summary(outage[: minimum - 1], date(2026, 3, 20), DATASET, {}, spec.operations, now)
    assert quiet.alerts == []  # too few requests to judge


def test_the_report_is_written_whole_and_inert(home, tmp_path):
    spec = DatasetCatalog(home).spec(DATASET)
    now = datetime(2026, 3, 12, tzinfo=UTC)
    summary, paths = publish_decision_report(home, DATASET, D1, spec.operations, now)
    assert paths["html"].parent == home.monitoring_dir(DATASET) / "decisions" / "2026-03-10"
    assert DailySummary.model_validate_json(paths["json"].read_text()) == summary
    html = paths["html"].read_text()
    assert "agreement_drop" in html and "&lt;script" in html  # the segment, shown as text
    assert_inert(decision_document(summary))
    # A member failure reason and a version name are data too.
    hostile = summary.model_copy(update={"members": [m.model_copy(update={"member": IMG, "reasons": {SCRIPT: 1}})
                                                     for m in summary.members]})
    assert_inert(decision_document(hostile))
    # Deterministic: the same day, the same moment, the same bytes.
    again = {k: p.read_bytes() for k, p in paths.items()}
    _, paths = publish_decision_report(home, DATASET, D1, spec.operations, now)
    assert {k: p.read_bytes() for k, p in paths.items()} == again


def test_the_alert_tick_acts_once_per_breach_and_forgets_days_out_of_its_window(home):
    alerts = DecisionAlerts(home)
    noon = datetime(2026, 3, 11, 12, tzinfo=UTC)  # D2 noon: the window is D1, D2
    policy = DatasetCatalog(home).spec(DATASET).operations
    assert window_days(policy) == 2 and days_to_check(noon.date(), policy) == [D1, D2]
    first = alerts.tick({}, noon)
    assert sorted(b.key for b in first.breaches) == [f"{DATASET}|2026-03-10|{k}" for k in (
        "agreement_drop:1.0.0", "fallback_rate", "refusal_rate", "sla_breaches")]
    [revalidation] = first.revalidations
    assert sorted(b.alert.kind for b in revalidation.breaches) == ["agreement_drop", "fallback_rate", "sla_breaches"]
    assert [(d.day, d.breaches) for d in first.days] == [
        ("2026-03-10", ("agreement_drop:1.0.0", "fallback_rate", "refusal_rate", "sla_breaches"))]
    second = alerts.tick(first.cursor, noon + timedelta(hours=1))
    assert second.breaches == [] and second.days == [] and second.revalidations == []
    # Two days later D1 has left the window: it is forgotten, and nothing fires.
    later = alerts.tick(second.cursor, datetime(2026, 3, 13, 12, tzinfo=UTC))
    assert later.breaches == [] and later.cursor[ACTED] == []


def test_a_broken_baseline_costs_only_its_agreement_check(home):
    """An agreement report under the home that cannot serve as the baseline (here `{}`) used to skip the whole
    dataset: no fallback, refusal or SLA alert fired. Now only that version's agreement is not judged, and
    the day says why."""
    path = baseline_path(home, DATASET, "1.0.0")
    saved = path.read_bytes()
    try:
        path.write_text("{}")
        tick = DecisionAlerts(home).tick({}, datetime(2026, 3, 11, 12, tzinfo=UTC))
    finally:
        path.write_bytes(saved)
    assert tick.skipped == []
    assert sorted(b.key for b in tick.breaches) == [f"{DATASET}|2026-03-10|{k}" for k in (
        "fallback_rate", "refusal_rate", "sla_breaches")]
    [day] = [s for s in tick.summaries if s.day == "2026-03-10"]
    assert any("cannot serve as the baseline of 1.0.0" in note for note in day.notes)


# --- Dagster: the daily asset and the agreement-drop sensor -----------------------------------------

def _tick(defs, instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor,
                                      definitions=defs, resources=defs.resources)
    return defs.resolve_sensor_def("agreement_drop_sensor").evaluate_tick(context)


def test_the_sensor_fires_once_per_breach_and_the_daily_check_fails(tmp_path):
    paths = make_home(tmp_path, (DATASET, THIN))
    now = datetime.now(UTC)
    moment = max(now - timedelta(seconds=5), now.replace(hour=0, minute=0, second=0, microsecond=0))
    stamp, today = moment.isoformat(timespec="microseconds"), moment.date().isoformat()
    # credit_slice: 12 decisions at vote share 1/3 today (baseline 0.9); thin_slice: the same, but only 5.
    append(paths, [decision(stamp, 1 / 3, row=r) for r in range(12)]
           + [decision(stamp, 1 / 3, row=r, dataset=THIN) for r in range(5)])
    defs = build_definitions(str(paths.home))
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    spec_path = str(DatasetCatalog(paths).entries()[DATASET])

    first = _tick(defs, instance)
    alerting = [r for r in first.run_requests if r.tags[TRIGGER_TAG] == "decision_alert"]
    assert {r.tags[DATASET_TAG] for r in alerting} == {spec_path}  # never the thin dataset
    [revalidate] = [r for r in alerting if r.job_name == "revalidation_job"]
    assert revalidate.run_key == f"decision-alert:{DATASET}:{today}:agreement_drop:1.0.0"
    [refresh] = [r for r in alerting if r.job_name == "decision_log_job"]
    assert refresh.partition_key == dg.MultiPartitionKey({"date": today, "dataset": DATASET})
    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == [DATASET, THIN]
    for request in first.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))

    second = _tick(defs, instance, first.cursor)
    assert second.run_requests == [] and second.dynamic_partitions_requests == []

    # A new breach on the same day (fallbacks) fires once more, for it alone.
    append(paths, [decision(stamp, 1 / 3, row=r, fallback=True, failed={"c": "timeout"}) for r in range(3)])
    third = _tick(defs, instance, second.cursor)
    [revalidate] = [r for r in third.run_requests if r.job_name == "revalidation_job"]
    assert revalidate.run_key == f"decision-alert:{DATASET}:{today}:fallback_rate"
    assert _tick(defs, instance, third.cursor).run_requests == []

    # The requested refresh: the day's report, numbers to plot, and a failing check naming the breaches.
    [refresh] = [r for r in third.run_requests if r.job_name == "decision_log_job"]
    result = defs.resolve_job_def("decision_log_job").execute_in_process(
        instance=instance, partition_key=refresh.partition_key, tags=refresh.tags)
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "decision_alerts" and not check.passed
    assert check.metadata["kinds"].value == "agreement_drop:1.0.0, fallback_rate"
    [materialization] = result.asset_materializations_for_node("decision_log_daily")
    metadata = materialization.metadata
    assert metadata["decisions"].value == 15 and metadata["fallback_rate"].value == pytest.approx(3 / 15)
    assert metadata["agreement_mean"].value == pytest.approx(1 / 3)
    assert metadata["agreement_drop"].value == pytest.approx(BASELINE_MEAN - 1 / 3)
    assert Path(metadata["report"].value).is_file()
