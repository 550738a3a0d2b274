"""Words about the release gates for people: what each gate checks and against which threshold (the
descriptions of the Dagster asset checks), and a version's gate status with the waivers on record."""

from __future__ import annotations

from collections.abc import Sequence

from ensemble_platform.governance.gates import FAIRNESS_PREFIX, NOT_WAIVABLE, GateReport
from ensemble_platform.policy import GovernancePolicy


def gate_descriptions(policy: GovernancePolicy) -> dict[str, str]:
    """Gate name -> what it checks and its threshold under `policy` (a spec may set other thresholds
    in `governance:`; each check result carries the threshold it applied)."""
    gates, fairness = policy.gates, policy.fairness
    texts = {
        "data_validation": "The Great Expectations suite built from the spec passed on the data this version was "
                           "built from (every expectation met).",
        "oof_log_loss_vs_best_member": "Out-of-fold log loss (training rows, cross-validated) of the ensemble minus "
                                       "that of its best member is at most "
                                       f"{gates.oof_log_loss_tolerance:g} nats per row (governance.gates."
                                       "oof_log_loss_tolerance).",
        "holdout_log_loss_vs_best_member": "Holdout log loss of the ensemble minus that of its best member is at most "
                                           f"{gates.holdout_log_loss_tolerance:g} nats per row (governance.gates."
                                           "holdout_log_loss_tolerance).",
        "calibration_ece": f"Holdout expected calibration error after the post-hoc calibrator ({policy.calibration_bins} "
                           f"equal-width bins) is at most {gates.max_ece:g} (governance.gates.max_ece).",
    }
    for gap, threshold in fairness.gap_thresholds().items():
        bound = "at most" if threshold.higher_is_worse else "at least"
        texts[FAIRNESS_PREFIX + gap] = (
            f"The ensemble's {gap.replace('_', ' ')} is {bound} {threshold.fail:g} for every sensitive attribute "
            f"(governance.fairness.{gap}.fail; warns past {threshold.warn:g}); groups under "
            f"{fairness.min_group_size} rows are not judged.")
    texts["min_members"] = (f"The ensemble has at least min_members members ({policy.min_members}), and min_members "
                            "is at least 2.")
    texts["agreement_threshold"] = (f"The review threshold on member agreement ({policy.agreement_threshold:g}) is at "
                                    f"least {gates.min_agreement_threshold:g} (governance.gates."
                                    "min_agreement_threshold): below it review routing is effectively off.")
    return {name: text + ("" if name not in NOT_WAIVABLE else " Not waivable.") for name, text in texts.items()}


def _folded(names: Sequence[str]) -> str:
    """Gate names with the fairness gaps folded: 'a, fairness (3 gaps)'."""
    plain = [n for n in names if not n.startswith(FAIRNESS_PREFIX)]
    fairness = len(names) - len(plain)
    return ", ".join(plain + ([f"fairness ({fairness} gap{'s' * (fairness > 1)})"] if fairness else []))


def gates_status(gates: GateReport, waived: Sequence[str] = ()) -> str:
    """'passed'; or the failing gates, those waived by the approval in force shown apart:
    'failing: calibration_ece', 'waived: calibration_ece, fairness (2 gaps)', or both."""
    if gates.passed:
        return "passed"
    unwaived = gates.unwaived_failures(tuple(waived))
    done = [name for name in gates.failing if name not in unwaived]
    parts = [f"failing: {_folded(unwaived)}"] if unwaived else []
    return "; ".join(parts + ([f"waived: {_folded(done)}"] if done else []))
