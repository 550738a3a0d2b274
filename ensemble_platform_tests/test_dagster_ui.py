"""What the Dagster UI and `status` tell a person: owners and kinds on every asset, release-gate checks that say
what they check and against which threshold, and gates waived on the record shown as waived."""

from __future__ import annotations

import dagster as dg
import pytest

from ensemble_platform.definitions import build_definitions
from ensemble_platform.defs.assets.reports import gate_check_name
from ensemble_platform.governance.gate_text import gate_descriptions, gates_status
from ensemble_platform.governance.gates import Gate, GateReport, gate_names
from ensemble_platform.policy import FairnessPolicy, GatePolicy, GovernancePolicy


@pytest.fixture(scope="module")
def definitions(tmp_path_factory) -> dg.Definitions:
    return build_definitions(str(tmp_path_factory.mktemp("home")))


def test_every_asset_has_owners_kinds_and_a_description(definitions):
    specs = list(definitions.resolve_all_asset_specs())
    assert len(specs) >= 15
    assert [s.key.to_user_string() for s in specs if not s.owners] == []
    assert [s.key.to_user_string() for s in specs if not s.kinds] == []
    assert [s.key.to_user_string() for s in specs if not s.description] == []
    assert all(owner.startswith("team:") for s in specs for owner in s.owners)


def test_release_gate_checks_say_what_they_check_and_the_threshold(definitions):
    checks = {spec.name: spec.description for spec in definitions.resolve_assets_def("release_gates").check_specs}
    names = gate_names(GovernancePolicy())
    assert set(checks) == {gate_check_name(name) for name in names}
    descriptions = gate_descriptions(GovernancePolicy())
    for name in names:
        text = checks[gate_check_name(name)]
        assert text == descriptions[name] and not text.startswith("release gate") and len(text) > 60, name
    assert "0.05" in checks["gate_calibration_ece"] and "0.005" in checks["gate_oof_log_loss_vs_best_member"]
    assert "at least 0.6" in checks["gate_fairness_demographic_parity_ratio"]
    assert "Not waivable" in checks["gate_data_validation"]


def test_gate_descriptions_follow_the_policy():
    policy = GovernancePolicy(gates=GatePolicy(max_ece=0.08),
                              fairness=FairnessPolicy(demographic_parity_difference={"warn": 0.05, "fail": 0.15}))
    descriptions = gate_descriptions(policy)
    assert "at most 0.08" in descriptions["calibration_ece"]
    assert "at most 0.15" in descriptions["fairness.demographic_parity_difference"]
    assert list(descriptions) == gate_names(policy)


def _report(failing: list[str]) -> GateReport:
    gates = [Gate(name=name, description="d", threshold=0.1, value=0.2, passed=name not in failing, waivable=True)
             for name in ["calibration_ece", "fairness.demographic_parity_difference",
                          "fairness.demographic_parity_ratio", "min_members"]]
    return GateReport(dataset="d", ensemble_version="1.0.0", config_hash="c", gates=tuple(gates))


def test_status_of_the_gates_shows_waivers_on_record():
    fairness = ["fairness.demographic_parity_difference", "fairness.demographic_parity_ratio"]
    assert gates_status(_report([])) == "passed"
    assert gates_status(_report(["calibration_ece", *fairness])) == "failing: calibration_ece, fairness (2 gaps)"
    assert gates_status(_report(["calibration_ece", *fairness]), ["calibration_ece", *fairness]) == \
        "waived: calibration_ece, fairness (2 gaps)"
    assert gates_status(_report(["calibration_ece", *fairness]), fairness[:1]) == \
        "failing: calibration_ece, fairness (1 gap); waived: fairness (1 gap)"
