"""The release path on a real MLflow sqlite store and a real Dagster instance, in temp homes:
validate -> gates -> reject -> approve -> staging -> production -> bundle -> load -> predict ->
new version -> rollback, and every refusal leaving the registry and the logs as they were."""

import json

import dagster as dg
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.client import MlflowClient

from ensemble_platform import cli
from ensemble_platform.definitions import build_definitions
from ensemble_platform.governance.approvals import ReleaseRefused
from ensemble_platform.governance.release import BUNDLE_TAGS, Release
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform.settings import PlatformPaths
from ensemble_platform_tests.conftest import write_spec

DATASET = "credit_slice"


def _frozen(release: Release) -> tuple:
    """Everything a refused operation must leave untouched."""
    audit = release.paths.audit_dir(DATASET)
    logs = {p.name: p.read_text() for p in sorted(audit.glob("*.jsonl"))} if audit.is_dir() else {}
    bundles = release.paths.bundles_dir(DATASET)
    listing = sorted(str(p.relative_to(bundles)) for p in bundles.rglob("*")) if bundles.is_dir() else []
    return release.registry.snapshot(DATASET), logs, listing


def _cli(home, *args) -> int:
    return cli.main(["--home", str(home), *args, "--dataset", DATASET])


def _refused(release: Release, capsys, home, *args, match: str) -> None:
    before = _frozen(release)
    assert _cli(home, *args) == 2
    assert match in capsys.readouterr().err
    assert _frozen(release) == before


def _stage(release: Release, version: str) -> str | None:
    return release.registry.stage_state(DATASET).stage_of(str(release.registry.ensemble_version(DATASET, version).version))


def test_release_path_end_to_end(tmp_path, credit_slice, capsys, monkeypatch):
    spec_path = write_spec(tmp_path / "dataset", credit_slice)
    home = tmp_path / "home"
    assert cli.main(["--home", str(home), "demo", "--dataset", str(spec_path)]) == 0
    paths = PlatformPaths.from_env(home)
    release = Release(paths)
    defs = build_definitions(str(home), str(spec_path))
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    client = MlflowClient(paths.mlflow_tracking_uri, paths.mlflow_tracking_uri)

    # Validated and gated: a candidate. On this small slice calibration and the Age gaps fail.
    state = release.state(DATASET, "1.0.0")
    failing = state.gates.failing
    assert "calibration_ece" in failing and any(g.startswith("fairness.") for g in failing)
    assert _stage(release, "1.0.0") == "candidate"
    assert release.registry.aliases(f"{DATASET}.ensemble") == {"candidate": "1"}
    assert release.status(DATASET).versions[0].decision == "pending"
    assert release.status(DATASET).versions[0].gates.startswith("failing: calibration_ece")

    # Unapproved and failing: neither stage takes it.
    _refused(release, capsys, home, "promote", "--version", "1.0.0", "--to", "production",
             match="has no approval for config")
    _refused(release, capsys, home, "promote", "--version", "1.0.0", "--to", "staging", match="without a recorded waiver")

    # A rejection, recorded through the Dagster job with run config.
    config = {"version": "1.0.0", "reviewer": "alice", "decision": "reject", "note": "Age gaps too large"}
    result = defs.resolve_job_def("approval_job").execute_in_process(
        instance=instance, run_config={"ops": {"record_decision": {"config": config}}})
    assert result.success and result.output_for_node("record_decision")["decision"] == "reject"
    approval_tags = client.get_model_version(f"{DATASET}.ensemble", "1").tags
    assert json.loads(approval_tags["ensemble_platform.approval.0001"])["reviewer"] == "alice"

    # Approving needs every failing gate waived, and the config the reviewer actually reviewed.
    _refused(release, capsys, home, "approve", "--version", "1.0.0", "--reviewer", "bob", "--decision", "approve",
             "--note", "fine", match="fail (calibration_ece")
    _refused(release, capsys, home, "approve", "--version", "1.0.0", "--reviewer", "bob", "--decision", "approve",
             "--note", "fine", "--waive", *failing, "--config-hash", "0" * 12, match="is not the config of")
    assert _cli(home, "approve", "--version", "1.0.0", "--reviewer", "bob", "--decision", "approve",
                "--note", "Age proxies documented; pilot only", "--waive", *failing,
                "--config-hash", state.config.config_hash[:12]) == 0
    # Waived on the record: status no longer calls the gates failing.
    capsys.readouterr()
    assert _cli(home, "status") == 0
    status_text = capsys.readouterr().out
    assert "waived: calibration_ece" in status_text and "failing" not in status_text
    card = (paths.version_reports_dir(DATASET, "1.0.0") / "model_card.md").read_text()
    assert "**Approved** by bob" in card and "| 1 | reject | alice |" in card and "WAIVED" in card

    # Staging, then production: aliases on the ensemble and its members, the bundle exported.
    assert _cli(home, "promote", "--version", "1.0.0", "--to", "staging") == 0
    assert release.registry.aliases(f"{DATASET}.xgboost") == {"staging": "1"}
    assert _cli(home, "promote", "--version", "1.0.0", "--to", "production") == 0
    assert release.registry.aliases(f"{DATASET}.ensemble") == {"production": "1"}
    assert release.registry.aliases(f"{DATASET}.xgboost") == {"production": "1"}
    bundle, archive = release.bundle_paths(DATASET, "1.0.0")
    tags = client.get_model_version(f"{DATASET}.ensemble", "1").tags
    assert tags["stage"] == "production" and tags[BUNDLE_TAGS[0]] in archive.with_name(archive.name + ".sha256").read_text()
    promotions = len(release.promotions_log(DATASET).verify())
    assert _cli(home, "promote", "--version", "1.0.0", "--to", "production") == 0  # idempotent
    assert len(release.promotions_log(DATASET).verify()) == promotions

    # The bundle loads as an MLflow model and reproduces the validated holdout scores exactly.
    parity = ParitySet.read(paths.parity_dir(DATASET, "1.0.0"))
    numeric = [c for c in parity.rows.columns if parity.rows[c].dtype.kind in "iuf"]
    served = mlflow.pyfunc.load_model(str(bundle)).predict(parity.rows.astype({c: float for c in numeric}))
    np.testing.assert_array_equal(served["probability"].to_numpy(), parity.scores["probability"].to_numpy())

    # A changed gate threshold is a new (PATCH) version that needs its own approval.
    write_spec(tmp_path / "dataset", credit_slice, governance={"gates": {"max_ece": 0.25}})
    for job in ("ensemble_job", "governance_job"):
        assert defs.resolve_job_def(job).execute_in_process(instance=instance).success
    new = release.state(DATASET, "1.0.1")
    assert new.config.member_versions() == state.config.member_versions()
    assert "calibration_ece" not in new.gates.failing and _stage(release, "1.0.1") == "candidate"
    assert _stage(release, "1.0.0") == "production"  # validation never moves production
    _refused(release, capsys, home, "promote", "--version", "1.0.1", "--to", "production",
             match="has no approval for config")
    assert release.approve(DATASET, "1.0.1", "bob", "approve", "stricter ECE now passes", new.gates.failing).decision == "approve"
    result = defs.resolve_job_def("promotion_job").execute_in_process(
        instance=instance, run_config={"ops": {"promote_version": {"config": {"version": "1.0.1", "to": "staging"}}}})
    assert result.success and _stage(release, "1.0.1") == "staging"

    # A failure half-way through a promotion leaves nothing half-promoted.
    before = _frozen(release)
    calls = {"n": 0}
    original = MlflowClient.set_registered_model_alias

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("registry went away")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", flaky)
    with pytest.raises(RuntimeError, match="registry went away"):
        release.promote(DATASET, "1.0.1", "production")
    monkeypatch.undo()
    assert calls["n"] >= 2 and _frozen(release) == before
    assert not release.bundle_paths(DATASET, "1.0.1")[0].exists()

    # Production moves to 1.0.1; 1.0.0 is archived; rolling back is a recorded promotion.
    assert release.promote(DATASET, "1.0.1", "production").record.replaced == "1.0.0"
    assert (_stage(release, "1.0.0"), _stage(release, "1.0.1")) == ("archived", "production")
    rollback = release.promote(DATASET, "1.0.0", "production", requested_by="oncall")
    assert rollback.record.kind == "rollback" and rollback.record.requested_by == "oncall"
    assert (_stage(release, "1.0.0"), _stage(release, "1.0.1")) == ("production", "archived")
    assert release.registry.aliases(f"{DATASET}.ensemble") == {"production": "1", "archived": "2"}
    assert release.registry.aliases(f"{DATASET}.logistic_regression") == {"production": "1"}
    kinds = [(e["version"], e["to"], e["kind"]) for e in release.promotions_log(DATASET).verify()]
    assert kinds == [("1.0.0", "staging", "promotion"), ("1.0.0", "production", "promotion"),
                     ("1.0.1", "staging", "promotion"), ("1.0.1", "production", "promotion"),
                     ("1.0.0", "production", "rollback")]
    assert _cli(home, "status") == 0 and _cli(home, "audit") == 0
    out = capsys.readouterr().out
    assert "rollback" in out and "both logs verified" in out


def test_approving_a_version_whose_config_changed_since_validation_is_refused(tmp_path, credit_slice, capsys):
    spec_path = write_spec(tmp_path / "dataset", credit_slice, governance={"gates": {"max_ece": 0.5}})
    home = tmp_path / "home"
    assert cli.main(["--home", str(home), "demo", "--dataset", str(spec_path)]) == 0
    release = Release(PlatformPaths.from_env(home))
    config_path = release.paths.configs_dir(DATASET) / "1.0.0.json"
    edited = json.loads(config_path.read_text())
    edited["governance"]["agreement_threshold"] = 0.9  # a governance threshold changed behind validation's back
    config_path.write_text(json.dumps(edited))
    _refused(release, capsys, home, "approve", "--version", "1.0.0", "--reviewer", "bob", "--decision", "reject",
             "--note", "n", match="changed since validation")
    with pytest.raises(ReleaseRefused, match="changed since validation"):
        release.promote(DATASET, "1.0.0", "staging")
