"""The model card of one ensemble version, generated from the assets' outputs (never edited by
hand): what it is, what it is made of, what data made it, how well and how fairly it decides,
what it is for, which release gates it passed, and whether a human has approved it.

The card is regenerated whenever a decision about the version is recorded, from documents kept
under the version's report folder (`model_card_inputs.json` holds the parts no other document
has), so the CLI can regenerate it without the Dagster run that first wrote it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.files import write_json
from ensemble_platform.governance.figures import frontier_figure, reliability_figure, vote_share_figure
from ensemble_platform.governance.rendering import (
    ReportDocument,
    Section,
    fmt,
    md_inert,
    md_table,
    md_text,
    metrics_table,
    percent,
)
from ensemble_platform.governance.reports import (
    ENSEMBLE,
    REPORTS,
    AgreementData,
    CalibrationData,
    FairnessData,
    ReportContext,
    calibration_metrics_table,
)
from ensemble_platform.governance.shadow_report import evidence_section, shadow_documents
from ensemble_platform.settings import PlatformPaths

NOT_PROVIDED = "_Not provided in the dataset spec._"
SECTIONS = ("Identity", "Constituents", "Combination", "Data lineage", "Evaluation", "Calibration", "Fairness",
            "Agreement", "Intended use and limitations", "Release gates", "Approval status")
CARD_INPUTS = "model_card_inputs.json"
REPORT_FILES = {report.stem: report.html for report in REPORTS}


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
    validation: dict[str, Any]  # validation.json (ensemble.validation's document)
    calibration: CalibrationData
    fairness: FairnessData
    agreement: AgreementData
    data_validation: dict[str, Any] | None  # the Great Expectations result of the data this version was built on
    report_files: dict[str, str]  # report name -> file name beside the card
    gates: dict | None = None  # the release gates (GateReport as JSON)
    approvals: list[dict] = field(default_factory=list)  # decisions recorded for this config, oldest first
    shadow: list[dict] = field(default_factory=list)  # shadow comparisons of this version (governance.shadow_report)


def write_card_inputs(directory: Path, members: list[MemberEntry], spec: DatasetSpec) -> Path:
    """What only the Dagster run knows (member hyper-parameters, the spec), kept beside the card."""
    def plain(value: object) -> object:  # JSON has no NaN (XGBoost's `missing=nan`): keep it as text
        return str(value) if isinstance(value, float) and not math.isfinite(value) else value

    entries = [asdict(m) | {"key_params": {k: plain(v) for k, v in m.key_params.items()}} for m in members]
    return write_json({"members": entries, "spec": spec.model_dump(mode="json")}, directory / CARD_INPUTS)


def load_card_inputs(paths: PlatformPaths, config: EnsembleConfig, approvals: list[dict]) -> ModelCardInputs:
    """Every input of the card of `config`'s version, read from the files the assets wrote."""
    directory = paths.version_reports_dir(config.dataset, config.version)

    def read(name: str) -> dict[str, Any] | None:
        path = directory / name
        return json.loads(path.read_text()) if path.is_file() else None

    def required(name: str) -> dict[str, Any]:
        document = read(name)
        if document is None:
            raise FileNotFoundError(f"{directory / name} is missing; run the governance job for "
                                    f"{config.dataset} {config.version} first")
        return document

    stored = required(CARD_INPUTS)
    gx_path = paths.data_validation_path(config.dataset, config.data_hash)
    return ModelCardInputs(
        config=config,
        spec=DatasetSpec(**stored["spec"]),
        members=[MemberEntry(**m) for m in stored["members"]],
        validation=required("validation.json"),
        # The reports' own JSON, as governance.reports wrote them.
        calibration=cast(CalibrationData, required("calibration.json")),
        fairness=cast(FairnessData, required("fairness.json")),
        agreement=cast(AgreementData, required("agreement.json")),
        data_validation=json.loads(gx_path.read_text()) if gx_path.is_file() else None,
        report_files=REPORT_FILES,
        gates=read("gates.json"),
        approvals=approvals,
        shadow=shadow_documents(paths, config.dataset, config.version, config.config_hash),
    )


def model_card(inputs: ModelCardInputs) -> ReportDocument:
    context = ReportContext.of(inputs.config, int(inputs.validation["lineage"]["holdout_rows"]))
    sections = [_identity(inputs), _constituents(inputs), _combination(inputs), _lineage(inputs),
                _evaluation(inputs), _calibration(inputs), _fairness(inputs), _agreement(inputs),
                _intended_use(inputs), _gates(inputs), _approval(inputs)]
    frontier = _frontier(inputs)
    if frontier is not None:
        sections.insert(3, frontier)
    if inputs.shadow:  # only once the version has shadowed production (`shadow report`)
        sections.insert(-1, evidence_section(inputs.shadow))
    return ReportDocument(f"Model card: {context.dataset} ensemble {context.version}", context.subtitle(), sections)


def _identity(inputs: ModelCardInputs) -> Section:
    c = inputs.config
    rows: list[list[object]] = [["dataset", c.dataset], ["ensemble version", c.version], ["strategy", c.strategy],
            ["config hash", f"`{c.config_hash}`"], ["registered model", f"{c.registered_model} v{c.registered_version}"],
            ["members served", len(c.members)], ["members evaluated but pruned", len(c.pruned)],
            ["decision threshold", c.decision_threshold]]
    return Section("Identity", md_table(["property", "value"], rows) + (
        "\n\nThe version follows semver: MAJOR when the strategy changes, MINOR when a member version "
        "changes, PATCH when weights, the calibrator or governance thresholds change."))


def _constituents(inputs: ModelCardInputs) -> Section:
    holdout = inputs.validation["members"]
    rows = [[m.name, m.family, m.registered_model, m.version, f"`{m.run_id}`",
             ", ".join(f"{k}={v}" for k, v in m.key_params.items()) or "library defaults",
             holdout[m.name]["roc_auc"], holdout[m.name]["log_loss"]] for m in inputs.members]
    table = md_table(["member", "family", "registered model", "version", "MLflow run", "key hyper-parameters",
                      "holdout AUC", "holdout log loss"], rows)
    pruned = inputs.config.pruned
    if not pruned:
        return Section("Constituents", table)
    pruned_rows = [[m.name, m.family, m.registered_model, m.version, md_text(m.reason),
                    holdout[m.name]["roc_auc"] if m.name in holdout else None,
                    holdout[m.name]["log_loss"] if m.name in holdout else None] for m in pruned]
    return Section("Constituents", table + (
        "\n\n**Evaluated but pruned**: trained, registered and evaluated, but the chosen combination gives "
        "them no say, so they are not served (not in the bundle, not loaded or called, not counted in "
        "agreement or minimum members). The registry keeps their versions.\n\n")
        + md_table(["member", "family", "registered model", "version", "why pruned", "holdout AUC",
                    "holdout log loss"], pruned_rows))


def _combination(inputs: ModelCardInputs) -> Section:
    c = inputs.config
    names = [m.name for m in c.members]
    selection = inputs.validation["selection"]
    parts = [f"Strategy **{c.strategy}**, chosen on out-of-fold {c.selection_criterion} over "
             f"{selection['folds']} shared folds" + (f" by the {selection['rule']}." if "rule" in selection else ".")]
    if c.model_selection:
        parts.append(f"**Model selection**: no combination beat the best single member beyond fold noise, so this "
                     f"version serves one member, {md_text(names[0])}, alone (its probability, then the calibrator). "
                     "Agreement is that one member's vote against the decision, so review for low agreement "
                     "is in effect off; rows still go to review for unseen categories and missing features.")
    parts.extend(_noise_table(selection))
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
        ["post-hoc calibrator", str(calibrator.get("method", "none")) + (f" {shown}" if shown else "")],
        ["agreement (review) threshold", c.agreement_threshold],
        ["minimum members", f"1 (model selection; min_members {c.min_members} applies to combinations)"
         if c.model_selection else c.min_members],
        ["decision threshold", c.decision_threshold],
    ]))
    return Section("Combination", "\n\n".join(parts))


def _frontier(inputs: ModelCardInputs) -> Section | None:
    """The accuracy-cost frontier (absent in reports written before member costs were measured)."""
    selection = inputs.validation["selection"]
    frontier = selection.get("frontier")
    if not frontier or not any(row.get("cost_per_row") is not None for row in frontier.values()):
        return None
    budget = selection.get("max_cost_ratio")

    def num(value: object, digits: int) -> str:
        return f"{value:.{digits}g}" if isinstance(value, (int, float)) else "-"

    rows = [[name + (" **(chosen)**" if row.get("chosen") else ""), num(row.get("log_loss"), 5),
             num(row.get("roc_auc"), 5), num(row.get("cost_per_row"), 3), num(row.get("cost_ratio"), 3),
             num(row.get("members_called_per_row"), 3), "yes" if row.get("eligible") else "no"]
            for name, row in frontier.items()]
    rule = (f"the best within {budget:g} x the cheapest member's cost (the spec's `selection` block)" if budget
            else "without a cost budget the usual rule over the fixed-cost strategies")
    text = ("Every candidate's out-of-fold accuracy against its expected predict cost per row over the members "
            f"it calls (measured at fit); chosen by {rule}. Cascade and router call members lazily, per row.\n\n"
            + md_table(["candidate", "out-of-fold log loss", "out-of-fold AUC", "seconds / row",
                        "cost / cheapest member", "members called / row", "eligible"], rows))
    return Section("Accuracy-cost frontier", text, [frontier_figure(frontier, budget)])


def _noise_table(selection: dict[str, Any]) -> list[str]:
    """Each candidate's out-of-fold loss against the best one's, fold by fold (absent in reports
    written before the noise rule)."""
    noise, evidence = selection.get("noise"), selection.get("out_of_fold", {})
    if not noise:
        return []
    criterion = selection["criterion"]
    order = [name for name in selection.get("order_of_simplicity", list(noise)) if name in noise]
    rows = [[name, evidence.get(name, {}).get(criterion), f"{noise[name]['mean_difference_to_best']:.5f}",
             f"{noise[name]['standard_error']:.5f}", "yes" if noise[name]["within_noise"] else "no"] for name in order]
    return [f"Candidates in order of simplicity (best out of fold: {md_text(selection['best_out_of_fold'])}); the "
            "simplest one within noise of the best is chosen:",
            md_table(["candidate", f"out-of-fold {criterion}", "mean fold difference to best", "standard error",
                      "within noise"], rows)]


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
        + f"\n\nLift over the best member ({md_text(best)}): AUC {lift['roc_auc']:+.4f}, log loss {lift['log_loss']:+.4f} "
        "(positive is better)."
    ))


def _calibration(inputs: ModelCardInputs) -> Section:
    head = inputs.calibration["headline"]
    return Section("Calibration", (
        f"Calibrator **{md_text(head['calibrator'])}** (fitted on out-of-fold predictions only): holdout ECE "
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
        f"Ensemble worst status: **{md_text(f['summary']['ensemble_worst_status'])}** (all models: "
        f"{md_text(f['summary']['worst_status'])}).\n\n"
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
        "**Intended use.** " + (md_inert(spec.intended_use.strip()) if spec.intended_use else NOT_PROVIDED)
        + "\n\n**Limitations.** " + (md_inert(spec.limitations.strip()) if spec.limitations else NOT_PROVIDED)
    ))


def _gates(inputs: ModelCardInputs) -> Section:
    if inputs.gates is None:
        return Section("Release gates", "_The release gates have not been evaluated for this version._")
    gates = inputs.gates["gates"]
    failing = [g["name"] for g in gates if not g["passed"]]
    latest = inputs.approvals[-1] if inputs.approvals else None
    waived = set(latest["waived"]) if latest and latest["decision"] == "approve" else set()
    verdict = ("**All gates pass.**" if not failing else
               f"**{len(failing)} gate(s) fail:** {md_text(', '.join(failing))}. A version is approved only when each "
               "failing gate is waived by the reviewer, on the record.")
    rows = [[g["name"], g["threshold"], g["value"],
             "pass" if g["passed"] else ("WAIVED" if g["name"] in waived else "FAIL"),
             "yes" if g["waivable"] else "no", g["detail"]] for g in gates]
    return Section("Release gates", verdict + "\n\n" + md_table(
        ["gate", "threshold", "value", "status", "waivable", "detail"], rows))


def _approval(inputs: ModelCardInputs) -> Section:
    records = inputs.approvals
    if not records:
        return Section("Approval status", (
            "**Pending.** No approval is recorded for this version; it is a candidate and may not be "
            "promoted to production."))
    latest = records[-1]
    verdict = ("**Approved**" if latest["decision"] == "approve" else "**Rejected**") + (
        f" by {md_text(latest['reviewer'])} on {md_text(latest['decided_at'])} for config `{latest['config_hash'][:12]}`.")
    history = md_table(["#", "decision", "reviewer", "decided at", "waived gates", "note"],
                       [[r["seq"], r["decision"], r["reviewer"], r["decided_at"], ", ".join(r["waived"]) or "none",
                         r["note"]] for r in records])
    return Section("Approval status", verdict + " The latest decision is in force.\n\n" + history + (
        "\n\nDecisions are kept in the platform's append-only, hash-chained approvals log and on the "
        "MLflow model version's tags."))


def _see(inputs: ModelCardInputs, report: str) -> str:
    name = inputs.report_files.get(report)
    return f"\n\nFull report: [{name}]({name}) (beside this card)." if name else ""
