"""The production performance report: the ensemble and its members on labelled production decisions, per day
and overall, and reviewers against the ensemble; Markdown, self-contained HTML and JSON under
`reports/<dataset>/monitoring/production/`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure as MplFigure

from ensemble_platform.decisions.production_performance import (
    ENSEMBLE,
    METRICS,
    ModelPerformance,
    PeriodPerformance,
    ProductionPerformance,
)
from ensemble_platform.governance.figures import plain_text
from ensemble_platform.governance.rendering import (
    Figure,
    ReportDocument,
    Section,
    md_table,
    md_text,
    percent,
    write_report,
)
from ensemble_platform.settings import PlatformPaths

STEM = "production_performance"
MODEL_HEADERS = ["model", "rows", "missing", *METRICS]


def report_dir(paths: PlatformPaths, dataset: str) -> Path:
    return paths.monitoring_dir(dataset) / "production"


def _model_row(name: str, figures: ModelPerformance) -> list[object]:
    return [name, figures.rows, figures.missing, *(getattr(figures, m) for m in METRICS)]


def _overall(period: PeriodPerformance) -> str:
    rows = [_model_row(ENSEMBLE, period.ensemble), *(_model_row(n, m) for n, m in period.members.items())]
    return md_table(MODEL_HEADERS, rows)


def _daily(days: list[PeriodPerformance]) -> str:
    return md_table(["day", "labelled", "registered", "reviewer", *METRICS, "reviewer agreement"],
                    [[d.period, d.labelled, d.registered, d.reviewer, *(getattr(d.ensemble, m) for m in METRICS),
                      d.review.agreement] for d in days])


def _members_daily(days: list[PeriodPerformance], members: list[str]) -> str:
    return md_table(["day", *members], [[d.period, *(d.members[m].accuracy if m in d.members else None
                                                     for m in members)] for d in days])


def _review(performance: ProductionPerformance) -> str:
    review = performance.overall.review
    if not review.reviewed:
        return "No reviewed decision has a label in this window."
    text = (f"{review.reviewed} reviewed decision(s); the reviewer's decision equals the ensemble's on "
            f"{percent(review.agreement)} of them.")
    if review.with_outcome:
        text += (f" On the {review.with_outcome} with a registered outcome, reviewers were right on "
                 f"{percent(review.reviewer_accuracy)}, the ensemble on {percent(review.ensemble_accuracy)}.")
    return text


@plain_text
def accuracy_figure(performance: ProductionPerformance) -> Figure:
    """Daily accuracy of the ensemble (bold) and each member."""
    fig = MplFigure(figsize=(8, 3.8))
    ax = fig.subplots()
    x = np.arange(len(performance.days))
    series = {ENSEMBLE: [d.ensemble.accuracy for d in performance.days]}
    series |= {name: [d.members[name].accuracy if name in d.members else None for d in performance.days]
               for name in performance.overall.members}
    for name, values in series.items():
        bold = name == ENSEMBLE
        ax.plot(x, [np.nan if v is None else v for v in values], marker="o", markersize=4 if bold else 3,
                linewidth=2.5 if bold else 1, alpha=1 if bold else 0.6, label=name)
    ax.set_xticks(x, [d.period for d in performance.days], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy at the decision threshold on labelled decisions, per day (UTC)")
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return Figure("production_accuracy", "daily accuracy of the ensemble and its members on labelled decisions",
                  buffer.getvalue())


def production_document(performance: ProductionPerformance) -> ReportDocument:
    overall = performance.overall
    members = list(overall.members)
    window = (f"decisions from {performance.first_decision} to {performance.last_decision}"
              if performance.first_decision else "no labelled decisions yet")
    versions = md_text(", ".join(performance.ensemble_versions) or "none")
    summary = (f"{overall.labelled} labelled decision(s): {overall.registered} with a registered outcome, "
               f"{overall.reviewer} labelled by a reviewer's resolution only (a registered outcome wins over a "
               f"resolution). Ensemble versions: {versions}. ECE over {performance.calibration_bins} uniform bins; "
               f"accuracy at each decision's own threshold; ROC AUC is empty while the labels hold one class.")
    return ReportDocument(
        f"Performance on labelled production decisions: {performance.dataset}", window,
        [Section("Overall", summary + "\n\n" + _overall(overall)),
         Section("Ensemble per day", _daily(performance.days),
                 [accuracy_figure(performance)] if performance.days else []),
         Section("Members per day (accuracy)", _members_daily(performance.days, members)),
         Section("Reviewers and the ensemble", _review(performance))],
    )


def write_production_report(paths: PlatformPaths, performance: ProductionPerformance) -> dict[str, Path]:
    """Write `production_performance.{md,html,json}` (and its figure); returns the paths by kind."""
    return write_report(production_document(performance), report_dir(paths, performance.dataset), STEM,
                        performance.model_dump(mode="json"))
