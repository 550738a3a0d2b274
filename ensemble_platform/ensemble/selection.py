"""Fit every strategy on out-of-fold predictions and choose one on out-of-fold evidence.

Each strategy is scored by cross-validation over the *same* folds the members used: for fold k
the combiner is fitted on the out-of-fold rows of the other folds and predicts fold k. The
holdout is not an input here, so it cannot influence the choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone

from ensemble_platform.ensemble.strategies import Combiner
from ensemble_platform.evaluation.metrics import binary_metrics, is_better
from ensemble_platform.logging_utils import ProgressLog, null_log
from ensemble_platform.threads import single_threaded_math


@dataclass
class StrategyEvidence:
    """One strategy's cross-validated out-of-fold performance and its final fit."""

    name: str
    combiner: Combiner  # fitted on all out-of-fold rows
    cv_proba: np.ndarray  # each row predicted by a combiner that did not see that row
    cv_metrics: dict[str, float]
    fit_seconds: float


@dataclass
class CandidateSet:
    candidates: dict[str, StrategyEvidence]
    chosen: str
    criterion: str

    @property
    def chosen_evidence(self) -> StrategyEvidence:
        return self.candidates[self.chosen]

    def evidence_table(self) -> dict[str, dict[str, float]]:
        return {name: dict(ev.cv_metrics) for name, ev in self.candidates.items()}


def cross_validated_proba(
    combiner: Combiner, P: np.ndarray, y: np.ndarray, fold_of_row: np.ndarray, X: pd.DataFrame | None
) -> np.ndarray:
    proba = np.full(len(y), np.nan)
    for k in np.unique(fold_of_row):
        fit_rows, predict_rows = fold_of_row != k, fold_of_row == k
        X_fit = X.iloc[np.flatnonzero(fit_rows)] if X is not None and combiner.needs_features else None
        X_predict = X.iloc[np.flatnonzero(predict_rows)] if X is not None and combiner.needs_features else None
        fitted = clone(combiner).fit(P[fit_rows], y[fit_rows], X_fit)
        proba[predict_rows] = fitted.positive_proba(P[predict_rows], X_predict)
    return proba


def select_strategy(
    strategies: dict[str, Combiner],
    P: np.ndarray,
    y: np.ndarray,
    fold_of_row: np.ndarray,
    X: pd.DataFrame | None = None,
    criterion: str = "log_loss",
    log: ProgressLog = null_log,
) -> CandidateSet:
    """Score every strategy on the shared folds, choose by `criterion`, refit on all rows.

    Ties keep the earlier (simpler) strategy of `strategies`.
    """
    if np.isnan(P).any():
        raise ValueError("out-of-fold matrix has missing predictions; every training row needs one per member")
    candidates: dict[str, StrategyEvidence] = {}
    chosen: str | None = None
    for i, (name, combiner) in enumerate(strategies.items(), start=1):
        started = time.perf_counter()
        with single_threaded_math():  # the fitted weights are versioned: no thread-count dependence
            cv_proba = cross_validated_proba(combiner, P, y, fold_of_row, X)
            fitted = clone(combiner).fit(P, y, X if combiner.needs_features else None)
        evidence = StrategyEvidence(
            name, fitted, cv_proba, binary_metrics(y, cv_proba), time.perf_counter() - started
        )
        candidates[name] = evidence
        if chosen is None or is_better(criterion, evidence.cv_metrics[criterion],
                                       candidates[chosen].cv_metrics[criterion]):
            chosen = name
        log.info(
            f"strategy {i} of {len(strategies)} ({name}): out-of-fold {criterion} "
            f"{evidence.cv_metrics[criterion]:.4f} ({evidence.fit_seconds:.1f}s)"
        )
    assert chosen is not None, "no strategies given"
    return CandidateSet(candidates, chosen, criterion)
