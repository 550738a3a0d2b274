"""Agreement analysis on the holdout: how often the members back the ensemble's decision, what
that buys in accuracy, where (which input segments) they disagree, and how correlated their
errors are (diversity).

Segments where members disagree far more than overall are where the training data is thin or
unlike the rest: the report ranks them so a reviewer sees the data gaps first.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import pandas as pd

from ensemble_platform.evaluation.agreement import probability_dispersion, vote_agreement

_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class AgreementBand(TypedDict):
    rows: int
    accuracy: float | None  # None when no row falls in the band


class AccuracyByAgreement(TypedDict):
    high: AgreementBand
    low: AgreementBand


class VoteLevel(TypedDict):
    vote_share: float
    members_agreeing: int
    rows: int
    share: float
    accuracy: float


class SegmentRow(TypedDict):
    segment: str
    rows: int
    mean_vote_share: float
    review_share: float
    mean_probability_cv: float
    accuracy: float
    thin: bool


class ColumnSegmentRow(SegmentRow):
    column: str  # the column the segment belongs to (top review segments span all columns)


class VoteShare(TypedDict):
    mean: float
    unanimous_share: float
    levels: list[VoteLevel]


class ProbabilityCV(TypedDict):
    mean: float
    quantiles: dict[str, float]  # "p10" ... "p90"


class ReviewShare(TypedDict):
    rows: int
    share: float


class AgreementNumbers(TypedDict):
    """What `agreement_report` returns (JSON-ready)."""

    rows: int
    members: list[str]
    review_threshold: float
    decision_threshold: float
    vote_share: VoteShare
    probability_cv: ProbabilityCV
    review: ReviewShare
    accuracy_by_agreement: AccuracyByAgreement
    segments: dict[str, list[SegmentRow]]
    top_review_segments: list[ColumnSegmentRow]
    min_segment_rows: int
    error_correlation: list[list[float | None]]
    pairwise_disagreement: list[list[float | None]]


def _rate(mask: np.ndarray, values: np.ndarray) -> float | None:
    return float(values[mask].mean()) if mask.any() else None


def accuracy_by_agreement(
    agreement: np.ndarray, correct: np.ndarray, review_threshold: float
) -> AccuracyByAgreement:
    """Ensemble accuracy on rows at or above the review threshold versus below it."""
    high = agreement >= review_threshold
    return {
        "high": {"rows": int(high.sum()), "accuracy": _rate(high, correct)},
        "low": {"rows": int((~high).sum()), "accuracy": _rate(~high, correct)},
    }


def vote_share_table(agreement: np.ndarray, correct: np.ndarray, n_members: int) -> list[VoteLevel]:
    """One row per attainable vote share k/m: rows, share of rows, ensemble accuracy."""
    k = np.rint(agreement * n_members).astype(int)
    table: list[VoteLevel] = []
    for level in np.unique(k):
        rows = k == level
        table.append({
            "vote_share": round(level / n_members, 6),
            "members_agreeing": int(level),
            "rows": int(rows.sum()),
            "share": float(rows.mean()),
            "accuracy": float(correct[rows].mean()),
        })
    return table


def error_correlation(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of the members' residuals (p - y): near 1 means they err together,
    which is diversity the ensemble does not have."""
    residuals = P - y[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(residuals, rowvar=False)
    return np.atleast_2d(corr)


def pairwise_disagreement(P: np.ndarray, decision_threshold: float) -> np.ndarray:
    """Share of rows on which two members' decisions differ."""
    votes = P >= decision_threshold
    return (votes[:, :, None] != votes[:, None, :]).mean(axis=0)


def segment_table(
    labels: pd.Series, agreement: np.ndarray, dispersion: np.ndarray, correct: np.ndarray,
    review_threshold: float, min_rows: int,
) -> list[SegmentRow]:
    """Agreement per segment of one column, most review-prone first."""
    labels = labels.reset_index(drop=True).astype(str)
    rows: list[SegmentRow] = []
    for segment, positions in labels.groupby(labels, sort=True).indices.items():
        a = agreement[positions]
        rows.append({
            "segment": str(segment),
            "rows": int(len(positions)),
            "mean_vote_share": float(a.mean()),
            "review_share": float((a < review_threshold).mean()),
            "mean_probability_cv": float(dispersion[positions].mean()),
            "accuracy": float(correct[positions].mean()),
            "thin": bool(len(positions) < min_rows),
        })
    return sorted(rows, key=lambda r: (-r["review_share"], r["segment"]))


def agreement_report(
    P: np.ndarray,
    member_names: list[str],
    y: np.ndarray,
    ensemble_proba: np.ndarray,
    review_threshold: float,
    decision_threshold: float,
    segments: dict[str, pd.Series],
    min_segment_rows: int = 30,
) -> AgreementNumbers:
    """The agreement report's numbers (JSON-ready)."""
    P, y = np.asarray(P, dtype=float), np.asarray(y).astype(int)
    if P.shape != (len(y), len(member_names)):
        raise ValueError(
            f"member matrix has shape {P.shape}; expected ({len(y)} rows, {len(member_names)} members)"
        )
    for column, labels in segments.items():
        if len(labels) != len(y):
            raise ValueError(f"segment column {column!r} has {len(labels)} labels for {len(y)} rows")
    agreement = vote_agreement(P, ensemble_proba, decision_threshold)
    dispersion = probability_dispersion(P)
    correct = ((np.asarray(ensemble_proba) >= decision_threshold).astype(int) == y).astype(float)
    review = agreement < review_threshold
    by_segment = {
        column: segment_table(labels, agreement, dispersion, correct, review_threshold, min_segment_rows)
        for column, labels in segments.items()
    }
    judged = [ColumnSegmentRow(**row, column=column)
              for column, table in by_segment.items() for row in table if not row["thin"]]
    overall_review = float(review.mean())
    return {
        "rows": int(len(y)),
        "members": list(member_names),
        "review_threshold": review_threshold,
        "decision_threshold": decision_threshold,
        "vote_share": {
            "mean": float(agreement.mean()),
            "unanimous_share": float(np.isclose(agreement, 1.0).mean()),
            "levels": vote_share_table(agreement, correct, len(member_names)),
        },
        "probability_cv": {
            "mean": float(dispersion.mean()),
            "quantiles": {f"p{int(q * 100)}": float(np.quantile(dispersion, q)) for q in _QUANTILES},
        },
        "review": {"rows": int(review.sum()), "share": overall_review},
        "accuracy_by_agreement": accuracy_by_agreement(agreement, correct, review_threshold),
        "segments": by_segment,
        # Segments (of at least min_segment_rows) that go to review most often, across all columns.
        "top_review_segments": sorted(judged, key=lambda r: (-r["review_share"], r["column"], r["segment"]))[:5],
        "min_segment_rows": min_segment_rows,
        "error_correlation": _matrix(error_correlation(P, y)),
        "pairwise_disagreement": _matrix(pairwise_disagreement(P, decision_threshold)),
    }


def _matrix(values: np.ndarray) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else round(float(v), 6) for v in row] for row in values]
