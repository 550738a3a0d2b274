"""Post-hoc calibrators: a fitted model part of the ensemble, chosen and fitted on out-of-fold
probabilities of the training rows (the holdout never enters). The measures they are judged by
live in `evaluation.calibration`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.utils.validation import check_is_fitted

from ensemble_platform.evaluation.calibration import (
    CALIBRATION_CRITERIA,
    CALIBRATION_METHODS,
    check_proba,
    check_y_proba,
    expected_calibration_error,
)

_LOG_LOSS_EPS = 1e-15  # same clipping as metrics.binary_metrics, so the numbers agree
_LOGIT_EPS = 1e-6  # keeps logit(p) finite for p in {0, 1}
_DESCRIBE_DIGITS = 12
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
        y_arr, p = check_y_proba(y, proba)
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
        p = check_proba(proba)
        model = self.model_
        if isinstance(model, LogisticRegression):
            return model.predict_proba(_logit(p).reshape(-1, 1))[:, 1]
        if isinstance(model, IsotonicRegression):
            return np.clip(model.predict(p), *self.clip_)
        return p.copy()

    def describe(self) -> dict[str, object]:
        """JSON-ready parameters, rounded so that the config hash is stable across platforms."""
        check_is_fitted(self)
        params: dict[str, object] = {}
        model = self.model_
        if isinstance(model, LogisticRegression):
            params = {
                "slope": _round_sig(model.coef_[0, 0]),
                "intercept": _round_sig(model.intercept_[0]),
            }
        elif isinstance(model, IsotonicRegression):
            params = {
                "x_thresholds": _round_list(model.X_thresholds_),
                "y_thresholds": _round_list(model.y_thresholds_),
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
    y_arr, p = check_y_proba(y, p_raw)
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
