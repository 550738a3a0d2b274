"""Holdout and out-of-fold metrics for binary probability forecasts."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

METRIC_NAMES = ("roc_auc", "log_loss", "brier", "accuracy", "ece")
# Lower is better for these; the others are higher-is-better.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece"})
_EPS = 1e-15


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width bins on [0, 1]: sum over bins of |mean(y) - mean(p)| * share of rows.

    The last bin is closed on the right so that p == 1.0 is counted.
    """
    y = np.asarray(y, dtype=float)
    proba = np.asarray(proba, dtype=float)
    if len(y) == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    bins = np.minimum((proba * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            total += in_bin.mean() * abs(y[in_bin].mean() - proba[in_bin].mean())
    return float(total)


def binary_metrics(y: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The platform's standard metric set for one probability vector of the positive class."""
    y = np.asarray(y)
    clipped = np.clip(np.asarray(proba, dtype=float), _EPS, 1 - _EPS)
    return {
        "roc_auc": float(roc_auc_score(y, clipped)),
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y, clipped)),
        "accuracy": float(accuracy_score(y, (clipped >= threshold).astype(int))),
        "ece": expected_calibration_error(y, clipped),
    }


def is_better(metric: str, candidate: float, incumbent: float) -> bool:
    return candidate < incumbent if metric in LOWER_IS_BETTER else candidate > incumbent
