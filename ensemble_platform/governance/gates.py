"""Automated release gates: the checks an ensemble version must pass (or a reviewer must waive,
on the record) before it may be approved and promoted.

Gates are computed from the version's documents only (config, validation, calibration and
fairness reports, the Great Expectations result), so they can be re-read and re-checked at
approval time without re-running anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from pydantic import BaseModel, ConfigDict

from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.policy import GapThreshold, GovernancePolicy

ENSEMBLE = "ensemble"
FAIRNESS_PREFIX = "fairness."


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


@dataclass(frozen=True)
class GateInputs:
    """The documents of one version the gates judge (each written for this very config)."""

    config: EnsembleConfig
    validation: dict
    calibration: dict
    fairness: dict
    data_validation: dict | None


@dataclass(frozen=True)
class Verdict:
    """What one gate measured against which threshold, and whether it passed."""

    description: str
    threshold: float | int | str
    value: float | int | str | None
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class GateRule:
    """One row of the gate table: the gate's name, whether a reviewer may waive it, how it is judged."""

    name: str
    waivable: bool
    evaluate: Callable[[GateInputs], Verdict]

    def judge(self, inputs: GateInputs) -> Gate:
        verdict = self.evaluate(inputs)
        return Gate(name=self.name, description=verdict.description, threshold=verdict.threshold,
                    value=verdict.value, passed=bool(verdict.passed), waivable=self.waivable, detail=verdict.detail)


def gate_table(policy: GovernancePolicy) -> list[GateRule]:
    """Every gate the platform evaluates, in report order (fixed: Dagster declares one check each).
    Structural gates are not waivable: a reviewer may not waive bad data, a one-model "ensemble" or
    review routing off. One fairness gate per gap of the policy."""
    return [
        GateRule("data_validation", False, lambda d: _data_validation(d.data_validation)),
        GateRule("oof_log_loss_vs_best_member", True, lambda d: _log_loss_vs_best_member(
            "out-of-fold (training rows, cross-validated)", d.validation["selection"]["ensemble_out_of_fold"],
            d.validation["selection"]["members_out_of_fold"], d.config.governance.gates.oof_log_loss_tolerance)),
        GateRule("holdout_log_loss_vs_best_member", True, lambda d: _log_loss_vs_best_member(
            "holdout", d.validation["ensemble"], d.validation["members"],
            d.config.governance.gates.holdout_log_loss_tolerance)),
        GateRule("calibration_ece", True, lambda d: _calibration_ece(d.calibration, d.config.governance)),
        *(GateRule(FAIRNESS_PREFIX + gap, True, partial(_fairness_gap, gap, threshold))
          for gap, threshold in policy.fairness.gap_thresholds().items()),
        GateRule("min_members", False, lambda d: _min_members(d.config)),
        GateRule("agreement_threshold", False, lambda d: _agreement_threshold(d.config)),
    ]


def gate_names(policy: GovernancePolicy) -> list[str]:
    """Every gate the platform evaluates, in report order."""
    return [rule.name for rule in gate_table(policy)]


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
    inputs = GateInputs(config, validation, calibration, fairness, data_validation)
    return GateReport(dataset=config.dataset, ensemble_version=config.version, config_hash=config.config_hash,
                      gates=tuple(rule.judge(inputs) for rule in gate_table(config.governance)))


def _data_validation(result: dict | None) -> Verdict:
    description = "the Great Expectations suite passed on the data this version was built from"
    if result is None:
        return Verdict(description, "all expectations met", None, False,
                       "no Great Expectations result is recorded for this version's data hash")
    value = f"{result['successful']} of {result['evaluated']} met"
    failed = [f"{o['expectation']}({o['column'] or 'table'})" for o in result.get("outcomes", []) if not o["success"]]
    return Verdict(description, "all expectations met", value, bool(result["success"]),
                   "failed: " + ", ".join(failed) if failed else "")


def _log_loss_vs_best_member(where: str, ensemble: dict, members: dict[str, dict], tolerance: float) -> Verdict:
    best = min(members, key=lambda m: members[m]["log_loss"])
    excess = float(ensemble["log_loss"] - members[best]["log_loss"])
    return Verdict(
        f"{where} log loss of the ensemble minus that of the best member; at most the tolerance",
        tolerance, excess, excess <= tolerance,
        f"ensemble {ensemble['log_loss']:.4f} vs best member {best} {members[best]['log_loss']:.4f}",
    )


def _calibration_ece(calibration: dict, policy: GovernancePolicy) -> Verdict:
    ece = float(calibration["headline"]["ece_after"])
    return Verdict(
        f"holdout expected calibration error after the post-hoc calibrator ({policy.calibration_bins} "
        "equal-width bins); at most the ceiling",
        policy.gates.max_ece, ece, ece <= policy.gates.max_ece,
        f"calibrator {calibration['headline']['calibrator']}; before calibration {calibration['headline']['ece_before']:.4f}",
    )


def _fairness_gap(gap: str, threshold: GapThreshold, inputs: GateInputs) -> Verdict:
    """One gap over every sensitive attribute: it fails when any attribute's ensemble gap is past
    its fail threshold. Thin attributes are not judged (and said so)."""
    judged, parts, failed = [], [], []
    for attribute, block in inputs.fairness.get("attributes", {}).items():
        result = block["gaps"][ENSEMBLE][gap]
        parts.append(f"{attribute}: " + ("thin, not judged" if result["value"] is None
                                         else f"{result['value']:.3f} ({result['status']})"))
        if result["value"] is not None:
            judged.append(result["value"])
        if result["status"] == "fail":
            failed.append(attribute)
    worst = (max(judged) if threshold.higher_is_worse else min(judged)) if judged else None
    kind = "at most" if threshold.higher_is_worse else "at least"
    return Verdict(
        f"ensemble {gap.replace('_', ' ')} over every sensitive attribute; {kind} the fail threshold",
        threshold.fail, worst, not failed,
        ("; ".join(parts) or "no sensitive attributes in the spec") + (f"; failing: {failed}" if failed else ""),
    )


def _min_members(config: EnsembleConfig) -> Verdict:
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
    return Verdict("served members; at least min_members (itself at least 2), or one under model selection",
                   required, n, required >= 2 and (n >= required or config.model_selection), note)


def _agreement_threshold(config: EnsembleConfig) -> Verdict:
    floor = config.governance.gates.min_agreement_threshold
    value = config.agreement_threshold
    return Verdict("the review threshold on member agreement is set and at least the floor "
                   "(below it review routing is effectively off)", floor, value, value >= floor)


# The gates a reviewer may not waive (the structural rows of the table).
NOT_WAIVABLE = frozenset(rule.name for rule in gate_table(GovernancePolicy()) if not rule.waivable)
