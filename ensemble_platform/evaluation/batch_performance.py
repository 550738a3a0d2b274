"""How the serving ensemble and each of its members did on a labelled batch of production data,
and the history of that over batches (what a reviewer plots to see decay)."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

_EPS = 1e-15


class BatchMetrics(TypedDict):
    rows: int
    positive_rate: float
    accuracy: float
    log_loss: float
    brier: float
    roc_auc: float | None  # None: the batch holds one class only


class PerformanceEntry(TypedDict):
    """One labelled batch in the performance history (`monitoring/performance/<batch id>.json`)."""

    batch_id: str
    received_at: str
    scored_by: str
    performance: dict[str, BatchMetrics]  # "ensemble" first, then each member


def labelled_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> BatchMetrics:
    """Accuracy, log loss and Brier score always; ROC AUC only when the batch holds both classes
    (a small batch may not, and AUC is undefined then, not 0)."""
    y, p = np.asarray(y, dtype=int), np.clip(np.asarray(proba, dtype=float), _EPS, 1 - _EPS)
    return {
        "rows": int(len(y)),
        "positive_rate": float(y.mean()),
        "accuracy": float(accuracy_score(y, (p >= threshold).astype(int))),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "roc_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
    }


def batch_performance(y: np.ndarray, ensemble: np.ndarray, members: dict[str, np.ndarray],
                      threshold: float) -> dict[str, BatchMetrics]:
    """Ensemble first, then each member, at the ensemble's decision threshold."""
    return {"ensemble": labelled_metrics(y, ensemble, threshold),
            **{name: labelled_metrics(y, p, threshold) for name, p in members.items()}}
