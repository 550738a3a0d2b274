"""The model card of one ensemble version, generated from the assets' outputs (never edited by
hand): what it is, what it is made of, what data made it, how well and how fairly it decides,
what it is for, and whether a human has approved it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.governance.figures import reliability_figure, vote_share_figure
from ensemble_platform.governance.rendering import ReportDocument, Section, fmt, md_table, metrics_table, percent
from ensemble_platform.governance.reports import ENSEMBLE, ReportContext, calibration_metrics_table

NOT_PROVIDED = "_Not provided in the dataset spec._"
SECTIONS = ("Identity", "Constituents", "Combination", "Data lineage", "Evaluation", "Calibration", "Fairness",
            "Agreement", "Intended use and limitations", "Approval status")


@dataclass(frozen=True)
class MemberEntry:
    name: str
    family: str
    registered_model: str
    version: str
    run_id: str
    key_params: dict[str, object] = field(default_factory=dict)


@dataclass
class ModelCardInputs:
    config: EnsembleConfig
    spec: DatasetSpec
    members: list[MemberEntry]
    validation: dict
    calibration: dict
    fairness: dict
    agreement: dict
    data_validation: dict | None  # the Great Expectations result of the data this version was built on
    report_files: dict[str, str]  # report name -> file name beside the card
    approval: dict | None = None  # filled by the release path; None means pending


def model_card(inputs: ModelCardInputs) -> ReportDocument:
    context = ReportContext.of(inputs.config, int(inputs.validation["lineage"]["holdout_rows"]))
    sections = [_identity(inputs), _constituents(inputs), _combination(inputs), _lineage(inputs),
                _evaluation(inputs), _calibration(inputs), _fairness(inputs), _agreement(inputs),
                _intended_use(inputs), _approval(inputs)]
    return ReportDocument(f"Model card: {context.dataset} ensemble {context.version}", context.subtitle(), sections)


def _identity(inputs: ModelCardInputs) -> Section:
    c = inputs.config
    rows = [["dataset", c.dataset], ["ensemble version", c.version], ["strategy", c.strategy],
            ["config hash", f"`{c.config_hash}`"], ["registered model", f"{c.registered_model} v{c.registered_version}"],
            ["members", len(c.members)], ["decision threshold", c.decision_threshold]]
    return Section("Identity", md_table(["property", "value"], rows) + (
        "\n\nThe version follows semver: MAJOR when the strategy changes, MINOR when a member version "
        "changes, PATCH when weights, the calibrator or governance thresholds change."))


def _constituents(inputs: ModelCardInputs) -> Section:
    holdout = inputs.validation["members"]
    rows = [[m.name, m.family, m.registered_model, m.version, f"`{m.run_id}`",
             ", ".join(f"{k}={v}" for k, v in m.key_params.items()) or "library defaults",
             holdout[m.name]["roc_auc"], holdout[m.name]["log_loss"]] for m in inputs.members]
    return Section("Constituents", md_table(
        ["member", "family", "registered model", "version", "MLflow run", "key hyper-parameters",
         "holdout AUC", "holdout log loss"], rows))


def _combination(inputs: ModelCardInputs) -> Section:
    c = inputs.config
    names = [m.name for m in c.members]
    parts = [f"Strategy **{c.strategy}**, chosen on out-of-fold {c.selection_criterion} over "
             f"{inputs.validation['selection']['folds']} shared folds."]
    for key in ("weights", "member_coefficients"):
        values = c.combiner.get(key)
        if isinstance(values, list) and len(values) == len(names):
            parts.append(md_table(["member", key.replace("_", " ")], zip(names, values)))
    rest = {k: v for k, v in c.combiner.items() if k not in ("weights", "member_coefficients")}
    if rest:
        parts.append("Other combiner parameters: `" + json.dumps(rest, sort_keys=True) + "`")
    calibrator = c.calibration
    params = calibrator.get("params", {})
    shown = {k: v for k, v in params.items() if not isinstance(v, list)} if isinstance(params, dict) else {}
    parts.append(md_table(["setting", "value"], [
        ["post-hoc calibrator", calibrator.get("method", "none") + (f" {shown}" if shown else "")],
        ["agreement (review) threshold", c.agreement_threshold],
        ["minimum members", c.min_members],
        ["decision threshold", c.decision_threshold],
    ]))
    return Section("Combination", "\n\n".join(parts))


def _lineage(inputs: ModelCardInputs) -> Section:
    lineage = inputs.validation["lineage"]
    rows = [["source", inputs.spec.source], ["target", f"{inputs.spec.target} (positive: {inputs.spec.positive_label})"],
            ["training rows", lineage["train_rows"]], ["holdout rows", lineage["holdout_rows"]],
            ["folds", lineage["folds"]], ["data hash", f"`{lineage['data_hash']}`"],
            ["training split hash", f"`{lineage['train_hash']}`"], ["holdout hash", f"`{lineage['holdout_hash']}`"],
            ["sensitive attributes", ", ".join(inputs.spec.sensitive) or "none"],
            ["sensitive attributes used as features", inputs.spec.use_sensitive_as_features]]
    gx = inputs.data_validation
    if gx is None:
        rows.append(["Great Expectations", "no result recorded for this data hash"])
    else:
        verdict = "passed" if gx["success"] else "FAILED"
        rows.append(["Great Expectations", f"{verdict}: {gx['successful']} of {gx['evaluated']} expectations met"])
    return Section("Data lineage", md_table(["property", "value"], rows))


def _evaluation(inputs: ModelCardInputs) -> Section:
    v = inputs.validation
    best = v["best_member"]
    rows = {ENSEMBLE: v["ensemble"], f"best member ({best})": v["members"][best],
            **{f"member: {k}": m for k, m in v["members"].items()}}
    lift = v["lift_over_best_member"]
    return Section("Evaluation", (
        "Holdout metrics (rows no fit and no choice has seen):\n\n" + metrics_table(rows, highlight=ENSEMBLE)
        + f"\n\nLift over the best member ({best}): AUC {lift['roc_auc']:+.4f}, log loss {lift['log_loss']:+.4f} "
        "(positive is better)."
    ))


def _calibration(inputs: ModelCardInputs) -> Section:
    head = inputs.calibration["headline"]
    return Section("Calibration", (
        f"Calibrator **{head['calibrator']}** (fitted on out-of-fold predictions only): holdout ECE "
        f"{fmt(head['ece_before'])} → **{fmt(head['ece_after'])}**.\n\n" + calibration_metrics_table(inputs.calibration)
        + _see(inputs, "calibration")
    ), [reliability_figure(inputs.calibration["reliability"], highlight=ENSEMBLE)])


def _fairness(inputs: ModelCardInputs) -> Section:
    f = inputs.fairness
    rows = []
    for attribute, block in f["attributes"].items():
        for gap, g in block["gaps"][ENSEMBLE].items():
            rows.append([attribute, gap, g["value"], g["status"], len(block["judged_groups"])])
    if not rows:
        return Section("Fairness", "No sensitive attributes are listed in the dataset spec, so no fairness "
                                   "analysis was possible." + _see(inputs, "fairness"))
    return Section("Fairness", (
        f"Ensemble worst status: **{f['summary']['ensemble_worst_status']}** (all models: "
        f"{f['summary']['worst_status']}).\n\n"
        + md_table(["attribute", "gap", "ensemble value", "status", "judged groups"], rows, digits=3)
        + _see(inputs, "fairness")
    ))


def _agreement(inputs: ModelCardInputs) -> Section:
    a = inputs.agreement
    acc = a["accuracy_by_agreement"]
    return Section("Agreement", (
        f"{percent(a['review']['share'])} of holdout decisions fall below the agreement threshold "
        f"{a['review_threshold']:g} and go to human review. Accuracy {fmt(acc['high']['accuracy'], 3)} at high "
        f"agreement versus {fmt(acc['low']['accuracy'], 3)} at low agreement."
        + _see(inputs, "agreement")
    ), [vote_share_figure(a["vote_share"]["levels"], a["review_threshold"])])


def _intended_use(inputs: ModelCardInputs) -> Section:
    spec = inputs.spec
    return Section("Intended use and limitations", (
        "**Intended use.** " + (spec.intended_use.strip() if spec.intended_use else NOT_PROVIDED)
        + "\n\n**Limitations.** " + (spec.limitations.strip() if spec.limitations else NOT_PROVIDED)
    ))


def _approval(inputs: ModelCardInputs) -> Section:
    if inputs.approval is None:
        return Section("Approval status", (
            "**Pending.** No approval is recorded for this version; it is a candidate and may not be "
            "promoted to production."))
    a = inputs.approval
    return Section("Approval status", md_table(["property", "value"], [[k, v] for k, v in a.items()]))


def _see(inputs: ModelCardInputs, report: str) -> str:
    name = inputs.report_files.get(report)
    return f"\n\nFull report: [{name}]({name}) (beside this card)." if name else ""
