"""How the ensemble and each member did on labelled production decisions (`outcomes.labelled_decisions`), per
day and overall, and how often reviewers agreed with the ensemble.

Per model: ROC AUC (None while the labels hold one class), log loss, ECE (uniform bins) and accuracy at the
decision threshold each decision was made with (the ensemble: its recorded decision; a member: its probability
against that threshold). A member that gave no probability for a decision (error, timeout) is left out of that
member's figures and counted as `missing`. Reviewer agreement: the share of reviewed decisions (a reviewer's
resolution recorded) where the reviewer's decision equals the ensemble's; where a registered outcome exists too,
the reviewer's and the ensemble's accuracy against it on those same decisions.

Pure computation: no I/O, deterministic for the same rows (days in UTC, members by name).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

import numpy as np
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import log_loss, roc_auc_score

from ensemble_platform.decisions.outcomes import LabelledDecision, parse_time
from ensemble_platform.decisions.records import LABEL_SOURCE_REGISTERED, LABEL_SOURCE_REVIEWER
from ensemble_platform.evaluation.calibration import expected_calibration_error

ENSEMBLE = "ensemble"
METRICS = ("roc_auc", "log_loss", "ece", "accuracy")
_EPS = 1e-15


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelPerformance(_Frozen):
    """One model on the labelled decisions of a period; every figure None when it scored none of them."""

    rows: int
    missing: int = 0
    positive_rate: float | None = None
    roc_auc: float | None = None
    log_loss: float | None = None
    ece: float | None = None
    accuracy: float | None = None


class ReviewerAgreement(_Frozen):
    reviewed: int = 0
    agreement: float | None = None
    with_outcome: int = 0
    reviewer_accuracy: float | None = None
    ensemble_accuracy: float | None = None


class PeriodPerformance(_Frozen):
    """`period`: a day (YYYY-MM-DD, UTC) or "overall"."""

    period: str
    labelled: int
    registered: int
    reviewer: int
    ensemble: ModelPerformance
    members: dict[str, ModelPerformance]
    review: ReviewerAgreement


class ProductionPerformance(_Frozen):
    dataset: str
    first_decision: str | None
    last_decision: str | None
    ensemble_versions: list[str]
    calibration_bins: int
    overall: PeriodPerformance
    days: list[PeriodPerformance]

    def point(self) -> dict[str, float | int]:
        """The overall figures as one flat point (what a monitoring UI plots across refreshes); None left out."""
        overall = self.overall
        point: dict[str, float | int] = {"labelled": overall.labelled, "registered": overall.registered,
                                         "reviewer_labelled": overall.reviewer, "reviewed": overall.review.reviewed}
        for model, figures in {ENSEMBLE: overall.ensemble, **overall.members}.items():
            for metric in METRICS:
                value = getattr(figures, metric)
                if value is not None:
                    point[f"{model}_{metric}"] = float(value)
        for name in ("agreement", "reviewer_accuracy", "ensemble_accuracy"):
            value = getattr(overall.review, name)
            if value is not None:
                point[f"review_{name}"] = float(value)
        return point


def model_performance(y: Sequence[int] | np.ndarray, proba: Sequence[float] | np.ndarray,
                      predicted: Sequence[int] | np.ndarray, n_bins: int = 10, missing: int = 0) -> ModelPerformance:
    """Figures of one model: `proba` of the positive class and `predicted` class (at the decision threshold)."""
    y_arr = np.asarray(y, dtype=int)
    if len(y_arr) == 0:
        return ModelPerformance(rows=0, missing=missing)
    p = np.clip(np.asarray(proba, dtype=float), _EPS, 1 - _EPS)
    both_classes = 0 < int(y_arr.sum()) < len(y_arr)
    return ModelPerformance(
        rows=int(len(y_arr)), missing=missing, positive_rate=float(y_arr.mean()),
        roc_auc=float(roc_auc_score(y_arr, p)) if both_classes else None,
        log_loss=float(log_loss(y_arr, p, labels=[0, 1])),
        ece=expected_calibration_error(y_arr, p, n_bins=n_bins, binning="uniform"),
        accuracy=float(np.mean(np.asarray(predicted, dtype=int) == y_arr)),
    )


def _ensemble(rows: Sequence[LabelledDecision], n_bins: int) -> ModelPerformance:
    return model_performance([r.label for r in rows], [r.probability for r in rows], [r.decision for r in rows],
                             n_bins)


def _member(rows: Sequence[LabelledDecision], name: str, n_bins: int) -> ModelPerformance:
    scored = [(p, r) for r in rows if (p := r.members.get(name)) is not None]
    return model_performance([r.label for _, r in scored], [p for p, _ in scored],
                             [int(p >= r.decision_threshold) for p, r in scored], n_bins,
                             missing=len(rows) - len(scored))


def reviewer_agreement(rows: Sequence[LabelledDecision]) -> ReviewerAgreement:
    reviewed = [r for r in rows if r.reviewer_decision is not None]
    if not reviewed:
        return ReviewerAgreement()
    judged = [r for r in reviewed if r.registered_label is not None]
    return ReviewerAgreement(
        reviewed=len(reviewed),
        agreement=float(np.mean([r.reviewer_decision == r.decision for r in reviewed])),
        with_outcome=len(judged),
        reviewer_accuracy=float(np.mean([r.reviewer_decision == r.registered_label for r in judged])) if judged else None,
        ensemble_accuracy=float(np.mean([r.decision == r.registered_label for r in judged])) if judged else None,
    )


def period_performance(period: str, rows: Sequence[LabelledDecision], members: Sequence[str],
                       n_bins: int = 10) -> PeriodPerformance:
    return PeriodPerformance(
        period=period, labelled=len(rows),
        registered=sum(r.label_source == LABEL_SOURCE_REGISTERED for r in rows),
        reviewer=sum(r.label_source == LABEL_SOURCE_REVIEWER for r in rows),
        ensemble=_ensemble(rows, n_bins), members={name: _member(rows, name, n_bins) for name in members},
        review=reviewer_agreement(rows),
    )


def day_of(created_at: str) -> str:
    return parse_time(created_at, "created_at").astimezone(UTC).date().isoformat()


def production_performance(rows: Sequence[LabelledDecision], dataset: str, n_bins: int = 10) -> ProductionPerformance:
    """Per UTC day (days with labelled decisions only, in order) and overall."""
    members = sorted({name for r in rows for name in r.members})
    days: dict[str, list[LabelledDecision]] = {}
    for row in rows:
        days.setdefault(day_of(row.created_at), []).append(row)
    ordered = sorted(rows, key=lambda r: (parse_time(r.created_at), r.decision_id))
    return ProductionPerformance(
        dataset=dataset,
        first_decision=ordered[0].created_at if ordered else None,
        last_decision=ordered[-1].created_at if ordered else None,
        ensemble_versions=sorted({r.ensemble_version for r in rows}),
        calibration_bins=n_bins,
        overall=period_performance("overall", rows, members, n_bins),
        days=[period_performance(day, days[day], members, n_bins) for day in sorted(days)],
    )
