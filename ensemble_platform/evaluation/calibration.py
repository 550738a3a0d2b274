"""Calibration measures of binary probability forecasts: reliability tables, ECE/MCE and the
Brier decomposition (plain functions on arrays; the calibrators they judge are a fitted model
part and live in `ensemble.calibrators`).

This module must not import `metrics.py` (which imports the ECE from here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

Binning = Literal["uniform", "quantile"]
BINNINGS = ("uniform", "quantile")
CALIBRATION_METHODS = ("none", "sigmoid", "isotonic")
# Every calibration score is lower-is-better, so any of them can be the selection criterion.
CALIBRATION_CRITERIA = ("log_loss", "brier", "ece_uniform", "ece_quantile")



# --------------------------------------------------------------------------- input checks


def check_proba(proba: object, name: str = "proba") -> np.ndarray:
    p = np.asarray(proba, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array of probabilities, got shape {p.shape}")
    if len(p) == 0:
        raise ValueError(f"{name} must contain at least one probability, got an empty array")
    # Written so that NaN fails too.
    outside = ~((p >= 0.0) & (p <= 1.0))
    if outside.any():
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; {int(outside.sum())} value(s) are outside "
            f"(e.g. {p[outside][0]!r})"
        )
    return p


def check_y_proba(y: object, proba: object) -> tuple[np.ndarray, np.ndarray]:
    p = check_proba(proba)
    y_arr = np.asarray(y, dtype=float)
    if y_arr.shape != p.shape:
        raise ValueError(
            f"y and proba must have the same length, got {y_arr.shape[0] if y_arr.ndim else 0} "
            f"labels and {len(p)} probabilities"
        )
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise ValueError("y must contain binary labels 0/1 only")
    return y_arr, p


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


# --------------------------------------------------------------------------- binning


def _bin_rows(proba: np.ndarray, n_bins: int, binning: str) -> tuple[np.ndarray, np.ndarray]:
    """Edges (length n_edges) and the bin index of every row, each row in exactly one bin."""
    if binning == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        # Equal-width bins, last one closed on the right so that p == 1.0 is counted.
        bins = np.minimum((proba * n_bins).astype(int), n_bins - 1)
        return edges, bins
    if binning == "quantile":
        # Equal-frequency bins; tied quantiles collapse, so heavily tied data gets fewer bins.
        edges = np.unique(np.quantile(proba, np.linspace(0.0, 1.0, n_bins + 1)))
        if len(edges) == 1:  # every prediction is the same value: one degenerate bin
            edges = np.array([edges[0], edges[0]])
        # side="right": bins are [lower, upper), like the uniform bins; max(p) lands in the last bin.
        bins = np.searchsorted(edges[1:-1], proba, side="right")
        return edges, bins
    raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")


def reliability_table(
    y: object, proba: object, n_bins: int = 10, binning: Binning = "uniform"
) -> pd.DataFrame:
    """One row per bin: edges, count, mean prediction, observed positive rate, and their gap."""
    y_arr, p = check_y_proba(y, proba)
    edges, bins = _bin_rows(p, _check_n_bins(n_bins), binning)
    n_out = len(edges) - 1
    count = np.bincount(bins, minlength=n_out)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins -> NaN, on purpose
        mean_predicted = np.bincount(bins, weights=p, minlength=n_out) / count
        observed_rate = np.bincount(bins, weights=y_arr, minlength=n_out) / count
    return pd.DataFrame(
        {
            "bin": np.arange(n_out, dtype=int),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype(int),
            "mean_predicted": mean_predicted,
            "observed_rate": observed_rate,
            "gap": observed_rate - mean_predicted,
        }
    )


def expected_calibration_error(
    y: object, proba: object, n_bins: int = 10, binning: Binning = "uniform"
) -> float:
    """ECE: share-of-rows-weighted mean of |observed rate - mean prediction| over non-empty bins."""
    table = reliability_table(y, proba, n_bins, binning)
    filled = table[table["count"] > 0]
    weights = filled["count"] / filled["count"].sum()
    return float((weights * filled["gap"].abs()).sum())


def maximum_calibration_error(
    y: object, proba: object, n_bins: int = 10, binning: Binning = "uniform"
) -> float:
    """MCE: the worst |observed rate - mean prediction| over non-empty bins."""
    table = reliability_table(y, proba, n_bins, binning)
    return float(table.loc[table["count"] > 0, "gap"].abs().max())


# --------------------------------------------------------------------------- Brier decomposition


@dataclass(frozen=True)
class BrierDecomposition:
    """Murphy (1973): brier = reliability - resolution + uncertainty (+ within_bin)."""

    brier: float  # mean (p - y)^2
    reliability: float  # sum_k n_k/n (mean_p_k - obar_k)^2: lower is better
    resolution: float  # sum_k n_k/n (obar_k - obar)^2: higher is better
    uncertainty: float  # obar (1 - obar): a property of the data, not the forecast
    within_bin: float  # what binning hides; 0 when p is constant within each bin

    def as_dict(self) -> dict[str, float]:
        return {
            "brier": self.brier,
            "reliability": self.reliability,
            "resolution": self.resolution,
            "uncertainty": self.uncertainty,
            "within_bin": self.within_bin,
        }


def brier_decomposition(
    y: object, proba: object, n_bins: int = 10, binning: Binning = "uniform"
) -> BrierDecomposition:
    """Split the Brier score into reliability, resolution and uncertainty over the given bins."""
    y_arr, p = check_y_proba(y, proba)
    table = reliability_table(y_arr, p, n_bins, binning)
    filled = table[table["count"] > 0]
    share = filled["count"].to_numpy() / len(p)
    obar = float(y_arr.mean())
    brier = float(np.mean((p - y_arr) ** 2))
    reliability = float(np.sum(share * (filled["mean_predicted"] - filled["observed_rate"]) ** 2))
    resolution = float(np.sum(share * (filled["observed_rate"] - obar) ** 2))
    uncertainty = obar * (1.0 - obar)
    within_bin = brier - (reliability - resolution + uncertainty)
    return BrierDecomposition(brier, reliability, resolution, uncertainty, float(within_bin))


def calibration_metrics(y: object, proba: object, n_bins: int = 10) -> dict[str, float]:
    """The platform's calibration summary of one probability vector (all plain floats)."""
    y_arr, p = check_y_proba(y, proba)
    decomposition = brier_decomposition(y_arr, p, n_bins, "uniform")
    return {
        "ece_uniform": expected_calibration_error(y_arr, p, n_bins, "uniform"),
        "ece_quantile": expected_calibration_error(y_arr, p, n_bins, "quantile"),
        "mce_uniform": maximum_calibration_error(y_arr, p, n_bins, "uniform"),
        "mce_quantile": maximum_calibration_error(y_arr, p, n_bins, "quantile"),
        "brier": decomposition.brier,
        "brier_reliability": decomposition.reliability,
        "brier_resolution": decomposition.resolution,
        "brier_uncertainty": decomposition.uncertainty,
        "brier_within_bin": decomposition.within_bin,
    }
