"""Release gates: known answers on hand-made documents (no fits needed)."""

import pytest

from ensemble_platform.ensemble.config import EnsembleConfig, MemberRef
from ensemble_platform.governance.approvals import ReleaseRefused, check_approvable
from ensemble_platform.governance.gates import NOT_WAIVABLE, evaluate_gates, gate_names
from ensemble_platform.policy import GatePolicy, GovernancePolicy

GAPS = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
        "equal_opportunity_difference")


def _config(n_members=3, **governance) -> EnsembleConfig:
    members = tuple(MemberRef(name=f"m{i}", family="f", registered_model=f"d.m{i}", version="1", run_id="r")
                    for i in range(n_members))
    return EnsembleConfig(dataset="d", version="1.2.3", strategy="weighted_average", members=members,
                          governance=GovernancePolicy(**governance))


def _documents(config, *, ens_oof=0.40, members_oof=(0.42, 0.41), ens_holdout=0.43, members_holdout=(0.44, 0.47),
               ece_after=0.03, gaps=None):
    h = config.config_hash
    metrics = lambda ll: {"log_loss": ll}  # noqa: E731 - the gates read log loss only
    validation = {
        "config_hash": h,
        "ensemble": metrics(ens_holdout),
        "members": {f"m{i}": metrics(v) for i, v in enumerate(members_holdout)},
        "selection": {"ensemble_out_of_fold": metrics(ens_oof),
                      "members_out_of_fold": {f"m{i}": metrics(v) for i, v in enumerate(members_oof)}},
    }
    calibration = {"config_hash": h, "headline": {"ece_after": ece_after, "ece_before": 0.06, "calibrator": "sigmoid"}}
    gaps = gaps or {"Age": {g: (0.05 if g != "demographic_parity_ratio" else 0.9, "pass") for g in GAPS}}
    fairness = {"config_hash": h, "attributes": {
        attribute: {"gaps": {"ensemble": {g: {"value": v, "status": s} for g, (v, s) in values.items()}}}
        for attribute, values in gaps.items()}}
    gx = {"success": True, "evaluated": 40, "successful": 40, "outcomes": []}
    return validation, calibration, fairness, gx


def test_all_gates_pass_on_a_good_version_in_fixed_order():
    config = _config()
    report = evaluate_gates(config, *_documents(config))
    assert report.passed and report.failing == []
    assert report.names == gate_names(config.governance)
    assert report.names[:4] == ["data_validation", "oof_log_loss_vs_best_member", "holdout_log_loss_vs_best_member",
                                "calibration_ece"]
    assert report.config_hash == config.config_hash


def test_log_loss_gates_measure_the_excess_over_the_best_member():
    config = _config(gates=GatePolicy(oof_log_loss_tolerance=0.005, holdout_log_loss_tolerance=0.01))
    # Out of fold: ensemble 0.420 vs best member 0.410 -> excess 0.010 > 0.005: fail.
    # Holdout: ensemble 0.445 vs best member 0.440 -> excess 0.005 <= 0.01: pass.
    report = evaluate_gates(config, *_documents(config, ens_oof=0.42, members_oof=(0.43, 0.41),
                                                ens_holdout=0.445, members_holdout=(0.44, 0.47)))
    oof, holdout = report.gate("oof_log_loss_vs_best_member"), report.gate("holdout_log_loss_vs_best_member")
    assert oof.value == pytest.approx(0.01) and not oof.passed and "m1" in oof.detail
    assert holdout.value == pytest.approx(0.005) and holdout.passed and "m0" in holdout.detail
    # Exactly at the tolerance passes (binary fractions, so the difference is exact).
    exact = _config(gates=GatePolicy(oof_log_loss_tolerance=2**-7))
    edge = evaluate_gates(exact, *_documents(exact, ens_oof=0.5, members_oof=(0.5 - 2**-7,)))
    assert edge.gate("oof_log_loss_vs_best_member").passed


def test_ece_ceiling():
    config = _config(gates=GatePolicy(max_ece=0.05))
    assert evaluate_gates(config, *_documents(config, ece_after=0.05)).gate("calibration_ece").passed
    failed = evaluate_gates(config, *_documents(config, ece_after=0.0501)).gate("calibration_ece")
    assert not failed.passed and failed.value == pytest.approx(0.0501) and failed.threshold == 0.05


def test_fairness_gate_fails_when_any_attribute_fails_and_reports_the_worst_value():
    config = _config()
    gaps = {
        "Age": {"demographic_parity_difference": (0.25, "fail"), "demographic_parity_ratio": (0.55, "fail"),
                "equalized_odds_difference": (0.15, "warn"), "equal_opportunity_difference": (None, "thin")},
        "Marital": {"demographic_parity_difference": (0.05, "pass"), "demographic_parity_ratio": (0.7, "warn"),
                    "equalized_odds_difference": (0.05, "pass"), "equal_opportunity_difference": (None, "thin")},
    }
    report = evaluate_gates(config, *_documents(config, gaps=gaps))
    parity = report.gate("fairness.demographic_parity_difference")
    assert not parity.passed and parity.value == 0.25 and parity.threshold == 0.2 and "failing: ['Age']" in parity.detail
    ratio = report.gate("fairness.demographic_parity_ratio")
    assert not ratio.passed and ratio.value == 0.55  # ratios: the smallest is the worst
    assert report.gate("fairness.equalized_odds_difference").passed  # warn is within the fail threshold
    thin = report.gate("fairness.equal_opportunity_difference")
    assert thin.passed and thin.value is None and thin.detail.count("thin, not judged") == 2


def test_data_validation_gate_fails_without_a_result_or_on_failure():
    config = _config()
    validation, calibration, fairness, _ = _documents(config)
    missing = evaluate_gates(config, validation, calibration, fairness, None).gate("data_validation")
    assert not missing.passed and "no Great Expectations result" in missing.detail
    failed = {"success": False, "evaluated": 3, "successful": 2, "outcomes": [
        {"expectation": "expect_column_to_exist", "column": "Income", "success": False, "observed": "absent"}]}
    gate = evaluate_gates(config, validation, calibration, fairness, failed).gate("data_validation")
    assert not gate.passed and gate.value == "2 of 3 met" and "Income" in gate.detail


def test_structural_gates_min_members_and_agreement_threshold():
    lone = _config(n_members=1, min_members=1)
    assert not evaluate_gates(lone, *_documents(lone)).gate("min_members").passed  # one model is no ensemble
    low = _config(agreement_threshold=0.4)
    gate = evaluate_gates(low, *_documents(low)).gate("agreement_threshold")
    assert not gate.passed and gate.value == 0.4 and gate.threshold == 0.5
    assert {"data_validation", "min_members", "agreement_threshold"} == NOT_WAIVABLE


def test_min_members_counts_served_members_and_accepts_model_selection():
    two_served = _config(n_members=2, min_members=3)
    assert not evaluate_gates(two_served, *_documents(two_served)).gate("min_members").passed
    # Model selection: one member served by choice passes (min_members itself must still be >= 2).
    chosen = _config(n_members=1).model_copy(update={"strategy": "single_member"})
    gate = evaluate_gates(chosen, *_documents(chosen)).gate("min_members")
    assert gate.passed and gate.value == 1 and "model selection" in gate.detail


def test_documents_of_another_config_are_refused():
    config = _config()
    validation, calibration, fairness, gx = _documents(config)
    with pytest.raises(ValueError, match="calibration report is for config"):
        evaluate_gates(config, validation, {**calibration, "config_hash": "ab" * 32}, fairness, gx)


def test_approval_rules_on_failing_gates():
    config = _config(agreement_threshold=0.4)
    report = evaluate_gates(config, *_documents(config, ece_after=0.2))
    assert set(report.failing) == {"calibration_ece", "agreement_threshold"}
    with pytest.raises(ReleaseRefused, match=r"calibration_ece: 0.2 vs threshold 0.05"):
        check_approvable(report, "approve", [])
    with pytest.raises(ReleaseRefused, match="cannot be waived"):
        check_approvable(report, "approve", ["calibration_ece", "agreement_threshold"])
    with pytest.raises(ReleaseRefused, match="no such gate"):
        check_approvable(report, "approve", ["calibration"])
    with pytest.raises(ReleaseRefused, match="the gate passed"):
        check_approvable(report, "approve", ["min_members"])
    check_approvable(report, "reject", [])  # a rejection needs no waiver
    passing = _config()
    good = evaluate_gates(passing, *_documents(passing, ece_after=0.2))
    check_approvable(good, "approve", ["calibration_ece"])  # the one failing gate, waived
