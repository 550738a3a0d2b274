"""The calibration, fairness and agreement reports of one ensemble version: their JSON numbers
(assembled from the evaluation modules) and the documents a reviewer reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict, cast

import numpy as np
import pandas as pd

from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.ensemble.build import EnsembleBuild
from ensemble_platform.ensemble.calibrators import CalibrationChoice
from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.ensemble.cost_aware import LazyCombiner, route_labels, routing_rates
from ensemble_platform.ensemble.predictions import MemberPredictions, matrix
from ensemble_platform.evaluation.agreement_report import AgreementNumbers, agreement_report
from ensemble_platform.evaluation.calibration import calibration_metrics, reliability_table
from ensemble_platform.evaluation.fairness import (
    FairnessNumbers,
    SensitiveBinning,
    fairness_report,
    fit_sensitive_binning,
)
from ensemble_platform.governance.figures import (
    ReliabilityRow,
    fairness_gap_figure,
    matrix_figure,
    reliability_figure,
    vote_share_figure,
)
from ensemble_platform.governance.rendering import ReportDocument, Section, fmt, md_table, md_text, percent

ENSEMBLE = "ensemble"
UNCALIBRATED = "ensemble (before calibration)"


# --- the reports' JSON documents (what `<stem>.json` holds, and what the model card reads back) ---

class ReportHeader(TypedDict):
    dataset: str
    ensemble_version: str
    config_hash: str
    holdout_rows: int


class CalibratorRecord(TypedDict):
    """`CalibrationChoice.describe()` plus the cross-validated evidence of every candidate."""

    method: str
    criterion: str
    params: dict[str, object]
    fitted_on: str
    rows: int
    out_of_fold_evidence: dict[str, dict[str, float]]  # method -> scores


class CalibrationHeadline(TypedDict):
    calibrator: str
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float


class CalibrationData(ReportHeader):
    n_bins: int
    calibrator: CalibratorRecord
    metrics: dict[str, dict[str, float]]  # model -> calibration metric -> value
    reliability: dict[str, list[ReliabilityRow]]  # model -> bins
    headline: CalibrationHeadline


class _FairnessBase(ReportHeader, FairnessNumbers):
    binning: dict[str, dict[str, object]]  # column -> SensitiveBinning.describe()


class FairnessData(_FairnessBase, total=False):
    # Lazy strategies only (router, cascade): attribute -> group -> route -> share of the group's rows.
    routing: dict[str, dict[str, dict[str, float]]]


class AgreementData(ReportHeader, AgreementNumbers):
    pass


@dataclass(frozen=True)
class ReportContext:
    """What every report names: which ensemble version, of which dataset, on which rows."""

    dataset: str
    version: str
    config_hash: str
    holdout_rows: int

    @classmethod
    def of(cls, config: EnsembleConfig, holdout_rows: int) -> ReportContext:
        return cls(config.dataset, config.version, config.config_hash, holdout_rows)

    def header(self) -> ReportHeader:
        return {"dataset": self.dataset, "ensemble_version": self.version, "config_hash": self.config_hash,
                "holdout_rows": self.holdout_rows}

    def subtitle(self) -> str:
        return (f"{self.dataset} · ensemble {self.version} · config {self.config_hash[:12]} · "
                f"{self.holdout_rows} holdout rows no model or choice has seen")


@dataclass(frozen=True)
class HoldoutView:
    """One ensemble version's holdout probabilities: each member's (the validated predictions,
    not a second pass), the combiner's before calibration and the served (calibrated) ones."""

    build: EnsembleBuild
    split: TrainHoldoutSplit
    member_names: tuple[str, ...]
    P: np.ndarray
    before: np.ndarray
    after: np.ndarray

    @classmethod
    def of(cls, build: EnsembleBuild, predictions: MemberPredictions, split: TrainHoldoutSplit) -> HoldoutView:
        served = [m.name for m in build.config.members]  # pruned members have no say (the runtime may hold no models)
        P = matrix(predictions.holdout, served)
        before, after = build.runtime.proba_from_members(P, split.X_holdout())
        return cls(build, split, tuple(served), P, before, after)

    @property
    def config(self) -> EnsembleConfig:
        return self.build.config

    @property
    def context(self) -> ReportContext:
        return ReportContext.of(self.config, len(self.split.y_holdout))

    def members(self) -> dict[str, np.ndarray]:
        return {name: self.P[:, j] for j, name in enumerate(self.member_names)}

    def segments(self, columns: list[str], n_bins: int) -> tuple[list[SensitiveBinning], dict[str, pd.Series]]:
        """Binnings fitted on the training rows, and the holdout's group label per column."""
        binnings = [fit_sensitive_binning(self.split.train, column, n_bins) for column in columns]
        return binnings, segment_labels(self.split.holdout, binnings)


@dataclass
class Report:
    """A finished report: its numbers, its document, and the headline shown in the Dagster UI
    (numeric entries are also logged as MLflow metrics `<stem>_<key>`)."""

    stem: str
    data: Mapping[str, object]
    document: ReportDocument
    headline: dict[str, float | str | None]
    tables: dict[str, str] = field(default_factory=dict)  # extra Markdown for the UI


def build_calibration_report(view: HoldoutView, spec: DatasetSpec) -> Report:
    data = calibration_data(view.context, view.split.y_holdout, view.before, view.after, view.members(),
                            view.build.calibration, view.config.governance.calibration_bins)
    head = data["headline"]
    return Report("calibration", data, calibration_document(data, view.context), {
        "calibrator": head["calibrator"], "ece_before": head["ece_before"], "ece_after": head["ece_after"],
        "brier_before": head["brier_before"], "brier_after": head["brier_after"],
    })


def build_fairness_report(view: HoldoutView, spec: DatasetSpec) -> Report:
    binnings, groups = view.segments(list(spec.sensitive), spec.sensitive_bins)
    governance = view.config.governance
    data: FairnessData = {
        **view.context.header(),
        "binning": {b.column: b.describe() for b in binnings},
        **fairness_report(view.split.y_holdout, {ENSEMBLE: view.after, **view.members()}, groups,
                          governance.fairness, governance.decision_threshold,
                          calibration_bins=governance.calibration_bins),
    }
    combiner = view.build.runtime.combiner
    if isinstance(combiner, LazyCombiner):  # routing rates by sensitive group (holdout)
        X = view.split.X_holdout() if combiner.needs_features else None
        data["routing"] = routing_rates(route_labels(combiner, view.P, X, list(view.member_names)),
                                        {a: pd.Series(np.asarray(g)) for a, g in groups.items()})
    summary = data["summary"]
    gaps = [[f"{attribute}: {gap}", g["value"], g["status"]] for attribute, block in data["attributes"].items()
            for gap, g in block["gaps"][ENSEMBLE].items()]
    return Report(
        "fairness", data, fairness_document(data, view.context),
        {"ensemble_worst_status": summary["ensemble_worst_status"], "worst_status_all_models": summary["worst_status"]},
        {"ensemble_gaps": md_table(["attribute: gap", "value", "status"], gaps, digits=3)},
    )


def build_agreement_report(view: HoldoutView, spec: DatasetSpec) -> Report:
    columns = list(dict.fromkeys([*spec.sensitive, *view.split.schema.categorical]))
    _, segments = view.segments(columns, spec.sensitive_bins)
    config = view.config
    data: AgreementData = {
        **view.context.header(),
        **agreement_report(view.P, list(view.member_names), view.split.y_holdout, view.after,
                           config.agreement_threshold, config.decision_threshold, segments,
                           min_segment_rows=config.governance.fairness.min_group_size),
    }
    acc = data["accuracy_by_agreement"]
    return Report("agreement", data, agreement_document(data, view.context), {
        "review_share": data["review"]["share"],
        "mean_vote_share": data["vote_share"]["mean"],
        "unanimous_share": data["vote_share"]["unanimous_share"],
        "accuracy_high_agreement": acc["high"]["accuracy"],
        "accuracy_low_agreement": acc["low"]["accuracy"],
    })


@dataclass(frozen=True)
class ReportKind:
    """One report of a version: the Dagster asset `<stem>_report` builds it, the model card links
    `<stem>.html` beside it."""

    stem: str
    build: Callable[[HoldoutView, DatasetSpec], Report]
    description: str

    @property
    def html(self) -> str:
        return f"{self.stem}.html"


# Every report, in order: adding a report is one entry here (its asset and its link in the card follow).
REPORTS: tuple[ReportKind, ...] = (
    ReportKind(
        "calibration", build_calibration_report,
        "ECE (equal-width and equal-frequency bins), MCE, Brier decomposition and reliability diagrams of the "
        "ensemble and every member; the post-hoc calibrator chosen out of fold, holdout ECE before and after.",
    ),
    ReportKind(
        "fairness", build_fairness_report,
        "Per-group rates and the parity / odds / opportunity gaps of the ensemble and each member, judged "
        "against the version's thresholds; statistically thin groups flagged, not judged.",
    ),
    ReportKind(
        "agreement", build_agreement_report,
        "Vote-share and probability-spread distributions, review share, accuracy at high versus low "
        "agreement, agreement by sensitive group and categorical feature, member error correlation.",
    ),
)


# --- calibration -----------------------------------------------------------------------------

def calibration_data(
    context: ReportContext,
    y: np.ndarray,
    uncalibrated: np.ndarray,
    calibrated: np.ndarray,
    members: dict[str, np.ndarray],
    choice: CalibrationChoice,
    n_bins: int,
) -> CalibrationData:
    """Calibration of the ensemble (before and after its post-hoc calibrator) and of each member."""
    probas = {ENSEMBLE: calibrated, UNCALIBRATED: uncalibrated, **members}
    metrics = {name: calibration_metrics(y, p, n_bins) for name, p in probas.items()}
    return {
        **context.header(),
        "n_bins": n_bins,
        # describe() is a plain dict; its keys are CalibratorRecord's.
        "calibrator": cast(CalibratorRecord, {**choice.describe(), "out_of_fold_evidence": choice.evidence}),
        "metrics": metrics,
        "reliability": {name: _records(reliability_table(y, p, n_bins, "uniform")) for name, p in probas.items()},
        "headline": {
            "calibrator": choice.chosen,
            "ece_before": metrics[UNCALIBRATED]["ece_uniform"],
            "ece_after": metrics[ENSEMBLE]["ece_uniform"],
            "brier_before": metrics[UNCALIBRATED]["brier"],
            "brier_after": metrics[ENSEMBLE]["brier"],
        },
    }


def _records(table: pd.DataFrame) -> list[ReliabilityRow]:
    """Table rows for JSON: empty bins have no observed rate, written as null (not NaN)."""
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in table.to_dict(orient="records")]
    return cast(list[ReliabilityRow], rows)  # reliability_table's columns are ReliabilityRow's


_CALIBRATION_COLUMNS = ("ece_uniform", "ece_quantile", "mce_uniform", "mce_quantile", "brier",
                        "brier_reliability", "brier_resolution", "brier_uncertainty")


def calibration_metrics_table(data: CalibrationData) -> str:
    return md_table(["model", *_CALIBRATION_COLUMNS],
                    [[name, *(m[c] for c in _CALIBRATION_COLUMNS)] for name, m in data["metrics"].items()])


def calibration_document(data: CalibrationData, context: ReportContext) -> ReportDocument:
    head, calibrator = data["headline"], data["calibrator"]
    evidence = md_table(
        ["method", "log_loss", "brier", "ece_uniform", "ece_quantile"],
        [[("**" + m + "**") if m == calibrator["method"] else m, *(e[k] for k in
          ("log_loss", "brier", "ece_uniform", "ece_quantile"))] for m, e in calibrator["out_of_fold_evidence"].items()],
    )
    return ReportDocument(
        title=f"Calibration report: {context.dataset} ensemble {context.version}",
        subtitle=context.subtitle(),
        sections=[
            Section("Summary", (
                f"Post-hoc calibrator: **{md_text(head['calibrator'])}**. Holdout ECE (equal-width, {data['n_bins']} bins) "
                f"{fmt(head['ece_before'])} before calibration, **{fmt(head['ece_after'])}** after; "
                f"Brier score {fmt(head['brier_before'])} before, {fmt(head['brier_after'])} after."
            )),
            Section("Calibration metrics on the holdout", (
                calibration_metrics_table(data)
                + "\n\nECE: expected calibration error (row-weighted mean |observed − predicted| per bin), "
                "with equal-width and equal-frequency bins. MCE: the largest bin gap. The Brier score "
                "decomposes (Murphy) into reliability − resolution + uncertainty; lower reliability and "
                "higher resolution are better."
            ), [reliability_figure(data["reliability"], highlight=ENSEMBLE)]),
            Section("How the calibrator was chosen", (
                "Candidates were cross-validated over the members' shared folds on the ensemble's "
                "out-of-fold probabilities (training rows only); the holdout took no part. The lowest "
                f"out-of-fold {md_text(calibrator['criterion'])} wins, ties keep no calibration. The chosen calibrator "
                "is then refit on all training rows' out-of-fold probabilities. Caveat: those probabilities "
                "come from combiners fitted on the other folds, so the scoring is not fully nested; with a "
                "handful of combiner parameters the effect is negligible.\n\n" + evidence
            )),
        ],
    )


# --- fairness --------------------------------------------------------------------------------

def fairness_document(data: FairnessData, context: ReportContext) -> ReportDocument:
    summary = data["summary"]
    sections = [Section("Summary", (
        f"Worst status over the ensemble's gaps: **{md_text(summary['ensemble_worst_status'])}**; over all models: "
        f"{md_text(summary['worst_status'])}. Decisions at probability ≥ {data['decision_threshold']:g}. Gap statuses "
        "over every model, attribute and gap: "
        + ", ".join(f"{md_text(k)} {v}" if k != "thin" else f"not judged (fewer than two judged groups) {v}"
                    for k, v in summary["status_counts"].items()) + "."
        + _thin_groups_text(data)
    )), Section("Thresholds", _policy_table(data["policy"]))]
    for attribute, block in data["attributes"].items():
        groups = block["groups"][ENSEMBLE]
        group_table = md_table(
            ["group", "rows", "positives", "base rate", "selection rate", "TPR", "FPR", "AUC", "ECE", "judged"],
            [[g["group"], g["count"], g["positives"], g["base_rate"], g["selection_rate"], g["true_positive_rate"],
              g["false_positive_rate"], g["roc_auc"], g["ece"], g["thin_reason"] or "yes"] for g in groups],
            digits=3,
        )
        gap_names = list(next(iter(block["gaps"].values())))
        gap_table = md_table(
            ["model", *gap_names],
            [[model, *(f"{fmt(g[n]['value'], 3)} ({g[n]['status']})" for n in gap_names)]
             for model, g in block["gaps"].items()],
        )
        dominant = summary.get("dominant_member", {}).get(attribute, {})
        dominant_text = (
            "\n\nMember with the largest gap: " + "; ".join(f"{gap}: {md_text(member)}" for gap, member in dominant.items())
            if dominant else ""
        )
        sections.append(Section(
            f"By {attribute}",
            "Ensemble per group (thin groups are shown but not judged):\n\n" + group_table
            + "\n\nGaps over the judged groups, for the ensemble and each member:\n\n" + gap_table + dominant_text,
            [fairness_gap_figure(attribute, block["gaps"])],
        ))
    for attribute, rates in data.get("routing", {}).items():
        routes = sorted({route for shares in rates.values() for route in shares})
        sections.append(Section(f"Routing by {attribute}", (
            "Share of each group's holdout rows by where the lazy strategy sent them (router: the member, or the "
            "full ensemble when unsure; cascade: the stage a row exited at):\n\n"
            + md_table(["group", *routes], [[group, *(shares.get(r, 0.0) for r in routes)]
                                            for group, shares in rates.items()], digits=3))))
    return ReportDocument(f"Fairness report: {context.dataset} ensemble {context.version}", context.subtitle(),
                          sections)


def _thin_groups_text(data: FairnessData) -> str:
    """How many groups per attribute are too thin to judge (listed in the tables, not judged)."""
    counts = [(attribute, sum(g["thin"] for g in block["groups"][ENSEMBLE]), len(block["groups"][ENSEMBLE]))
              for attribute, block in data["attributes"].items()]
    if not counts:
        return ""
    return (" Statistically thin groups (shown, not judged): "
            + ", ".join(f"{md_text(attribute)} {thin} of {total}" for attribute, thin, total in counts) + ".")


def _policy_table(policy: dict[str, object]) -> str:
    rows = [[name, "ratio (lower is worse)" if not t["higher_is_worse"] else "difference", t["warn"], t["fail"]]
            for name, t in policy.items() if isinstance(t, dict)]
    return (md_table(["gap", "kind", "warn", "fail"], rows, digits=3)
            + f"\n\nGroups with fewer than {policy['min_group_size']} rows, or fewer than "
            f"{policy['min_group_class_count']} rows of either class, are flagged as statistically thin.")


# --- agreement -------------------------------------------------------------------------------

def agreement_document(data: AgreementData, context: ReportContext) -> ReportDocument:
    members = data["members"]
    acc = data["accuracy_by_agreement"]
    cv = data["probability_cv"]
    levels = md_table(["vote share", "members agreeing", "rows", "share", "ensemble accuracy"],
                      [[r["vote_share"], r["members_agreeing"], r["rows"], percent(r["share"]), r["accuracy"]]
                       for r in data["vote_share"]["levels"]], digits=3)
    top = md_table(["column", "segment", "rows", "review share", "mean vote share", "accuracy"],
                   [[r["column"], r["segment"], r["rows"], percent(r["review_share"]), r["mean_vote_share"],
                     r["accuracy"]] for r in data["top_review_segments"]], digits=3)
    sections = [
        Section("Summary", (
            f"{percent(data['review']['share'])} of holdout decisions ({data['review']['rows']} rows) fall below "
            f"the review threshold {data['review_threshold']:g} and would go to human review. Ensemble accuracy "
            f"is {fmt(acc['high']['accuracy'], 3)} at high agreement ({acc['high']['rows']} rows) versus "
            f"{fmt(acc['low']['accuracy'], 3)} at low agreement ({acc['low']['rows']} rows). "
            f"{percent(data['vote_share']['unanimous_share'])} of decisions are unanimous."
        )),
        Section("Vote share", levels, [vote_share_figure(data["vote_share"]["levels"], data["review_threshold"])]),
        Section("Spread of member probabilities", (
            # A Markdown table needs a blank line before it, or it is read as the sentence's text.
            "Coefficient of variation (std / mean) of the members' probabilities per row:\n\n"
            + md_table(["mean", *cv["quantiles"]], [[cv["mean"], *cv["quantiles"].values()]], digits=3)
        )),
        Section("Where members disagree", (
            f"Segments of at least {data['min_segment_rows']} rows that go to review most often. A segment far "
            "above the overall review share is one the training data covers poorly.\n\n" + top
        )),
    ]
    for column, rows in data["segments"].items():
        sections.append(Section(f"Agreement by {column}", md_table(
            ["segment", "rows", "review share", "mean vote share", "mean probability CV", "accuracy", "thin"],
            [[r["segment"], r["rows"], percent(r["review_share"]), r["mean_vote_share"], r["mean_probability_cv"],
              r["accuracy"], r["thin"]] for r in rows], digits=3)))
    sections.append(Section(
        "Diversity: pairwise member error correlation",
        "Correlation of the members' residuals (probability − outcome) on the holdout; values near 1 mean "
        "two members make the same mistakes, so one adds little to the other.",
        [matrix_figure("error_correlation", "Member error correlation", data["error_correlation"], members, -1, 1),
         matrix_figure("pairwise_disagreement", "Share of rows where two members' decisions differ",
                       data["pairwise_disagreement"], members, 0, 0.5)],
    ))
    return ReportDocument(f"Agreement report: {context.dataset} ensemble {context.version}", context.subtitle(),
                          sections)


def segment_labels(table: pd.DataFrame, binnings: list[SensitiveBinning]) -> dict[str, pd.Series]:
    """Group label per row for each fitted binning (sensitive attributes and categorical features)."""
    return {b.column: b.assign(table[b.column]).reset_index(drop=True) for b in binnings}
