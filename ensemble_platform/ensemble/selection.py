"""Fit every strategy on out-of-fold predictions and choose one on out-of-fold evidence.

Each strategy is scored by cross-validation over the *same* folds the members used: for fold k
the combiner is fitted on the out-of-fold rows of the other folds and predicts fold k. The
holdout is not an input here, so it cannot influence the choice.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from ensemble_platform.ensemble.cost_aware import LazyCombiner
from ensemble_platform.ensemble.pruning import used_columns
from ensemble_platform.ensemble.strategies import SINGLE_MEMBER, Combiner, SingleMember
from ensemble_platform.evaluation.metrics import LOWER_IS_BETTER, binary_metrics
from ensemble_platform.logging_utils import ProgressLog, null_log
from ensemble_platform.policy import SelectionPolicy
from ensemble_platform.threads import single_threaded_math

# A more complex candidate must beat the simplest within-noise one by more than this many standard
# errors of the paired fold differences (the classic one-standard-error rule).
NOISE_SE_MULTIPLIER = 1.0
SELECTION_RULE = (
    "one-standard-error rule on paired per-fold differences: the simplest candidate whose mean fold "
    f"loss exceeds the best candidate's by at most {NOISE_SE_MULTIPLIER:g} x SE(fold differences)"
)
# Stored keys of the per-candidate noise comparison (validation report, model card).
MEAN_DIFFERENCE = "mean_difference_to_best"
STANDARD_ERROR = "standard_error"
WITHIN_NOISE = "within_noise"


@dataclass(frozen=True)
class NoiseComparison:
    """One candidate against the best one, fold by fold."""

    mean_difference: float  # mean over folds of (candidate's fold loss - best's fold loss), >= 0
    standard_error: float  # sd(fold differences, ddof=1) / sqrt(K)
    within_noise: bool  # mean_difference <= NOISE_SE_MULTIPLIER * standard_error

    def as_dict(self) -> dict[str, float | bool]:
        return {MEAN_DIFFERENCE: self.mean_difference, STANDARD_ERROR: self.standard_error,
                WITHIN_NOISE: self.within_noise}


def choose_within_noise(
    fold_losses: dict[str, np.ndarray], multiplier: float = NOISE_SE_MULTIPLIER
) -> tuple[str, str, dict[str, NoiseComparison]]:
    """(chosen, best, comparison per candidate) from per-fold losses (lower is better), candidates in
    order of simplicity. Ties for the best keep the simpler one."""
    if not fold_losses:
        raise ValueError("no candidates to choose from")
    losses = {name: np.asarray(values, dtype=float) for name, values in fold_losses.items()}
    counts = {len(values) for values in losses.values()}
    if len(counts) != 1:
        raise ValueError(f"candidates have losses for different numbers of folds: {sorted(counts)}")
    best = min(losses, key=lambda name: float(losses[name].mean()))  # min keeps the first on ties
    comparisons = {}
    for name, values in losses.items():
        differences = values - losses[best]
        k = len(differences)
        se = float(differences.std(ddof=1) / np.sqrt(k)) if k > 1 else 0.0
        mean = float(differences.mean())
        comparisons[name] = NoiseComparison(mean, se, mean <= multiplier * se)
    chosen = next(name for name, comparison in comparisons.items() if comparison.within_noise)
    return chosen, best, comparisons


def per_fold_loss(criterion: str, y: np.ndarray, proba: np.ndarray, fold_of_row: np.ndarray) -> np.ndarray:
    """The criterion on each fold's rows, as a loss (higher-is-better metrics negated)."""
    sign = 1.0 if criterion in LOWER_IS_BETTER else -1.0
    return np.array([sign * binary_metrics(y[fold_of_row == k], proba[fold_of_row == k])[criterion]
                     for k in np.unique(fold_of_row)])


@dataclass
class StrategyEvidence:
    """One strategy's cross-validated out-of-fold performance and its final fit."""

    name: str
    combiner: Combiner  # fitted on all out-of-fold rows
    cv_proba: np.ndarray  # each row predicted by a combiner that did not see that row
    cv_metrics: dict[str, float]
    fit_seconds: float
    # Expected predict seconds per row over the members it calls (out of fold); None: costs unknown.
    cost_per_row: float | None = None
    members_called_per_row: float | None = None


@dataclass
class CandidateSet:
    candidates: dict[str, StrategyEvidence]
    chosen: str
    criterion: str
    best: str = ""  # lowest mean fold loss; `chosen` is the simplest candidate within noise of it
    noise: dict[str, NoiseComparison] = field(default_factory=dict)
    eligible: tuple[str, ...] = ()  # the candidates the choice was made among (empty: all)
    selection: SelectionPolicy | None = None
    cheapest_member_cost: float | None = None  # seconds per row of the cheapest member
    member_costs: tuple[float, ...] = ()  # seconds per row, per member column (measured)

    @property
    def chosen_evidence(self) -> StrategyEvidence:
        return self.candidates[self.chosen]

    def evidence_table(self) -> dict[str, dict[str, float]]:
        """Out-of-fold metrics of the candidates the choice was made among (every candidate, cost-aware
        ones included, is on the frontier: `frontier_table`)."""
        return {name: dict(ev.cv_metrics) for name, ev in self.candidates.items() if self.is_eligible(name)}

    def is_eligible(self, name: str) -> bool:
        return not self.eligible or name in self.eligible

    @property
    def model_selection(self) -> bool:
        """True when the chosen candidate is one member alone: no combination helped beyond noise."""
        return self.chosen == SINGLE_MEMBER

    def frontier_table(self) -> dict[str, dict[str, float | bool | None]]:
        """Per candidate: out-of-fold log loss and AUC against expected cost per row (and its ratio to
        the cheapest member), whether it was eligible and whether it is the chosen point."""
        cheapest = self.cheapest_member_cost
        return {
            name: {
                "log_loss": ev.cv_metrics["log_loss"], "roc_auc": ev.cv_metrics["roc_auc"],
                "cost_per_row": ev.cost_per_row, "members_called_per_row": ev.members_called_per_row,
                "cost_ratio": (ev.cost_per_row / cheapest if ev.cost_per_row is not None and cheapest else None),
                "eligible": self.is_eligible(name), "chosen": name == self.chosen,
            }
            for name, ev in self.candidates.items()
        }

    def noise_table(self) -> dict[str, dict[str, float | bool]]:
        return {name: comparison.as_dict() for name, comparison in self.noise.items()}


def cross_validated_proba(
    combiner: Combiner, P: np.ndarray, y: np.ndarray, fold_of_row: np.ndarray, X: pd.DataFrame | None
) -> np.ndarray:
    return cross_validated(combiner, P, y, fold_of_row, X)[0]


def cross_validated(
    combiner: Combiner, P: np.ndarray, y: np.ndarray, fold_of_row: np.ndarray, X: pd.DataFrame | None
) -> tuple[np.ndarray, np.ndarray]:
    """(probability, members called) per row, each from a combiner fitted on the other folds. A fixed
    combiner calls the members it uses on every row; a lazy one (cascade, router) only those it needs."""
    proba = np.full(len(y), np.nan)
    called = np.zeros(P.shape, dtype=bool)
    for k in np.unique(fold_of_row):
        fit_rows, predict_rows = fold_of_row != k, fold_of_row == k
        X_fit = X.iloc[np.flatnonzero(fit_rows)] if X is not None and combiner.needs_features else None
        X_predict = X.iloc[np.flatnonzero(predict_rows)] if X is not None and combiner.needs_features else None
        fitted = clone(combiner).fit(P[fit_rows], y[fit_rows], X_fit)
        if isinstance(fitted, LazyCombiner):
            part = P[predict_rows]

            def fetch(j: int, rows: np.ndarray, part: np.ndarray = part) -> np.ndarray:
                return part[rows, j]

            result = fitted.lazy_proba(fetch, len(part), X_predict)
            proba[predict_rows], called[predict_rows] = result.proba, result.called
        else:
            proba[predict_rows] = fitted.positive_proba(P[predict_rows], X_predict)
            called[np.ix_(predict_rows, used_columns(fitted))] = True
    return proba, called


def eligible_candidates(candidates: dict[str, StrategyEvidence], selection: SelectionPolicy | None,
                        cheapest_member_cost: float | None) -> list[str]:
    """Without a selection block: the fixed-cost strategies (the rule as it was before cascades and
    routers). With one: every candidate within `max_cost_ratio` x the cheapest member's cost."""
    if selection is None:
        return [name for name, ev in candidates.items() if not isinstance(ev.combiner, LazyCombiner)]
    if selection.max_cost_ratio is None or not cheapest_member_cost:
        return list(candidates)
    budget = selection.max_cost_ratio * cheapest_member_cost
    within = [name for name, ev in candidates.items()
              if ev.cost_per_row is not None and ev.cost_per_row <= budget * (1 + 1e-9)]
    if not within:
        raise ValueError(f"no strategy costs at most {selection.max_cost_ratio} x the cheapest member "
                         f"({budget:.3g} s/row); raise selection.max_cost_ratio")
    return within


# Strategies scored at once. Threads, not processes: the work is numpy and scikit-learn on arrays of
# every training row (the GIL released in their loops), shared instead of copied per worker. Each
# strategy's computation is the same whichever thread runs it and whatever else runs beside it (one
# BLAS thread, one OpenMP thread), so the fitted weights, and the config hash, are the same bits.
CANDIDATE_WORKERS = 2


def _evidence(name: str, combiner: Combiner, P: np.ndarray, y: np.ndarray, fold_of_row: np.ndarray,
              X: pd.DataFrame | None, costs: np.ndarray | None) -> StrategyEvidence:
    """One strategy scored on the shared folds and refitted on all rows (run in a worker thread)."""
    started = time.perf_counter()
    # OpenMP's thread count is a per-thread setting: this worker's own, one (BLAS is process-wide).
    with threadpool_limits(limits=1, user_api="openmp"):
        cv_proba, called = cross_validated(combiner, P, y, fold_of_row, X)
        fitted = clone(combiner).fit(P, y, X if combiner.needs_features else None)
    return StrategyEvidence(
        name, fitted, cv_proba, binary_metrics(y, cv_proba), time.perf_counter() - started,
        cost_per_row=float((called @ np.asarray(costs, dtype=float)).mean()) if costs is not None else None,
        members_called_per_row=float(called.sum(axis=1).mean()),
    )


def select_strategy(
    strategies: dict[str, Combiner],
    P: np.ndarray,
    y: np.ndarray,
    fold_of_row: np.ndarray,
    X: pd.DataFrame | None = None,
    criterion: str = "log_loss",
    log: ProgressLog = null_log,
    costs: np.ndarray | None = None,
    selection: SelectionPolicy | None = None,
) -> CandidateSet:
    """Score every strategy on the shared folds, choose the simplest within fold noise of the best
    (module docstring), refit on all rows. `strategies` are given in order of simplicity.

    `costs` (seconds per row per member column) gives every candidate its expected cost per row
    (the frontier); `selection` (the spec's block) sets the criterion and a cost budget and lets the
    cost-aware candidates be chosen. Without it, only fixed-cost candidates are eligible."""
    if selection is not None:
        criterion = selection.objective
        if selection.max_cost_ratio is not None and costs is not None and SINGLE_MEMBER in strategies:
            # Under a budget, model selection picks the best member within it (the cheapest always is).
            budget = selection.max_cost_ratio * float(np.min(costs))
            strategies = {name: SingleMember(costs=tuple(float(c) for c in costs), max_cost=budget)
                          if name == SINGLE_MEMBER else combiner for name, combiner in strategies.items()}
    if np.isnan(P).any():
        raise ValueError("out-of-fold matrix has missing predictions; every training row needs one per member")
    candidates: dict[str, StrategyEvidence] = {}
    # One BLAS thread for every fit (the process-wide setting, made here once: the workers share it).
    with single_threaded_math(), ThreadPoolExecutor(CANDIDATE_WORKERS, thread_name_prefix="strategy") as pool:
        # The catalogue goes from simple to costly: the costly ones start first (the shortest overall).
        started = {name: pool.submit(_evidence, name, combiner, P, y, fold_of_row, X, costs)
                   for name, combiner in reversed(strategies.items())}
        pending = {name: started[name] for name in strategies}
        try:
            for i, (name, future) in enumerate(pending.items(), start=1):  # in catalogue order, as before
                evidence = candidates[name] = future.result()
                log.info(f"strategy {i} of {len(strategies)} ({name}): out-of-fold {criterion} "
                         f"{evidence.cv_metrics[criterion]:.4f} ({evidence.fit_seconds:.1f}s)")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if not candidates:
        raise ValueError("no strategies given")
    cheapest = float(np.min(costs)) if costs is not None and len(costs) else None
    eligible = eligible_candidates(candidates, selection, cheapest)
    chosen, best, noise = choose_within_noise(
        {name: per_fold_loss(criterion, y, candidates[name].cv_proba, fold_of_row) for name in eligible}
    )
    log.info(f"best out of fold: {best}; chosen (simplest within {NOISE_SE_MULTIPLIER:g} SE of it): {chosen}")
    return CandidateSet(candidates, chosen, criterion, best, noise,
                        eligible=tuple(eligible) if len(eligible) < len(candidates) else (),
                        selection=selection, cheapest_member_cost=cheapest,
                        member_costs=tuple(float(c) for c in costs) if costs is not None else ())
