"""Calibration of binary probability forecasts: reliability tables, ECE/MCE, the Brier
decomposition, and a post-hoc calibrator chosen by cross-validation on out-of-fold rows.

This module must not import `metrics.py` (which imports the ECE from here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.utils.validation import check_is_fitted

Binning = Literal["uniform", "quantile"]
BINNINGS = ("uniform", "quantile")
CALIBRATION_METHODS = ("none", "sigmoid", "isotonic")
# Every calibration score is lower-is-better, so any of them can be the selection criterion.
CALIBRATION_CRITERIA = ("log_loss", "brier", "ece_uniform", "ece_quantile")

_LOG_LOSS_EPS = 1e-15  # same clipping as metrics.binary_metrics, so the numbers agree
_LOGIT_EPS = 1e-6  # keeps logit(p) finite for p in {0, 1}
_DESCRIBE_DIGITS = 12


# --------------------------------------------------------------------------- input checks


def _check_proba(proba: object, name: str = "proba") -> np.ndarray:
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


def _check_y_proba(y: object, proba: object) -> tuple[np.ndarray, np.ndarray]:
    p = _check_proba(proba)
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
    y_arr, p = _check_y_proba(y, proba)
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
    y_arr, p = _check_y_proba(y, proba)
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
    y_arr, p = _check_y_proba(y, proba)
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


# --------------------------------------------------------------------------- calibrator


def _logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    return np.log(clipped / (1.0 - clipped))


def _round_sig(x: float) -> float:
    return float(f"{float(x):.{_DESCRIBE_DIGITS}g}")


def _round_list(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.round(np.asarray(values, dtype=float), _DESCRIBE_DIGITS)]


def _check_method(method: object) -> str:
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    return str(method)


class ProbabilityCalibrator(BaseEstimator):
    """Post-hoc map from a positive-class probability to a calibrated one.

    "none" is the identity, "sigmoid" is Platt scaling on logit(p), "isotonic" is a monotone
    step function. Fitted attributes end in "_", so sklearn's clone/check_is_fitted work.
    """

    def __init__(self, method: str = "none"):
        self.method = method

    def fit(self, proba: object, y: object) -> ProbabilityCalibrator:
        method = _check_method(self.method)
        y_arr, p = _check_y_proba(y, proba)
        if method != "none" and len(np.unique(y_arr)) < 2:
            raise ValueError(f"{method} calibration needs both classes in y, got only {int(y_arr[0])}")
        model: LogisticRegression | IsotonicRegression | None = None
        clip = (0.0, 1.0)
        if method == "sigmoid":
            # C=1e6: effectively unpenalised (Platt), yet finite if the classes happen to separate.
            model = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
            model.fit(_logit(p).reshape(-1, 1), y_arr.astype(int))
        elif method == "isotonic":
            model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)
            model.fit(p, y_arr)
            # A run of all-0 (all-1) outcomes fits exactly 0 (1): one later positive there would
            # cost infinite log loss. Half an observation of shrinkage keeps outputs strictly inside.
            clip = (0.5 / len(p), 1.0 - 0.5 / len(p))
        self.method_ = method
        self.model_ = model
        self.clip_ = clip
        self.n_fit_rows_ = len(p)
        return self

    def transform(self, proba: object) -> np.ndarray:
        """Calibrated positive-class probability for each input probability."""
        check_is_fitted(self)
        p = _check_proba(proba)
        if self.method_ == "sigmoid":
            return self.model_.predict_proba(_logit(p).reshape(-1, 1))[:, 1]
        if self.method_ == "isotonic":
            return np.clip(self.model_.predict(p), *self.clip_)
        return p.copy()

    def describe(self) -> dict[str, object]:
        """JSON-ready parameters, rounded so that the config hash is stable across platforms."""
        check_is_fitted(self)
        params: dict[str, object] = {}
        if self.method_ == "sigmoid":
            params = {
                "slope": _round_sig(self.model_.coef_[0, 0]),
                "intercept": _round_sig(self.model_.intercept_[0]),
            }
        elif self.method_ == "isotonic":
            params = {
                "x_thresholds": _round_list(self.model_.X_thresholds_),
                "y_thresholds": _round_list(self.model_.y_thresholds_),
                "clip": _round_list(np.array(self.clip_)),
            }
        return {"method": self.method_, "params": params}


# --------------------------------------------------------------------------- selection


@dataclass
class CalibrationChoice:
    """The calibrator chosen on cross-validated out-of-fold evidence, refitted on all rows."""

    chosen: str
    calibrator: ProbabilityCalibrator  # chosen method, fitted on ALL out-of-fold rows given
    criterion: str
    evidence: dict[str, dict[str, float]]  # method -> cross-validated calibration scores
    cv_proba: dict[str, np.ndarray]  # method -> each row calibrated by a fit that did not see it

    def describe(self) -> dict[str, object]:
        return {
            "method": self.chosen,
            "criterion": self.criterion,
            "params": self.calibrator.describe()["params"],
            "fitted_on": "out_of_fold",
            "rows": int(self.calibrator.n_fit_rows_),
        }


def _check_folds(fold_of_row: object, n: int) -> np.ndarray:
    folds = np.asarray(fold_of_row)
    if folds.shape != (n,):
        raise ValueError(f"fold_of_row must have one fold per row ({n}), got shape {folds.shape}")
    if not np.issubdtype(folds.dtype, np.integer) or (folds < 0).any():
        raise ValueError("fold_of_row must contain non-negative integer fold ids 0..K-1")
    if len(np.unique(folds)) < 2:
        raise ValueError("fold_of_row must name at least 2 folds to cross-validate the calibrator")
    return folds


def _cross_validated(method: str, p: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Fold k is calibrated by a calibrator fitted on the other folds only."""
    out = np.full(len(p), np.nan)
    for k in np.unique(folds):
        fit_rows, predict_rows = folds != k, folds == k
        fitted = ProbabilityCalibrator(method).fit(p[fit_rows], y[fit_rows])
        out[predict_rows] = fitted.transform(p[predict_rows])
    return out


def _scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    clipped = np.clip(proba, _LOG_LOSS_EPS, 1 - _LOG_LOSS_EPS)
    return {
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y, proba)),
        "ece_uniform": expected_calibration_error(y, proba, 10, "uniform"),
        "ece_quantile": expected_calibration_error(y, proba, 10, "quantile"),
    }


def select_calibrator(
    oof_proba: object,
    y: object,
    fold_of_row: object,
    methods: tuple[str, ...] = CALIBRATION_METHODS,
    criterion: str = "log_loss",
) -> CalibrationChoice:
    """Cross-validate each method over the members' folds, keep the best, refit it on all rows.

    `oof_proba` must be out-of-fold probabilities of the training rows: the holdout never
    enters, so it cannot shape the calibrator. Ties keep the earlier method, so "none" (listed
    first) stays unless calibrating actually helps.
    """
    p_raw = np.asarray(oof_proba, dtype=float)
    if np.isnan(p_raw).any():
        raise ValueError(
            f"out-of-fold probabilities are missing for {int(np.isnan(p_raw).sum())} row(s); "
            "every training row needs one to fit the calibrator"
        )
    y_arr, p = _check_y_proba(y, p_raw)
    folds = _check_folds(fold_of_row, len(p))
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"methods must name at least one of {CALIBRATION_METHODS}")
    for method in methods:
        _check_method(method)
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must not repeat, got {methods}")
    if criterion not in CALIBRATION_CRITERIA:
        raise ValueError(f"criterion must be one of {CALIBRATION_CRITERIA}, got {criterion!r}")

    evidence: dict[str, dict[str, float]] = {}
    cv_proba: dict[str, np.ndarray] = {}
    chosen = methods[0]
    for method in methods:
        cv_proba[method] = _cross_validated(method, p, y_arr, folds)
        evidence[method] = _scores(y_arr, cv_proba[method])
        if evidence[method][criterion] < evidence[chosen][criterion]:  # strict: ties keep earlier
            chosen = method
    calibrator = ProbabilityCalibrator(chosen).fit(p, y_arr)
    return CalibrationChoice(chosen, calibrator, criterion, evidence, cv_proba)
