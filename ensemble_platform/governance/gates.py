"""Automated release gates: the checks an ensemble version must pass (or a reviewer must waive,
on the record) before it may be approved and promoted.

Gates are computed from the version's documents only (config, validation, calibration and
fairness reports, the Great Expectations result), so they can be re-read and re-checked at
approval time without re-running anything.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.policy import GovernancePolicy

ENSEMBLE = "ensemble"
FAIRNESS_PREFIX = "fairness."
# Structural gates: a reviewer may not waive bad data, a one-model "ensemble" or review routing off.
NOT_WAIVABLE = frozenset({"data_validation", "min_members", "agreement_threshold"})


class Gate(BaseModel):
    """One gate: what was measured against which threshold, and the verdict."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    threshold: float | int | str
    value: float | int | str | None
    passed: bool
    waivable: bool
    detail: str = ""

    def measured(self) -> str:
        """'value vs threshold', numbers to 4 significant digits."""
        def show(x: object) -> str:
            return f"{x:.4g}" if isinstance(x, float) else str(x)

        return f"{show(self.value)} vs threshold {show(self.threshold)}"


class GateReport(BaseModel):
    """Every gate of one ensemble version, tied to the config hash it judged."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    ensemble_version: str
    config_hash: str
    gates: tuple[Gate, ...]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failing(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.gates]

    def gate(self, name: str) -> Gate:
        for gate in self.gates:
            if gate.name == name:
                return gate
        raise KeyError(f"no gate {name!r}; gates are {self.names}")

    def unwaived_failures(self, waived: list[str] | tuple[str, ...]) -> list[str]:
        return [name for name in self.failing if name not in set(waived)]

    def summary(self) -> str:
        """'passed', or the failing gates with the fairness gaps folded: 'failing: a, fairness (3 gaps)'."""
        if self.passed:
            return "passed"
        plain = [n for n in self.failing if not n.startswith(FAIRNESS_PREFIX)]
        fairness = len(self.failing) - len(plain)
        return "failing: " + ", ".join(plain + ([f"fairness ({fairness} gap{'s' * (fairness > 1)})"] if fairness else []))


def gate_names(policy: GovernancePolicy) -> list[str]:
    """Every gate the platform evaluates, in report order (fixed: Dagster declares one check each)."""
    return ["data_validation", "oof_log_loss_vs_best_member", "holdout_log_loss_vs_best_member",
            "calibration_ece", *(FAIRNESS_PREFIX + gap for gap in policy.fairness.gap_thresholds()),
            "min_members", "agreement_threshold"]


def evaluate_gates(
    config: EnsembleConfig,
    validation: dict,
    calibration: dict,
    fairness: dict,
    data_validation: dict | None,
) -> GateReport:
    """Judge one version; every input must be the document written for this very config."""
    for name, document in (("validation", validation), ("calibration", calibration), ("fairness", fairness)):
        if document.get("config_hash") != config.config_hash:
            raise ValueError(
                f"{name} report is for config {str(document.get('config_hash'))[:12]}, not "
                f"{config.config_hash[:12]} of {config.dataset} {config.version}"
            )
    policy = config.governance
    gates = [
        _data_validation(data_validation),
        _log_loss_vs_best_member("oof_log_loss_vs_best_member", "out-of-fold (training rows, cross-validated)",
                                 validation["selection"]["ensemble_out_of_fold"],
                                 validation["selection"]["members_out_of_fold"], policy.gates.oof_log_loss_tolerance),
        _log_loss_vs_best_member("holdout_log_loss_vs_best_member", "holdout", validation["ensemble"],
                                 validation["members"], policy.gates.holdout_log_loss_tolerance),
        _calibration_ece(calibration, policy),
        *_fairness(fairness, policy),
        _min_members(config),
        _agreement_threshold(config),
    ]
    assert [g.name for g in gates] == gate_names(policy)
    return GateReport(dataset=config.dataset, ensemble_version=config.version, config_hash=config.config_hash,
                      gates=tuple(gates))


def _gate(name: str, description: str, threshold: float | str, value: float | str | None, passed: bool,
          detail: str = "") -> Gate:
    return Gate(name=name, description=description, threshold=threshold, value=value, passed=bool(passed),
                waivable=name not in NOT_WAIVABLE, detail=detail)


def _data_validation(result: dict | None) -> Gate:
    description = "the Great Expectations suite passed on the data this version was built from"
    if result is None:
        return _gate("data_validation", description, "all expectations met", None, False,
                     "no Great Expectations result is recorded for this version's data hash")
    value = f"{result['successful']} of {result['evaluated']} met"
    failed = [f"{o['expectation']}({o['column'] or 'table'})" for o in result.get("outcomes", []) if not o["success"]]
    return _gate("data_validation", description, "all expectations met", value, bool(result["success"]),
                 "failed: " + ", ".join(failed) if failed else "")


def _log_loss_vs_best_member(name: str, where: str, ensemble: dict, members: dict[str, dict],
                             tolerance: float) -> Gate:
    best = min(members, key=lambda m: members[m]["log_loss"])
    excess = float(ensemble["log_loss"] - members[best]["log_loss"])
    return _gate(
        name, f"{where} log loss of the ensemble minus that of the best member; at most the tolerance",
        tolerance, excess, excess <= tolerance,
        f"ensemble {ensemble['log_loss']:.4f} vs best member {best} {members[best]['log_loss']:.4f}",
    )


def _calibration_ece(calibration: dict, policy: GovernancePolicy) -> Gate:
    ece = float(calibration["headline"]["ece_after"])
    return _gate(
        "calibration_ece",
        f"holdout expected calibration error after the post-hoc calibrator ({policy.calibration_bins} "
        "equal-width bins); at most the ceiling",
        policy.gates.max_ece, ece, ece <= policy.gates.max_ece,
        f"calibrator {calibration['headline']['calibrator']}; before calibration {calibration['headline']['ece_before']:.4f}",
    )


def _fairness(fairness: dict, policy: GovernancePolicy) -> list[Gate]:
    """One gate per gap, over every sensitive attribute: it fails when any attribute's ensemble
    gap is past its fail threshold. Thin attributes are not judged (and said so)."""
    gates = []
    for gap, threshold in policy.fairness.gap_thresholds().items():
        judged, parts, failed = [], [], []
        for attribute, block in fairness.get("attributes", {}).items():
            result = block["gaps"][ENSEMBLE][gap]
            parts.append(f"{attribute}: " + ("thin, not judged" if result["value"] is None
                                             else f"{result['value']:.3f} ({result['status']})"))
            if result["value"] is not None:
                judged.append(result["value"])
            if result["status"] == "fail":
                failed.append(attribute)
        worst = (max(judged) if threshold.higher_is_worse else min(judged)) if judged else None
        kind = "at most" if threshold.higher_is_worse else "at least"
        gates.append(_gate(
            FAIRNESS_PREFIX + gap, f"ensemble {gap.replace('_', ' ')} over every sensitive attribute; {kind} "
            "the fail threshold", threshold.fail, worst, not failed,
            ("; ".join(parts) or "no sensitive attributes in the spec") + (f"; failing: {failed}" if failed else ""),
        ))
    return gates


def _min_members(config: EnsembleConfig) -> Gate:
    """Served members (pruned ones do not count) against min_members; model selection (one member
    served because no combination beat it beyond fold noise) passes by choice, saying so."""
    n, required = len(config.members), config.min_members
    if required < 2:
        note = f"min_members {required} allows a one-model 'ensemble'"
    elif config.model_selection:
        note = ("model selection: one member served because no combination beat it beyond fold noise; "
                "min_members applies to combinations, and that member failing refuses the request")
    else:
        note = f"{len(config.pruned)} evaluated member(s) pruned (no say in the combination)" if config.pruned else ""
    return _gate("min_members", "served members; at least min_members (itself at least 2), or one under model "
                 "selection", required, n, required >= 2 and (n >= required or config.model_selection), note)


def _agreement_threshold(config: EnsembleConfig) -> Gate:
    floor = config.governance.gates.min_agreement_threshold
    value = config.agreement_threshold
    return _gate("agreement_threshold", "the review threshold on member agreement is set and at least the floor "
                 "(below it review routing is effectively off)", floor, value, value >= floor)
