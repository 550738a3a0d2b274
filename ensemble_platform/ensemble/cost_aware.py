"""Cost-aware strategies: a cascade and a router (mixture of experts), both computed lazily.

Both follow the `Combiner` contract (fitted on the out-of-fold matrix P, `positive_proba(P, X)`),
and both compute through `lazy_proba(fetch, n, X)`, where `fetch(j, rows)` returns member j's
probabilities for those rows only. The eager `positive_proba` is that same computation with `fetch`
reading columns of P, so what validation scores is exactly what lazy serving computes, and the
members a row needs are known per row (`LazyResult.called`).

* `Cascade`: members ordered by measured cost (cheapest first). Stage k's probability is the
  log-loss-optimal weighted average of the first k+1 members (later stages use the earlier stages'
  outputs); a row exits at the first stage whose probability is at least `exit_bands_[k]` away from
  the decision threshold; the last stage is the full weighted average. The bands are chosen on the
  fitting rows, stage by stage, as the narrowest that keep the cascade's log loss within
  `tolerance` of the full weighted average's.
* `Router`: a seeded multinomial logistic regression on the features predicts which member has the
  lowest log loss on a row (ties to the cheaper member); a row goes to that member alone when the
  router's confidence (its top class probability) reaches `confidence_threshold_`, else to the full
  ensemble (the weighted average of all members). The threshold is chosen on inner cross-validated
  router predictions of the fitting rows: the lowest that keeps log loss within `tolerance` of the
  full ensemble's.

Both are fitted and chosen on out-of-fold rows only (`ensemble.selection`): the holdout never
reaches the router or the bands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.ensemble.batching import BLOCK_ROWS
from ensemble_platform.ensemble.strategies import BoundedFit, Combiner, WeightedAverage, _log_loss, encode_features
from ensemble_platform.members.catalogue import one_hot_scaled

MemberFetch = Callable[[int, np.ndarray], np.ndarray]
FALLBACK = -1  # router route code: the row went to the full ensemble
NEVER_EXIT = 1.0  # a band no probability reaches (|p - t| < 1 for a threshold inside (0, 1))
NEVER_ROUTE = 2.0  # a confidence no router reaches
BAND_GRID = tuple(round(b, 3) for b in np.arange(0.02, 0.5, 0.02)) + (NEVER_EXIT,)
CONFIDENCE_GRID = tuple(round(c, 3) for c in np.arange(0.0, 1.0, 0.05)) + (NEVER_ROUTE,)


@dataclass(frozen=True)
class LazyResult:
    """Per row: the combined probability, which members were called, and the route code."""

    proba: np.ndarray  # (n,)
    called: np.ndarray  # (n, members) bool
    route: np.ndarray  # (n,) int: cascade: the stage a row exited at (0-based); router: member or FALLBACK


def _cost_order(costs: tuple[float, ...] | None, m: int) -> list[int]:
    """Member columns cheapest first (ties and unknown costs keep column order)."""
    if costs is None:
        return list(range(m))
    if len(costs) != m:
        raise ValueError(f"costs has {len(costs)} entries for {m} members; expected one per member column")
    return [int(j) for j in np.argsort(np.asarray(costs, dtype=float), kind="stable")]


class LazyCombiner(Combiner):
    """A combiner whose rows need only some members; `positive_proba` is the lazy computation on P."""

    def lazy_proba(self, fetch: MemberFetch, n: int, X: pd.DataFrame | None = None) -> LazyResult:
        raise NotImplementedError

    def positive_proba(self, P, X=None):
        P = np.asarray(P, dtype=float)
        return self.lazy_proba(lambda j, rows: P[rows, j], len(P), X).proba

    def calls(self, P: np.ndarray, X: pd.DataFrame | None = None) -> np.ndarray:
        """(n, members) bool: which members each row of P needs."""
        P = np.asarray(P, dtype=float)
        return self.lazy_proba(lambda j, rows: P[rows, j], len(P), X).called

    def route_reason(self, code: int, names: list[str]) -> str:
        """Why a row called only some members, in words (`names`: the member columns' names)."""
        raise NotImplementedError

    def full_weights(self) -> np.ndarray:
        """The full ensemble's weights per member column (the degraded-mode fallback)."""
        raise NotImplementedError


def _simplex_weights(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold-log-loss-optimal convex weights of the columns of P (`WeightedAverage`)."""
    return np.asarray(WeightedAverage().fit(P, y).weights_, dtype=float)


def _weighted(columns: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """sum_i weights[i] * columns[i], accumulated in order, value by value (no BLAS reduction:
    a row's result does not depend on its batch)."""
    total = np.zeros(len(columns[0])) if columns else np.zeros(0)
    for w, column in zip(weights, columns):
        total = total + w * column
    return total


def _full_ensemble(fetch: MemberFetch, rows: np.ndarray, weights: np.ndarray, called: np.ndarray) -> np.ndarray:
    """The full weighted average on `rows`, calling the members with a non-zero weight."""
    used = [j for j in range(len(weights)) if weights[j] > 0]
    for j in used:
        called[rows, j] = True
    return _weighted([fetch(j, rows) for j in used], weights[used])


class Cascade(LazyCombiner):
    """Cheapest members first; a row stops at the first confident stage (module docstring).

    Parameters
    ----------
    costs : tuple of float or None
        Measured predict cost per row of each member column (None: column order).
    tolerance : float, default=0.002
        How much worse (log loss on the fitting rows) than the full weighted average the cascade may be.
    threshold : float, default=0.5
        The decision threshold the exit bands are measured from.

    Attributes
    ----------
    order_ : list of int
        Member columns in stage order.
    stage_weights_ : list of ndarray
        Stage k's probability is the weighted average (weights on the simplex, fitted on the fitting
        rows) of the first k+1 members in stage order; the last stage is the full weighted average.
    exit_bands_ : list of float
        One per stage but the last; a row exits at stage k when |p_k - threshold| >= exit_bands_[k]
        (`NEVER_EXIT`: no row exits there).
    """

    def __init__(self, costs: tuple[float, ...] | None = None, tolerance: float = 0.002, threshold: float = 0.5):
        self.costs = costs
        self.tolerance = tolerance
        self.threshold = threshold

    def _stage_proba(self, P: np.ndarray) -> np.ndarray:
        return np.column_stack([
            _weighted([P[:, j] for j in self.order_[: k + 1]], self.stage_weights_[k]) for k in range(len(self.order_))
        ])

    def _exit_proba(self, stages: np.ndarray, bands: list[float]) -> np.ndarray:
        proba, open_rows = stages[:, -1].copy(), np.ones(len(stages), dtype=bool)
        for k, band in enumerate(bands):
            exits = open_rows & (np.abs(stages[:, k] - self.threshold) >= band)
            proba[exits] = stages[exits, k]
            open_rows &= ~exits
        return proba

    def fit(self, P, y, X=None):
        P = np.asarray(P, dtype=float)
        m = P.shape[1]
        self.order_ = _cost_order(self.costs, m)
        # Stage k: the log-loss-optimal weighted average of the first k+1 members (cost order).
        self.stage_weights_ = [_simplex_weights(P[:, self.order_[: k + 1]], y) if k else np.ones(1)
                               for k in range(m)]
        stages = self._stage_proba(P)
        budget = _log_loss(y, stages[:, -1]) + self.tolerance
        bands = [NEVER_EXIT] * (m - 1)
        for k in range(m - 1):  # stage by stage, the narrowest band that keeps the budget
            for band in BAND_GRID:
                trial = bands[:k] + [band] + bands[k + 1:]
                if _log_loss(y, self._exit_proba(stages, trial)) <= budget:
                    # A band no fitting row reaches is untested: no row exits there at all.
                    reached = bool((np.abs(stages[:, k] - self.threshold) >= band).any())
                    bands[k] = float(band) if reached else NEVER_EXIT
                    break
        self.exit_bands_ = bands
        self.n_members_ = m
        self.classes_ = np.array([0, 1])
        return self

    def lazy_proba(self, fetch, n, X=None):
        m = self.n_members_
        proba, route = np.zeros(n), np.full(n, m - 1)
        called = np.zeros((n, m), dtype=bool)
        open_rows, seen = np.arange(n), np.full((n, m), np.nan)
        for k, j in enumerate(self.order_):
            if len(open_rows) == 0:
                break
            seen[open_rows, j] = fetch(j, open_rows)
            called[open_rows, j] = True
            stage = _weighted([seen[open_rows, i] for i in self.order_[: k + 1]], self.stage_weights_[k])
            exits = (np.abs(stage - self.threshold) >= self.exit_bands_[k]) if k < m - 1 else np.ones(len(stage), bool)
            proba[open_rows[exits]] = stage[exits]
            route[open_rows[exits]] = k
            open_rows = open_rows[~exits]
        return LazyResult(proba, called, route)

    def route_reason(self, code, names):
        return f"cascade exited at stage {int(code) + 1} of {self.n_members_}"

    def full_weights(self):
        weights = np.zeros(self.n_members_)
        weights[self.order_] = self.stage_weights_[-1]
        return weights

    def describe(self):
        return {"stage_order": list(self.order_), "exit_bands": [float(b) for b in self.exit_bands_],
                "stage_weights": [[round(float(w), 12) for w in weights] for weights in self.stage_weights_],
                "threshold": self.threshold, "tolerance": self.tolerance}


class Router(BoundedFit, LazyCombiner):
    """Mixture of experts: one member per confident row, the full ensemble otherwise.

    Parameters
    ----------
    schema : FeatureSchema
        Encodes the features the router reads.
    costs : tuple of float or None
        Member costs per row; per-row loss ties go to the cheaper member.
    tolerance : float, default=0.002
        How much worse (log loss, inner out-of-fold) than the full ensemble routing may be.
    C : float, default=1.0
        Inverse regularisation of the router's logistic regression.
    random_state : int, default=0
        Seed of the router and of its inner folds.
    inner_folds : int, default=3
        Folds of the inner cross-validation that chooses the confidence threshold.
    max_fit_rows : int or None, default=None
        The router, its inner folds and its threshold use a stratified sample of at most this many
        rows (None: all rows); the full ensemble's weights always use every row.

    Attributes
    ----------
    fit_rows_ : int or None
        Rows of the router's sample, or None when it saw all rows.
    features_ : ColumnTransformer
        Encodes X for the router.
    router_ : LogisticRegression or None
        Predicts the best member (its classes are member columns); None when one member is always best.
    constant_member_ : int
        The member every row goes to when `router_` is None (else -1).
    confidence_threshold_ : float
        Rows whose router confidence is below this go to the full ensemble.
    fallback_weights_ : ndarray
        The full ensemble: the log-loss-optimal weighted average of all members (fitting rows).
    """

    needs_features = True

    def __init__(self, schema: FeatureSchema | None = None, costs: tuple[float, ...] | None = None,
                 tolerance: float = 0.002, C: float = 1.0, random_state: int = 0, inner_folds: int = 3,
                 max_fit_rows: int | None = None):
        self.schema = schema
        self.costs = costs
        self.tolerance = tolerance
        self.C = C
        self.random_state = random_state
        self.inner_folds = inner_folds
        self.max_fit_rows = max_fit_rows

    def _best_member(self, P: np.ndarray, y: np.ndarray) -> np.ndarray:
        p = np.clip(P, 1e-6, 1 - 1e-6)
        losses = -(y[:, None] * np.log(p) + (1 - y[:, None]) * np.log1p(-p))
        order = _cost_order(self.costs, P.shape[1])
        return np.asarray(order)[np.argmin(losses[:, order], axis=1)]  # argmin: first (cheapest) on ties

    def _fit_router(self, Z: np.ndarray, target: np.ndarray) -> tuple[LogisticRegression | None, int]:
        if len(np.unique(target)) < 2:
            return None, int(target[0])
        model = LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)
        return model.fit(Z, target), -1

    @staticmethod
    def _choices(model: LogisticRegression | None, constant: int, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(member per row, confidence per row), on fixed blocks (batch-invariant)."""
        if model is None:
            return np.full(len(Z), constant), np.ones(len(Z))
        if len(Z) == 0:
            return np.zeros(0, dtype=int), np.zeros(0)
        proba = _blocked_rows(lambda rows: model.predict_proba(Z[rows]), len(Z))
        return np.asarray(model.classes_)[np.argmax(proba, axis=1)], proba.max(axis=1)

    def fit(self, P, y, X=None):
        if X is None or self.schema is None:
            raise ValueError("Router needs the original features X and a schema")
        P, y = np.asarray(P, dtype=float), np.asarray(y)
        m = P.shape[1]
        self.fallback_weights_ = _simplex_weights(P, y)  # the full ensemble: on every fitting row
        # The router, its inner folds and its threshold: on a stratified sample above max_fit_rows.
        P, y, X = self._fit_sample(P, y, X)
        target = self._best_member(P, y)
        self.features_ = one_hot_scaled(self.schema).fit(X)
        Z = np.asarray(self.features_.transform(X), dtype=float)
        # Inner out-of-fold router choices: the threshold is chosen on routes the router did not fit.
        member, confidence = np.zeros(len(y), dtype=int), np.zeros(len(y))
        folds = KFold(self.inner_folds, shuffle=True, random_state=self.random_state)
        for fit_rows, predict_rows in folds.split(Z):
            model, constant = self._fit_router(Z[fit_rows], target[fit_rows])
            member[predict_rows], confidence[predict_rows] = self._choices(model, constant, Z[predict_rows])
        full = _weighted([P[:, j] for j in range(m)], self.fallback_weights_)
        budget = _log_loss(y, full) + self.tolerance
        routed_proba = P[np.arange(len(y)), member]
        self.confidence_threshold_ = next(
            c for c in CONFIDENCE_GRID if _log_loss(y, np.where(confidence >= c, routed_proba, full)) <= budget
        )
        self.router_, self.constant_member_ = self._fit_router(Z, target)
        self.n_members_ = m
        self.classes_ = np.array([0, 1])
        return self

    def route(self, X: pd.DataFrame) -> np.ndarray:
        """Per row: the member the router sends it to, or FALLBACK (the full ensemble)."""
        Z = encode_features(self.features_, X)
        member, confidence = self._choices(self.router_, self.constant_member_, Z)
        return np.where(confidence >= self.confidence_threshold_, member, FALLBACK)

    def lazy_proba(self, fetch, n, X=None):
        if X is None:
            raise ValueError("Router needs the original features X")
        m = self.n_members_
        route = self.route(X)
        proba, called = np.zeros(n), np.zeros((n, m), dtype=bool)
        for j in range(m):
            rows = np.flatnonzero(route == j)
            if len(rows):
                proba[rows] = fetch(j, rows)
                called[rows, j] = True
        fallback = np.flatnonzero(route == FALLBACK)
        if len(fallback):
            proba[fallback] = _full_ensemble(fetch, fallback, self.fallback_weights_, called)
        return LazyResult(proba, called, route)

    def route_reason(self, code, names):
        return "router not confident: full ensemble" if code == FALLBACK else f"routed to {names[int(code)]}"

    def full_weights(self):
        return np.asarray(self.fallback_weights_, dtype=float)

    def describe(self):
        described: dict[str, object] = {
            "router_model": "LogisticRegression" if self.router_ is not None else "constant",
            "C": self.C, "tolerance": self.tolerance,
            "confidence_threshold": float(self.confidence_threshold_),
            "fallback_weights": [round(float(w), 12) for w in self.fallback_weights_],
            **self._bound_described(),
        }
        if self.router_ is not None:
            described["routable_members"] = [int(c) for c in self.router_.classes_]
            described["intercepts"] = [round(float(b), 12) for b in self.router_.intercept_]
            described["coefficients"] = [[round(float(c), 12) for c in row] for row in self.router_.coef_]
        else:
            described["routable_members"] = [self.constant_member_]
        return described


def route_labels(combiner: LazyCombiner, P: np.ndarray, X: pd.DataFrame | None, names: list[str]) -> list[str]:
    """Per row of the member matrix P: where the lazy combiner sent it (router: the member's name or
    "full ensemble"; cascade: "stage k")."""
    result = combiner.lazy_proba(lambda j, rows: np.asarray(P, dtype=float)[rows, j], len(P), X)
    if isinstance(combiner, Router):
        return ["full ensemble" if code == FALLBACK else names[int(code)] for code in result.route]
    return [f"stage {int(code) + 1}" for code in result.route]


def routing_rates(labels: list[str], groups: dict[str, pd.Series]) -> dict[str, dict[str, dict[str, float]]]:
    """attribute -> group -> route label -> share of the group's rows (routing rates by sensitive group)."""
    routes = pd.Series(labels)
    rates: dict[str, dict[str, dict[str, float]]] = {}
    for attribute, group in groups.items():
        table = pd.crosstab(pd.Series(np.asarray(group, dtype=object), name="group"), routes.rename("route"),
                            normalize="index")
        rates[attribute] = {str(g): {str(r): float(v) for r, v in row.items()} for g, row in table.iterrows()}
    return rates


def _blocked_rows(fn: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """`fn` (row positions -> one row of values per position) on fixed `BLOCK_ROWS` blocks, the last
    padded with its first position as `batching.blocked` does: a row's values do not depend on its batch."""
    parts = []
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        positions = np.arange(start, stop)
        if len(positions) < BLOCK_ROWS:
            positions = np.concatenate([positions, np.full(BLOCK_ROWS - len(positions), start)])
        parts.append(np.asarray(fn(positions), dtype=float)[: stop - start])
    return np.vstack(parts)
