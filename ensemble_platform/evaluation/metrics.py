"""Holdout and out-of-fold metrics for binary probability forecasts."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

# The ECE lives with the other calibration measures; re-exported here, where callers expect it.
from ensemble_platform.evaluation.calibration import expected_calibration_error

METRIC_NAMES = ("roc_auc", "log_loss", "brier", "accuracy", "ece")
# Lower is better for these; the others are higher-is-better.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece"})
_EPS = 1e-15


def binary_metrics(y: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The platform's standard metric set for one probability vector of the positive class."""
    y = np.asarray(y)
    clipped = np.clip(np.asarray(proba, dtype=float), _EPS, 1 - _EPS)
    return {
        "roc_auc": float(roc_auc_score(y, clipped)),
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y, clipped)),
        "accuracy": float(accuracy_score(y, (clipped >= threshold).astype(int))),
        "ece": expected_calibration_error(y, clipped, n_bins=10, binning="uniform"),
    }


def is_better(metric: str, candidate: float, incumbent: float) -> bool:
    return candidate < incumbent if metric in LOWER_IS_BETTER else candidate > incumbent
