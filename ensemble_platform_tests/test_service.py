"""The decision service over real HTTP (uvicorn on 127.0.0.1) on a real production bundle: decide (batch and
single, rows and MLflow inputs) -> show -> replay -> verify; member faults, refusal and a broken log recorded
or refused as they must be; 422 naming the column; 401/403; a restart keeps the chain; SIGKILL under load
loses no acknowledged decision."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest

from ensemble_platform.integrity import CHECKPOINT_DIR_ENV, KEY_ENV, KEY_FILE_ENV
from ensemble_platform.service import (
    DecisionLog,
    ServerThread,
    TokenError,
    TokenStore,
    create_app,
    load_verified_bundle,
)
from ensemble_platform.service import cli as service_cli
from ensemble_platform.serving.decider import Decider
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform.settings import PlatformPaths
from ensemble_platform_tests.conftest import home_in_production
from ensemble_platform_tests.test_decider import Raising, Sleeping

REPO = Path(__file__).resolve().parents[1]
DATASET = "credit_slice"
VERSION = "1.0.0"


@dataclasses.dataclass
class Home:
    paths: PlatformPaths
    bundle: Path
    manifest_sha256: str
    rows: list[dict]
    tokens: dict[str, str]
    env: dict[str, str]


@pytest.fixture(scope="module")
def home(tmp_path_factory, credit_slice):
    root = tmp_path_factory.mktemp("service")
    with pytest.MonkeyPatch.context() as patch:
        for variable in (KEY_ENV, KEY_FILE_ENV, CHECKPOINT_DIR_ENV):
            patch.delenv(variable, raising=False)
        patch.setenv("XDG_CONFIG_HOME", str(root / "config"))
        paths, _, release, result = home_in_production(root, credit_slice)
        patch.setenv("ENSEMBLE_PLATFORM_HOME", str(paths.home))
        parity = ParitySet.read(release.paths.parity_dir(DATASET, VERSION))
        store = TokenStore.for_home(paths)
        tokens = {scope: store.create_token(scope, [scope]) for scope in ("decide", "read", "review")}
        tokens["all"] = store.create_token("all", ["decide", "read", "review"])
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        yield Home(paths, Path(result.bundle.path), result.bundle.manifest_sha256,
                   json.loads(parity.rows.to_json(orient="records")), tokens, env)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m ensemble_platform.service serve` in its own process group."""

    def __init__(self, home: Home, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "ensemble_platform.service", "--home", str(home.paths.home), "serve",
                   "--bundle", str(home.bundle), "--manifest-sha256", home.manifest_sha256, "--port", str(self.port),
                   *extra]
        self.process = subprocess.Popen(command, env=home.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                self.process.kill()
                pytest.fail(f"the service did not start:\n{output[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)


SLA_HOURS = 0.0003  # ~1 s: the review SLA test waits it out


@pytest.fixture(scope="module")
def server(home):
    running = Server(home, "--segment-column", "Home", "--review-sla-hours", str(SLA_HOURS))
    yield running
    running.stop()


def run_cli(home: Home, *argv: str) -> int:
    return service_cli.main(["--home", str(home.paths.home), *argv])


# --- end to end ---------------------------------------------------------------------------------

def test_decide_show_replay_verify(home, server, capsys):
    decide = bearer(home.tokens["decide"])
    batch = httpx.post(f"{server.url}/v1/decisions", json={"request_id": "req-batch", "rows": home.rows[:5]},
                       headers=decide, timeout=30)
    assert batch.status_code == 200, batch.text
    decisions = batch.json()["decisions"]
    assert batch.json()["request_id"] == "req-batch" and len(decisions) == 5
    first = decisions[0]
    assert first["ensemble_version"] == VERSION and len(first["config_hash"]) == 64
    assert set(first["members"]) >= {"xgboost", "logistic_regression"} and first["degraded"] is False
    columns = list(home.rows[0])
    single = httpx.post(f"{server.url}/v1/decisions", headers=decide, timeout=30,
                        json={"dataframe_split": {"columns": columns, "data": [[home.rows[2][c] for c in columns]]}})
    assert single.status_code == 200, single.text
    # A row's answer does not depend on its batch.
    assert single.json()["decisions"][0]["probability"] == decisions[2]["probability"]
    mlflow_style = httpx.post(f"{server.url}/invocations", json={"dataframe_records": home.rows[:2]}, headers=decide,
                              timeout=30)
    assert mlflow_style.status_code == 200
    assert [p["probability"] for p in mlflow_style.json()["predictions"]] == [d["probability"] for d in decisions[:2]]

    shown = httpx.get(f"{server.url}/v1/decisions/{first['decision_id']}", headers=bearer(home.tokens["read"]))
    record = shown.json()
    assert shown.status_code == 200 and record["kind"] == "decision" and record["request_id"] == "req-batch"
    assert record["probability"] == first["probability"] and record["manifest_sha256"] == home.manifest_sha256
    assert record["members"]["xgboost"]["version"] == "1" and len(record["input_sha256"]) == 64
    assert "Age" not in record["features"] and "Income" in record["features"]  # sensitive columns are not stored
    assert record["seq"] >= 1 and record["mac"]

    capsys.readouterr()
    assert run_cli(home, "decisions", "show", first["decision_id"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == first["decision_id"]
    for decision in (decisions[0], decisions[4], single.json()["decisions"][0]):
        assert run_cli(home, "decisions", "replay", decision["decision_id"]) == 0
        assert "identical to the bit" in capsys.readouterr().out
    assert run_cli(home, "decisions", "verify") == 0
    assert "verified" in capsys.readouterr().out
    out = home.paths.home / "export" / "decisions.jsonl"
    assert run_cli(home, "decisions", "export", "--since", "2000-01-01T00:00:00+00:00", "--output", str(out)) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert {d["decision_id"] for d in decisions} <= {e["id"] for e in exported}
    parquet = home.paths.home / "export" / "decisions.parquet"
    assert run_cli(home, "decisions", "export", "--format", "parquet", "--output", str(parquet)) == 0
    # --since is a time, not text: the newest record's instant written in another zone still includes it
    # (compared as text, +01:00 made it an hour later and the record was left out); a zone is required.
    newest = max(e["created_at"] for e in exported)
    shifted = datetime.fromisoformat(newest).astimezone(timezone(timedelta(hours=1))).isoformat()
    assert run_cli(home, "decisions", "export", "--since", shifted, "--output", str(out)) == 0
    assert newest in {json.loads(line)["created_at"] for line in out.read_text().splitlines()}
    with pytest.raises(SystemExit):
        run_cli(home, "decisions", "export", "--since", "2026-01-01T00:00:00", "--output", str(out))
    assert "has no time zone" in capsys.readouterr().err
    assert run_cli(home, "decisions", "export", "--output", str(out.parent)) == 2  # a directory: refused

    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["ready"] and ready["auth_enabled"] and ready["bundle"]["verified"]
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in ("ensemble_service_requests_total", "ensemble_service_decisions_total{outcome=",
                 "ensemble_service_member_duration_seconds_bucket", "ensemble_service_decision_log_write_seconds",
                 "ensemble_service_agreement_bucket", "ensemble_service_request_duration_seconds"):
        assert name in metrics, name


def test_review_queue_over_http(home, server, capsys):
    """Routed decisions become queue items; claim / release / resolve with every refusal; the SLA breach shows in
    /metrics, /v1/reviews/sla and the CLI while /ready stays up; every action is in the verified chain."""
    decide, reviewer = bearer(home.tokens["decide"]), bearer(home.tokens["review"])
    rows = [dict(home.rows[i], Home="castle") for i in range(3)]  # an unseen category routes a row to review
    answer = httpx.post(f"{server.url}/v1/decisions", json={"request_id": "req-review", "rows": rows},
                        headers=decide, timeout=30).json()["decisions"]
    ids = [d["decision_id"] for d in answer]
    assert all(d["needs_review"] and "unseen_category" in d["review_reasons"] for d in answer)
    listed = httpx.get(f"{server.url}/v1/reviews", params={"segment": "castle"}, headers=reviewer).json()["items"]
    assert [i["decision_id"] for i in listed] == ids  # oldest first (one request: in row order)
    assert listed[0]["ensemble"]["decision"] == answer[0]["decision"] and "xgboost" in listed[0]["members"]
    assert "Income" in listed[0]["features"] and "Age" not in listed[0]["features"]
    assert httpx.get(f"{server.url}/v1/reviews", params={"reason": "no_such_reason"},
                     headers=reviewer).json()["items"] == []
    assert httpx.get(f"{server.url}/v1/reviews", headers=bearer(home.tokens["decide"])).status_code == 403

    def act(action: str, decision_id: str, **body):
        return httpx.post(f"{server.url}/v1/reviews/{decision_id}/{action}", json=body, headers=reviewer, timeout=30)

    first = ids[0]
    assert act("resolve", first, reviewer="ana", decision=1, note="x").status_code == 409  # not claimed
    assert act("claim", first, reviewer="  ").status_code == 422  # blank reviewer
    claimed = act("claim", first, reviewer="ana")
    assert claimed.status_code == 200 and claimed.json()["claimed_by"] == "ana"
    assert act("claim", first, reviewer="ana").status_code == 200  # one's own claim again: a no-op
    # Another review token typing the holder's name: the claim was made with the "review" token, so
    # "ana" under the "all" token holds nothing (it could resolve ana's item before).
    other = bearer(home.tokens["all"])
    for action, body in (("resolve", {"decision": 0, "note": "as ana"}), ("release", {}), ("claim", {})):
        posed = httpx.post(f"{server.url}/v1/reviews/{first}/{action}", json={"reviewer": "ana", **body},
                           headers=other, timeout=30)
        assert posed.status_code == 409, (action, posed.text)
        assert "claimed by 'ana' (token 'review'), not 'ana' (token 'all')" in posed.json()["detail"]["error"]
    taken = act("claim", first, reviewer="ben")
    assert taken.status_code == 409 and "claimed by 'ana'" in taken.json()["detail"]["error"]
    assert act("release", first, reviewer="ben").status_code == 409
    assert act("resolve", first, reviewer="ben", decision=0, note="no").status_code == 409
    assert act("resolve", first, reviewer="ana", decision=0, note=" ").status_code == 422  # blank note
    assert act("resolve", first, reviewer="ana", decision=2, note="why").status_code == 422
    resolved = act("resolve", first, reviewer="ana", decision=1 - answer[0]["decision"], note="income verified")
    assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
    assert act("resolve", first, reviewer="ana", decision=1, note="again").status_code == 409  # resolving twice
    assert act("claim", ids[1], reviewer="ben").status_code == 200
    assert act("release", ids[1], reviewer="ana", force=True, note="").status_code == 422  # force needs a note
    assert act("release", ids[1], reviewer="ana", force=True, note="ben is away").status_code == 200
    assert act("claim", "no-such-id", reviewer="ana").status_code == 404

    # The automated decision is still what the ensemble said; the outcome sits next to it.
    record = httpx.get(f"{server.url}/v1/decisions/{first}", headers=bearer(home.tokens["read"])).json()
    assert record["decision"] == answer[0]["decision"] and record["kind"] == "decision"

    time.sleep(SLA_HOURS * 3600 + 0.2)
    sla = httpx.get(f"{server.url}/v1/reviews/sla", headers=reviewer).json()
    assert sla["breached"] and sla["past_sla"] >= 2 and sla["resolved"] >= 1
    assert httpx.get(f"{server.url}/ready").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "ensemble_service_review_sla_breached 1.0" in metrics
    assert re.search(r"ensemble_service_review_past_sla [1-9]", metrics)
    assert "ensemble_service_review_resolution_seconds_count 1.0" in metrics

    capsys.readouterr()
    assert run_cli(home, "reviews", "sla", "--sla-hours", str(SLA_HOURS), "--exit-code") == 1
    assert "SLA BREACHED" in capsys.readouterr().out
    assert run_cli(home, "reviews", "list", "--status", "resolved", "--json") == 0
    assert first in {i["decision_id"] for i in json.loads(capsys.readouterr().out)}
    assert run_cli(home, "reviews", "resolve", ids[2], "--reviewer", "cy", "--decision", "1", "--note", "n") == 2
    assert "not claimed" in capsys.readouterr().err
    from ensemble_platform import cli

    assert cli.main(["--home", str(home.paths.home), "status", "--dataset", DATASET]) == 0
    assert re.search(r"review queue: \d+ unresolved .* past the 24 h SLA", capsys.readouterr().out)
    assert run_cli(home, "decisions", "verify") == 0
    verified = capsys.readouterr().out
    assert "review_claim" in verified and "review_resolve" in verified and "review_release" in verified


def test_a_changed_record_does_not_replay(home, server, capsys):
    response = httpx.post(f"{server.url}/v1/decisions", json={"rows": home.rows[:1]},
                          headers=bearer(home.tokens["decide"]), timeout=30)
    decision_id = response.json()["decisions"][0]["decision_id"]
    log = DecisionLog.for_home(home.paths)
    entry = log.get(decision_id)
    log.close()
    from ensemble_platform.service.replay import replay_record

    entry["probability"] = float(np.nextafter(entry["probability"], 1.0))
    result = replay_record(entry, home.paths)
    assert not result.identical and result.differences[0].startswith("probability: recorded")


def test_bad_input_is_422_naming_the_column(home, server):
    decide = bearer(home.tokens["decide"])
    rows = [dict(r) for r in home.rows[:2]]
    del rows[1]["Income"]
    missing = httpx.post(f"{server.url}/v1/decisions", json={"rows": rows}, headers=decide)
    assert missing.status_code == 422 and missing.json()["detail"]["column"] == "Income"
    assert "row 1: missing column 'Income'" in missing.json()["detail"]["error"]
    body = json.dumps({"rows": [{**home.rows[0], "Amount": float("inf")}]})  # Python's json writes Infinity
    infinite = httpx.post(f"{server.url}/v1/decisions", content=body, headers={**decide, "Content-Type": "application/json"})
    assert infinite.status_code == 422 and infinite.json()["detail"]["column"] == "Amount"
    body = json.dumps({"rows": [{**home.rows[0], "Home": "owner\ud800"}]})  # a lone surrogate, as JSON allows
    surrogate = httpx.post(f"{server.url}/v1/decisions", content=body, headers={**decide, "Content-Type": "application/json"})
    assert surrogate.status_code == 422 and surrogate.json()["detail"]["column"] == "Home"  # was a 500
    huge = httpx.post(f"{server.url}/v1/decisions", json={"rows": [home.rows[0], {**home.rows[1], "Price": 1e39}]},
                      headers=decide)  # past float32, where tree members overflow
    assert huge.status_code == 422 and (huge.json()["detail"]["row"], huge.json()["detail"]["column"]) == (1, "Price")
    columns = list(home.rows[0])
    twice = httpx.post(f"{server.url}/v1/decisions", headers=decide, json={"dataframe_split": {
        "columns": [*columns, "Income"], "data": [[*(home.rows[0][c] for c in columns), 1.0]]}})
    assert twice.status_code == 422 and "['Income'] appear more than once" in twice.json()["detail"]["error"]
    empty = httpx.post(f"{server.url}/v1/decisions", json={"rows": []}, headers=decide)
    assert empty.status_code == 200 and empty.json()["decisions"] == []
    neither = httpx.post(f"{server.url}/v1/decisions", json={"request_id": "x"}, headers=decide)
    assert neither.status_code == 422


def test_auth_401_and_403(home, server):
    url = f"{server.url}/v1/decisions"
    body = {"rows": home.rows[:1]}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers=bearer("ept_not-a-token")).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": home.tokens["decide"]}).status_code == 401
    assert httpx.post(url, json=body, headers=bearer(home.tokens["read"])).status_code == 403
    assert httpx.get(f"{url}/anything", headers=bearer(home.tokens["decide"])).status_code == 403
    stored = (home.paths.home / "service" / "tokens.json").read_text()
    assert all(token not in stored for token in home.tokens.values())


def test_a_token_planted_in_the_token_file_is_refused(home, server, tmp_path, capsys):
    """The token file lives under the home, which the attacker can write: a hash of their own added to it
    (every scope), with the file's MAC kept or dropped, is refused, and so is every other token until
    the file verifies again (503 naming the file; /ready not ready). Before, the planted token decided
    and resolved reviews. A file from before token files were signed is refused the same way until an
    operator signs it as it is (`tokens sign`)."""
    import hashlib

    path = home.paths.home / "service" / "tokens.json"
    original = path.read_bytes()
    document = json.loads(original)
    planted = {"name": "mallory", "sha256": hashlib.sha256(b"ept_mallory").hexdigest(),
               "scopes": ["decide", "read", "review"], "created_at": "2026-12-01T00:00:00+00:00"}
    url = f"{server.url}/v1/decisions"
    try:
        for forged in ({**document, "tokens": [*document["tokens"], planted]},
                       {"tokens": [*document["tokens"], planted]}):
            path.write_text(json.dumps(forged))
            for token in ("ept_mallory", home.tokens["decide"]):
                answer = httpx.post(url, json={"rows": home.rows[:1]}, headers=bearer(token), timeout=30)
                assert answer.status_code == 503, answer.text
                assert "is not signed with the platform's signing key" in answer.json()["detail"]["error"]
            ready = httpx.get(f"{server.url}/ready").json()
            assert not ready["ready"] and any(w.startswith("TOKENS REFUSED") for w in ready["warnings"])
    finally:
        path.write_bytes(original)
    assert httpx.post(url, json={"rows": home.rows[:1]}, headers=bearer(home.tokens["decide"]),
                      timeout=30).status_code == 200
    # Put back after tokens changed (removing tokens is the revocation): the older signed file is refused
    # against the checkpoint outside the home (it brought a removed token back; found by re-review).
    TokenStore.for_home(home.paths).create_token("temporary", ["read"])
    current = path.read_bytes()
    path.write_bytes(original)
    try:
        answer = httpx.post(url, json={"rows": home.rows[:1]}, headers=bearer(home.tokens["decide"]), timeout=30)
        assert answer.status_code == 503 and "is not the one last written" in answer.json()["detail"]["error"]
    finally:
        path.write_bytes(current)
    assert httpx.post(url, json={"rows": home.rows[:1]}, headers=bearer(home.tokens["decide"]),
                      timeout=30).status_code == 200
    # A token file written before files were signed: refused by `serve`'s store, signed by the operator.
    legacy = PlatformPaths(tmp_path / "legacy")
    (legacy.home / "service").mkdir(parents=True)
    (legacy.home / "service" / "tokens.json").write_text(json.dumps({"tokens": document["tokens"]}))
    with pytest.raises(TokenError, match="not signed"):
        TokenStore.for_home(legacy).tokens()
    assert service_cli.main(["--home", str(legacy.home), "tokens", "sign"]) == 0
    assert "decide: decide" in capsys.readouterr().out
    assert TokenStore.for_home(legacy).authenticate(home.tokens["decide"]).name == "decide"


# --- faults, refusal and the log, on an in-process server ---------------------------------------

@pytest.fixture
def fault_server(home, tmp_path):
    """A server whose runtime has a raising and a slow member, logging into its own store."""
    manifest, runtime, sha = load_verified_bundle(home.bundle, home.manifest_sha256)
    members = dict(runtime.members)
    members["xgboost"] = Raising()
    members["random_forest"] = Sleeping(members["random_forest"], 2.0)
    decider = Decider(dataclasses.replace(runtime, members=members), manifest, member_timeout_s=0.4, min_members=4)
    log = DecisionLog(home.paths.home / "decisions" / f"faults-{tmp_path.name}.sqlite", paths=home.paths,
                      name=f"faults-{tmp_path.name}")
    app = create_app(decider, log, TokenStore.for_home(home.paths), manifest_sha256=sha)
    with ServerThread(app) as running:
        yield running, decider, log
    decider.close()
    log.close()


def test_degraded_decisions_refusals_and_a_broken_log(home, fault_server):
    running, decider, log = fault_server
    decide = bearer(home.tokens["all"])
    response = httpx.post(f"{running.url}/v1/decisions", json={"rows": home.rows[:3]}, headers=decide, timeout=30)
    assert response.status_code == 200, response.text
    for row in response.json()["decisions"]:
        assert row["degraded"] and row["needs_review"] and "degraded" in row["review_reasons"]
        assert set(row["excluded_members"]) == {"xgboost", "random_forest"}
        assert row["members"]["random_forest"]["reason"] == "timeout"
        assert row["members"]["xgboost"]["reason"] == "exception"
    record = log.get(response.json()["decisions"][0]["decision_id"])
    assert record["degraded"] and "member backend unavailable" in record["excluded_members"]["xgboost"]
    # The degraded decision replays to the same bits through the real bundle, with the same exclusions.
    from ensemble_platform.service.replay import replay_record

    assert replay_record(record, home.paths).identical

    decider.min_members = 5
    refused = httpx.post(f"{running.url}/v1/decisions", json={"request_id": "r1", "rows": home.rows[:2]},
                         headers=decide, timeout=30)
    assert refused.status_code == 503 and "fewer than min_members=5" in refused.json()["detail"]["reason"]
    refusal = log.get(refused.json()["detail"]["refusal_id"])
    assert refusal["kind"] == "refusal" and refusal["request_id"] == "r1" and len(refusal["input_sha256"]) == 2
    metrics = httpx.get(f"{running.url}/metrics").text
    assert 'ensemble_service_member_failures_total{member="random_forest",reason="timeout"}' in metrics
    assert "ensemble_service_refusals_total 1.0" in metrics
    assert "ensemble_service_degraded_decisions_total 3.0" in metrics

    decider.min_members = 4
    count = log.count()
    log.store.close()  # the log can no longer be written
    broken = httpx.post(f"{running.url}/v1/decisions", json={"rows": home.rows[:1]}, headers=decide, timeout=30)
    assert broken.status_code == 503 and "decision log not writable" in broken.json()["detail"]["error"]
    assert httpx.get(f"{running.url}/ready").status_code == 503
    assert "ensemble_service_decision_log_failures_total 1.0" in httpx.get(f"{running.url}/metrics").text
    reopened = DecisionLog(log.path, paths=home.paths, name=log.store.name)
    assert reopened.count() == count
    reopened.close()


def test_no_auth_is_loud(home, tmp_path):
    manifest, runtime, sha = load_verified_bundle(home.bundle, home.manifest_sha256)
    decider = Decider(runtime, manifest)
    log = DecisionLog(tmp_path / "d.sqlite", paths=home.paths, name=f"noauth-{tmp_path.name}")
    with ServerThread(create_app(decider, log, None, auth=False, manifest_sha256=sha)) as running:
        ready = httpx.get(f"{running.url}/ready")
        assert "AUTHENTICATION DISABLED" in ready.json()["auth"] and ready.json()["warnings"]
        assert ready.headers["X-Auth-Disabled"] == "true"
        assert httpx.post(f"{running.url}/v1/decisions", json={"rows": home.rows[:1]}).status_code == 200
        assert "ensemble_service_auth_disabled 1.0" in httpx.get(f"{running.url}/metrics").text
    decider.close()
    log.close()


# --- restart and SIGKILL under load -------------------------------------------------------------

@pytest.mark.parametrize("attack, reason", [
    ("edit", "edited|forged"),
    ("truncate", "truncated|checkpoint"),
    ("delete-middle", "deleted, inserted or reordered"),
], ids=["edited-record", "dropped-last-record", "deleted-record"])
def test_decisions_verify_catches_a_tampered_log(home, server, capsys, attack, reason):
    """Someone with write access to decisions.sqlite (no key): `decisions verify` names the damage."""
    import sqlite3

    response = httpx.post(f"{server.url}/v1/decisions", json={"rows": home.rows[:3]},
                          headers=bearer(home.tokens["decide"]), timeout=30)
    assert response.status_code == 200
    log = DecisionLog.for_home(home.paths)
    db_path = log.path
    log.close()
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT seq, record_id, kind, created_at, entry FROM entries ORDER BY seq").fetchall()
        last, middle = rows[-1], rows[len(rows) // 2]
        if attack == "edit":
            flipped = re.sub(r'"decision":(\d)', lambda m: f'"decision":{1 - int(m.group(1))}', middle[4], count=1)
            assert flipped != middle[4]
            db.execute("UPDATE entries SET entry = ? WHERE seq = ?", (flipped, middle[0]))
        else:
            victim = last if attack == "truncate" else middle
            db.execute("DELETE FROM entries WHERE seq = ?", (victim[0],))
    try:
        capsys.readouterr()
        assert run_cli(home, "decisions", "verify") == 2
        err = capsys.readouterr().err
        assert re.search(reason, err), err
        exported = home.paths.home.parent / f"export-{attack}.jsonl"  # nothing leaves a tampered log
        assert run_cli(home, "decisions", "export", "--output", str(exported)) == 2
        assert re.search(reason, capsys.readouterr().err) and not exported.exists()
    finally:
        with sqlite3.connect(db_path) as db:
            db.execute("DELETE FROM entries")
            db.executemany("INSERT INTO entries (seq, record_id, kind, created_at, entry) VALUES (?, ?, ?, ?, ?)", rows)
    assert run_cli(home, "decisions", "verify") == 0


def test_restart_keeps_the_chain_and_sigkill_loses_no_acknowledged_decision(home, server):
    server.stop()  # the module's server: a graceful stop
    log = DecisionLog.for_home(home.paths)
    log.verify()
    before = sum(e["kind"] == "decision" for e in log.entries())
    log.close()

    running = Server(home)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(headers=bearer(home.tokens["decide"]), timeout=30) as http:
            for i in range(50):
                if stop.is_set():
                    return
                row = home.rows[(worker * 50 + i) % len(home.rows)]
                try:
                    response = http.post(f"{running.url}/v1/decisions", json={"rows": [row]})
                except httpx.HTTPError:
                    return  # the server died under us
                if response.status_code == 200:
                    with lock:
                        acked.append(response.json()["decisions"][0]["decision_id"])

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < 80 and time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    running.stop(signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert len(acked) >= 80

    restarted = Server(home)  # opens the store: its tail check runs against the checkpoint
    try:
        after = DecisionLog.for_home(home.paths)
        total = after.verify()
        stored = {e["id"] for e in after.entries() if e["kind"] == "decision"}
        after.close()
        assert set(acked) <= stored
        # Each unacknowledged request held one row: at most one durable-but-unanswered decision per client
        # (review items, written with their decisions, are not counted).
        assert len(acked) <= len(stored) - before <= len(acked) + 4
        response = httpx.post(f"{restarted.url}/v1/decisions", json={"rows": home.rows[:1]},
                              headers=bearer(home.tokens["decide"]), timeout=30)
        assert response.status_code == 200
        written = 2 if response.json()["decisions"][0]["needs_review"] else 1  # the decision (+ its queue item)
    finally:
        restarted.stop()
    final = DecisionLog.for_home(home.paths)
    assert final.verify() == total + written
    final.close()
