"""Shadow scoring on real bundles: production 1.0.0 (served over real HTTP, recording into the real keyed
decision log) and a staging candidate 1.0.1 (the same members, decision threshold 0.35: a PATCH version
that flips decisions). The scorer is fed what the real service answered and recorded; a candidate that
raises, hangs or returns NaN never changes or fails production's answers and is recorded as a shadow
error; the comparison's numbers on a known case; the release gate refuses production with
`operations.shadow` on and lets it through with the policy off; the report and the model card show it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ensemble_platform import cli
from ensemble_platform.decisions.records import KIND_OUTCOME, KIND_REVIEW_RESOLVE, KIND_SHADOW
from ensemble_platform.decisions.shadow import compare, read_evidence, shadow_gate
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.approvals import ReleaseRefused
from ensemble_platform.policy import ShadowGatePolicy
from ensemble_platform.service import DecisionLog, ServerThread, create_app, load_verified_bundle
from ensemble_platform.service.shadow import (
    ProcessCandidate,
    ShadowCollector,
    ShadowScorer,
    candidate_decider,
    open_shadow,
    staging_bundle,
)
from ensemble_platform.service.shadow_cli import add_shadow_commands
from ensemble_platform.serving.decider import Decider
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform_tests.conftest import home_in_production, write_spec
from ensemble_platform_tests.test_decider import NaNOnSome, Raising, Sleeping, with_member

DATASET = "credit_slice"
PRODUCTION, CANDIDATE = "1.0.0", "1.0.1"
CANDIDATE_THRESHOLD = 0.35


@dataclasses.dataclass
class Setup:
    paths: object
    spec_path: Path
    table: pd.DataFrame
    release: object
    log: DecisionLog
    production: Decider
    server: ServerThread
    bundle: Path  # the candidate's
    manifest_sha256: str
    rows: list[dict]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, credit_slice):
    root = tmp_path_factory.mktemp("shadow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(root / "config"))
        paths, spec_path, release, result = home_in_production(root, credit_slice)
        # The candidate: the same members, another decision threshold (a PATCH version), approved, staged.
        write_spec(root / "dataset", credit_slice, governance={"decision_threshold": CANDIDATE_THRESHOLD})
        assert cli.main(["--home", str(paths.home), "demo", "--dataset", str(spec_path)]) == 0
        release.approve(DATASET, CANDIDATE, "bob", "approve", "threshold 0.35 for recall; shadow first",
                        release.state(DATASET, CANDIDATE).gates.failing)
        release.promote(DATASET, CANDIDATE, "staging")
        write_spec(root / "dataset", credit_slice)  # the spec as production's (no shadow policy)
        manifest, runtime, sha = load_verified_bundle(Path(result.bundle.path), result.bundle.manifest_sha256)
        production = Decider(runtime, manifest, member_timeout_s=10.0)
        log = DecisionLog.for_home(paths)
        server = ServerThread(create_app(production, log, None, auth=False, manifest_sha256=sha)).start()
        bundle, candidate_sha = staging_bundle(paths, DATASET, CANDIDATE)
        holdout = ParitySet.read(paths.parity_dir(DATASET, PRODUCTION)).rows
        rows = json.loads(holdout.to_json(orient="records"))
        try:
            yield Setup(paths, spec_path, credit_slice, release, log, production, server, bundle, candidate_sha, rows)
        finally:
            server.stop()
            log.close()
            production.close()


def decide(setup: Setup, rows: list[dict], request_id: str) -> tuple[list[dict], list[dict]]:
    """(production's answer documents, the decision records it stored) for one real HTTP request."""
    response = httpx.post(f"{setup.server.url}/v1/decisions", json={"request_id": request_id, "rows": rows},
                          timeout=60)
    assert response.status_code == 200, response.text
    documents = response.json()["decisions"]
    return documents, [setup.log.get(d["decision_id"]) for d in documents]


def answer_bytes(documents: list[dict]) -> bytes:
    """An answer as sent, without the per-decision random id."""
    return json.dumps([{k: v for k, v in d.items() if k != "decision_id"} for d in documents],
                      sort_keys=True).encode()


def shadow_entries(setup: Setup, decision_ids) -> list[dict]:
    wanted = set(decision_ids)
    return [e for e in setup.log.store.iter_kinds([KIND_SHADOW]) if e["decision_id"] in wanted]


def scorer_for(setup: Setup, runtime_change=None, **options) -> ShadowScorer:
    manifest, runtime, _ = load_verified_bundle(setup.bundle, setup.manifest_sha256)
    if runtime_change is not None:
        runtime = runtime_change(runtime)
    decider = Decider(runtime, manifest, member_timeout_s=options.pop("member_timeout_s", 10.0), member_workers=1)
    return ShadowScorer(decider, setup.log, manifest_sha256=setup.manifest_sha256, **options)


REQUESTS = [(0, 64), (64, 65), (65, 66), (66, 67), (67, 75)]  # one 64-row batch, single rows, a small batch


def run_requests(setup: Setup, scorer: ShadowScorer | None, tag: str) -> tuple[list[bytes], list[str], list[float]]:
    """The requests above through production, each handed to `scorer` as the service will: (answers,
    decision ids, seconds each submit took)."""
    answers, ids, submit_seconds = [], [], []
    for i, (start, stop) in enumerate(REQUESTS):
        rows = setup.rows[start:stop]
        documents, records = decide(setup, rows, f"{tag}-{i}")
        answers.append(answer_bytes(documents))
        ids += [d["decision_id"] for d in documents]
        if scorer is not None:
            started = time.perf_counter()
            scorer.submit(rows, records)
            submit_seconds.append(time.perf_counter() - started)
    return answers, ids, submit_seconds


@pytest.fixture(scope="module")
def baseline(setup) -> list[bytes]:
    return run_requests(setup, None, "baseline")[0]


# --- finding the candidate ------------------------------------------------------------------------

def test_only_a_staging_version_with_its_verified_bundle_is_shadowed(setup):
    assert setup.bundle == setup.release.bundle_paths(DATASET, CANDIDATE)[0]
    assert (setup.bundle / "manifest.json").is_file() and len(setup.manifest_sha256) == 64
    with pytest.raises(PlatformError, match="production, not in staging"):
        staging_bundle(setup.paths, DATASET, PRODUCTION)
    scorer = open_shadow(setup.paths, CANDIDATE, setup.production, setup.log, member_timeout_s=10.0,
                         max_missing_share=0.5, isolation="thread")
    try:
        assert scorer.decider.ensemble_version == CANDIDATE
        assert scorer.decider.runtime.decision_threshold == CANDIDATE_THRESHOLD
    finally:
        scorer.close()
    changed = setup.bundle / "manifest.json"
    original = changed.read_bytes()
    try:
        changed.write_bytes(original.replace(b'"dataset"', b'"dataset" ', 1))
        with pytest.raises(Exception, match="SHA-256"):
            candidate_decider(setup.bundle, setup.manifest_sha256, member_timeout_s=1.0, max_missing_share=0.5)
    finally:
        changed.write_bytes(original)


# --- the known case -------------------------------------------------------------------------------

def test_shadow_records_land_marked_and_linked_with_known_numbers(setup, baseline):
    scorer = scorer_for(setup)
    answers, ids, _ = run_requests(setup, scorer, "healthy")
    assert scorer.drain(60)
    registry = CollectorRegistry()
    registry.register(ShadowCollector(scorer, "ensemble_service"))
    scraped = generate_latest(registry).decode()
    assert f'ensemble_service_shadow_rows_total{{outcome="scored"}} {float(len(ids))}' in scraped
    assert "ensemble_service_shadow_queue_depth 0.0" in scraped
    stats = scorer.close()
    assert answers == baseline
    assert (stats.submitted, stats.scored, stats.failed, stats.dropped, stats.record_failures) == (len(ids), len(ids), 0, 0, 0)
    entries = shadow_entries(setup, ids)
    assert sorted(e["decision_id"] for e in entries) == sorted(ids)
    for entry in entries:
        assert entry["kind"] == "shadow" and entry["error"] is None
        assert (entry["production_version"], entry["candidate_version"]) == (PRODUCTION, CANDIDATE)
        assert entry["manifest_sha256"] == setup.manifest_sha256
        assert entry["production_decision"] == setup.log.get(entry["decision_id"])["decision"]
    assert setup.log.verify() >= len(ids)

    # Independently: the candidate's own runtime on the same rows (64 rows: full BLAS tiles, exact).
    _, runtime, _ = load_verified_bundle(setup.bundle, setup.manifest_sha256)
    frame = pd.DataFrame(setup.rows[:64])
    expected = np.asarray(runtime.score(frame)["probability"], dtype=float)
    by_id = {e["decision_id"]: e for e in entries}
    first = [by_id[i] for i in ids[:64]]
    np.testing.assert_array_equal([e["probability"] for e in first], expected)
    production_p = np.array([e["production_probability"] for e in first])
    flips = int(np.sum((production_p >= 0.5) != (expected >= CANDIDATE_THRESHOLD)))
    assert flips > 0  # the known case flips decisions

    evidence = compare([e for e in entries if e["decision_id"] in set(ids[:64])], DATASET, PRODUCTION, CANDIDATE)
    assert evidence is not None
    assert (evidence.shadowed, evidence.scored, evidence.failed, evidence.flips) == (64, 64, 0, flips)
    assert evidence.flip_rate == pytest.approx(flips / 64)
    assert evidence.flips_to_negative == 0 and evidence.flips_to_positive == flips  # a lower threshold only adds
    difference = expected - production_p
    assert evidence.probability_difference.mean_abs == pytest.approx(np.mean(np.abs(difference)), abs=1e-12)
    assert evidence.probability_difference.max_abs == pytest.approx(np.max(np.abs(difference)), abs=1e-12)
    assert evidence.outcomes is None


def test_comparison_numbers_and_outcome_joins_on_a_hand_made_log():
    def shadow(i, p_prod, d_prod, p_cand, d_cand, at, error=None):
        return {"kind": KIND_SHADOW, "decision_id": f"d{i}", "dataset": DATASET, "production_version": "1.0.0",
                "candidate_version": "1.1.0", "config_hash": "c" * 64, "manifest_sha256": "m" * 64,
                "created_at": f"2026-11-{at:02d}T00:00:00+00:00", "production_probability": p_prod,
                "production_decision": d_prod, "production_agreement": 1.0, "probability": p_cand,
                "decision": d_cand, "agreement": None if error else 0.5, "error": error,
                "error_kind": "exception" if error else None, "lag_ms": float(i)}

    entries = [
        shadow(1, 0.9, 1, 0.8, 1, 1), shadow(2, 0.2, 0, 0.6, 1, 2), shadow(3, 0.4, 0, 0.3, 0, 3),
        shadow(4, 0.7, 1, 0.4, 0, 4), shadow(5, 0.5, 1, None, None, 8, error="RuntimeError: boom"),
        shadow(1, 0.9, 1, 0.0, 0, 9),  # a second record of d1: the first counts
        {"kind": KIND_OUTCOME, "decision_id": "d1", "label": 1}, {"kind": KIND_OUTCOME, "decision_id": "d2", "label": 0},
        {"kind": KIND_REVIEW_RESOLVE, "decision_id": "d2", "decision": 1},  # an outcome wins over a review
        {"kind": KIND_REVIEW_RESOLVE, "decision_id": "d4", "decision": 0},
    ]
    e = compare(entries, DATASET, "1.0.0", "1.1.0")
    assert (e.shadowed, e.scored, e.failed, e.errors_by_kind, e.error_rate) == (5, 4, 1, {"exception": 1}, 0.2)
    assert (e.flips, e.flips_to_positive, e.flips_to_negative, e.flip_rate) == (2, 1, 1, 0.5)
    assert (e.first_at, e.last_at, e.days) == ("2026-11-01T00:00:00+00:00", "2026-11-08T00:00:00+00:00", 7.0)
    diff = e.probability_difference
    assert diff.mean == pytest.approx((-0.1 + 0.4 - 0.1 - 0.3) / 4)
    assert diff.mean_abs == pytest.approx(0.225) and diff.max_abs == pytest.approx(0.4)
    assert (e.production_agreement_mean, e.candidate_agreement_mean) == (1.0, 0.5)
    o = e.outcomes
    assert (o.labelled, o.from_outcomes, o.from_reviews, o.positives) == (3, 2, 1, 1)
    # labels d1=1, d2=0, d4=0: production p (0.9, 0.2, 0.7), candidate p (0.8, 0.6, 0.4)
    assert o.production.log_loss == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.3)) / 3)
    assert o.candidate.log_loss == pytest.approx(-(np.log(0.8) + np.log(0.4) + np.log(0.6)) / 3)
    assert (o.production.accuracy, o.candidate.accuracy) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (o.production.roc_auc, o.candidate.roc_auc) == (1.0, 1.0)
    assert compare(entries, DATASET, "1.0.0", "9.9.9") is None

    on = ShadowGatePolicy(min_days=10, min_decisions=5, max_flip_rate=0.25)
    assert shadow_gate(e, on) == (False, ["shadowed 7.0 of 10 days", "shadowed 4 of 5 decisions",
                                          "flip rate 0.5 > 0.25"])
    assert shadow_gate(e, ShadowGatePolicy(min_days=7, min_decisions=4, max_flip_rate=0.5)) == (True, [])
    assert shadow_gate(None, ShadowGatePolicy()) == (True, [])  # off by default
    passed, reasons = shadow_gate(None, ShadowGatePolicy(max_flip_rate=0.1))
    assert not passed and "no shadow evidence" in reasons[0]


# --- faults in the candidate never reach production -----------------------------------------------

class RaisingCalibrator:
    def transform(self, values):
        raise RuntimeError("calibrator backend unavailable")


def _members(runtime, make):
    return dataclasses.replace(runtime, members={name: make(model) for name, model in runtime.members.items()})


FAULTS = {
    # (runtime change, member deadline, error kind recorded for every row, or None: scored)
    "members_raise": (lambda r: _members(r, lambda m: Raising()), 10.0, "refused"),
    "members_sleep": (lambda r: _members(r, lambda m: Sleeping(m, 0.3)), 0.05, "refused"),
    "members_nan": (lambda r: _members(r, lambda m: NaNOnSome(m, -np.inf)), 10.0, "refused"),
    "calibrator_raises": (lambda r: dataclasses.replace(r, calibrator=RaisingCalibrator()), 10.0, "exception"),
    "one_member_nan": (lambda r: with_member(r, "xgboost", NaNOnSome(r.members["xgboost"], -np.inf)), 10.0, None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_faulty_shadow_never_changes_or_fails_production(setup, baseline, fault):
    change, deadline, error_kind = FAULTS[fault]
    scorer = scorer_for(setup, change, member_timeout_s=deadline)
    answers, ids, submit_seconds = run_requests(setup, scorer, fault)
    assert answers == baseline  # byte for byte, but for the random decision ids
    assert max(submit_seconds) < 0.05  # off the response path
    assert scorer.drain(60)
    stats = scorer.close()
    entries = shadow_entries(setup, ids)
    assert sorted(e["decision_id"] for e in entries) == sorted(ids)
    if error_kind is None:
        assert stats.failed == 0 and all(e["error"] is None and e["degraded"] for e in entries)
        assert all(e["members"]["xgboost"]["reason"] == "non_finite" for e in entries)
    else:
        assert (stats.scored, stats.failed) == (0, len(ids))
        assert {e["error_kind"] for e in entries} == {error_kind}
        assert all(e["probability"] is None and e["error"] for e in entries)


def test_submit_never_raises_nor_blocks_and_drops_when_full(setup):
    scorer = scorer_for(setup, lambda r: _members(r, lambda m: Sleeping(m, 0.2)), max_queued_rows=1)
    try:
        documents, records = decide(setup, setup.rows[:1], "drops")
        started = time.perf_counter()
        accepted = [scorer.submit(setup.rows[:1], records) for _ in range(20)]
        assert time.perf_counter() - started < 0.1
        assert accepted[0] and not all(accepted)
        assert scorer.submit(None, None) is False  # garbage in: counted nowhere, raised nowhere
        stats = scorer.stats()
        assert stats.dropped == accepted.count(False) and stats.queue_capacity == 1
        # A row the candidate's schema refuses fails alone, named by its row and column.
        broken = [{k: v for k, v in setup.rows[0].items() if k != "Income"}]
        assert scorer.drain(30)
        assert scorer.submit(broken, records)
        assert scorer.drain(30)
        invalid = [e for e in shadow_entries(setup, [documents[0]["decision_id"]]) if e["error_kind"] == "invalid_input"]
        assert len(invalid) == 1 and "row 0" in invalid[0]["error"] and "'Income'" in invalid[0]["error"]
    finally:
        stats = scorer.close(timeout=30)
    assert stats.submitted + stats.dropped == 21 and stats.queue_depth == 0


def test_a_candidate_in_its_own_process_scores_the_same_and_survives_being_killed(setup, baseline):
    scorer = open_shadow(setup.paths, CANDIDATE, setup.production, setup.log, member_timeout_s=10.0,
                         max_missing_share=0.5)  # the default: a process of its own, at nice +10
    assert isinstance(scorer.decider, ProcessCandidate) and scorer.decider.pid != os.getpid()
    in_thread = candidate_decider(setup.bundle, setup.manifest_sha256, member_timeout_s=10.0, max_missing_share=0.5)
    try:
        answers, ids, _ = run_requests(setup, scorer, "process")
        assert answers == baseline and scorer.drain(60)
        by_id = {e["decision_id"]: e for e in shadow_entries(setup, ids)}
        expected = in_thread.decide(setup.rows[:75]).rows
        assert [by_id[i]["probability"] for i in ids] == [row.probability for row in expected]  # bit for bit
        assert scorer.stats().isolation == "process" and scorer.stats().nice == 10

        os.kill(scorer.decider.pid, signal.SIGKILL)  # the candidate dies: recorded, production untouched
        died, died_ids, _ = run_requests(setup, scorer, "killed")
        assert died == baseline and scorer.drain(60)
        assert {e["error_kind"] for e in shadow_entries(setup, died_ids)} == {"exception"}
        again, again_ids, _ = run_requests(setup, scorer, "restarted")  # ... and is started again
        assert again == baseline and scorer.drain(120)
        assert all(e["error"] is None for e in shadow_entries(setup, again_ids)) and scorer.decider.restarts == 1
    finally:
        stats = scorer.close()
        in_thread.close()
    assert (stats.scored, stats.failed, stats.dropped) == (2 * len(ids), len(ids), 0)


# --- report, model card, release gate -------------------------------------------------------------

def test_report_and_model_card_show_the_evidence(setup, capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--home")
    add_shadow_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["--home", str(setup.paths.home), "shadow", "report", "--dataset", DATASET])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"{CANDIDATE} shadowing {PRODUCTION}" in out and "gate: not required" in out
    directory = setup.paths.reports_dir(DATASET) / "shadow" / f"{PRODUCTION}__{CANDIDATE}"
    evidence = json.loads((directory / "shadow.json").read_text())
    assert evidence["flips"] > 0 and evidence["failed"] > 0
    html = (directory / "shadow.html").read_text()
    assert "<h2>Decisions and probabilities</h2>" in html and "<script" not in html
    card = (setup.paths.version_reports_dir(DATASET, CANDIDATE) / "model_card.md").read_text()
    assert "## Shadow evidence" in card and card.index("## Shadow evidence") < card.index("## Approval status")
    assert "## Shadow evidence" not in (setup.paths.version_reports_dir(DATASET, PRODUCTION) / "model_card.md").read_text()


# --- end to end: `serve --shadow` over real HTTP -------------------------------------------------

def test_serve_with_shadow_over_http_answers_as_without_and_records_the_shadow(setup, baseline):
    """The real `serve --shadow 1.0.1` process: production's answers are byte-identical to those of the
    server without shadow; every decision gets its shadow record (linked, marked, by the candidate);
    /ready and /metrics show the shadow's counters."""
    from ensemble_platform.governance.release import Release
    from ensemble_platform_tests.test_service import Home, Server

    directory, manifest_sha256, _ = Release(setup.paths).production_bundle(DATASET)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    server = Server(Home(setup.paths, Path(directory), manifest_sha256, [], {}, env), "--no-auth", "--shadow",
                    CANDIDATE)
    try:
        answers, ids = [], []
        for i, (start, stop) in enumerate(REQUESTS):
            response = httpx.post(f"{server.url}/v1/decisions", timeout=60,
                                  json={"request_id": f"served-{i}", "rows": setup.rows[start:stop]})
            assert response.status_code == 200, response.text
            answers.append(answer_bytes(response.json()["decisions"]))
            ids += [d["decision_id"] for d in response.json()["decisions"]]
        assert answers == baseline
        deadline = time.monotonic() + 60
        while len(shadow_entries(setup, ids)) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        shadows = shadow_entries(setup, ids)
        assert sorted(e["decision_id"] for e in shadows) == sorted(ids)
        assert {e["candidate_version"] for e in shadows} == {CANDIDATE}
        assert all(e["error"] is None for e in shadows)
        ready = httpx.get(f"{server.url}/ready").json()
        assert ready["ready"] and ready["shadow"]["scored"] == len(ids) and ready["shadow"]["dropped"] == 0
        assert "ensemble_service_shadow_rows_total" in httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()



def test_the_gate_refuses_production_with_the_policy_on_and_not_with_it_off(setup):
    release = setup.release
    evidence = read_evidence(setup.paths, DATASET, PRODUCTION, CANDIDATE)
    assert evidence is not None and evidence.flip_rate > 0
    before = release.registry.snapshot(DATASET), [e["sha256"] for e in release.promotions_log(DATASET).verify()]
    write_spec(setup.spec_path.parent, setup.table,
               operations={"shadow": {"min_days": 7, "min_decisions": 100_000, "max_flip_rate": 0.0}})
    try:
        with pytest.raises(ReleaseRefused) as refused:
            release.promote(DATASET, CANDIDATE, "production")
    finally:
        write_spec(setup.spec_path.parent, setup.table)
    message = str(refused.value)
    assert "shadowed 0.0 of 7 days" in message and "of 100000 decisions" in message
    assert f"flip rate {evidence.flip_rate:.3g} > 0" in message
    assert (release.registry.snapshot(DATASET), [e["sha256"] for e in release.promotions_log(DATASET).verify()]) == before
    result = release.promote(DATASET, CANDIDATE, "production")  # the policy off: promoted as before
    assert result.record.kind == "promotion" and result.record.shadow is None
