"""Combiners: estimators whose input is the members' probability matrix P (rows x members).

They follow scikit-learn's estimator conventions (constructor stores parameters, `fit` learns
`*_` attributes, `predict_proba` returns an (n, 2) array) so they clone, compare and pickle like
any estimator. Stacking with passthrough also reads the original features, passed as `X`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import logit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.members.catalogue import one_hot_scaled
from ensemble_platform.members.fast_predict import FAST_PATH_MAX_ROWS, fast_path_enabled
from ensemble_platform.members.fast_preprocess import fast_transform
from ensemble_platform.members.scale import SCALE_ROWS

_EPS = 1e-6
_WEIGHT_FLOOR = 1e-9  # learned weights below this are set to zero
SINGLE_MEMBER = "single_member"  # the model-selection strategy's name
CASCADE = "cascade"  # cost-aware strategies (ensemble.cost_aware)
ROUTER = "router"
# Learned meta-models (stacking, the router) fit on a stratified, seeded sample of at most this many
# rows: a logistic regression with a few dozen coefficients is estimated as well from 50k rows as
# from 750k, and at 1M table rows the full fits took 32 s (stacking with passthrough) and 106 s (the
# router: 4 fits per fold) of the ensemble stage. Below it nothing changes (same configs and hashes).
COMBINER_FIT_ROWS = SCALE_ROWS


def _clip(P: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(P, dtype=float), _EPS, 1 - _EPS)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Binary log loss without scikit-learn's input validation: the weight searches call it
    thousands of times on arrays that are already clean."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _member_log_losses(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([_log_loss(y, P[:, j]) for j in range(P.shape[1])])


class Combiner(ClassifierMixin, BaseEstimator):
    """Shared plumbing: (n, 2) probabilities, labels and a readable description."""

    needs_features = False

    def fit(self, P: np.ndarray, y: np.ndarray, X: pd.DataFrame | None = None) -> Combiner:
        raise NotImplementedError

    def positive_proba(self, P: np.ndarray, X: pd.DataFrame | None = None) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, P: np.ndarray, X: pd.DataFrame | None = None) -> np.ndarray:
        p = self.positive_proba(np.asarray(P, dtype=float), X)
        return np.column_stack([1 - p, p])

    def predict(self, P: np.ndarray, X: pd.DataFrame | None = None) -> np.ndarray:
        return (self.positive_proba(np.asarray(P, dtype=float), X) >= 0.5).astype(int)

    def describe(self) -> dict[str, object]:
        """Learned parameters in JSON-ready form (for the config, semver and the model card)."""
        return {}


class MajorityVote(Combiner):
    """Each member votes positive when its probability >= `threshold`; the majority wins.

    The output probability is the positive vote share. An exact tie (even member count) is
    broken by the member with the best out-of-fold log loss, whose vote moves the share by a
    negligible epsilon so that thresholding at 0.5 yields that member's decision.

    Parameters
    ----------
    threshold : float, default=0.5
        A member votes positive when its probability is at least this.
    tie_epsilon : float, default=1e-6
        How far the tie-breaking member's vote moves an exact 0.5 share (up when it votes
        positive, down otherwise).

    Attributes
    ----------
    tie_breaker_ : int
        Column of P (member index) with the lowest log loss on the fitting rows; it breaks ties.
    n_members_ : int
        Number of members (columns of P) seen in `fit`.
    classes_ : ndarray of shape (2,)
        The class labels, ``[0, 1]``.
    """

    def __init__(self, threshold: float = 0.5, tie_epsilon: float = 1e-6):
        self.threshold = threshold
        self.tie_epsilon = tie_epsilon

    def fit(self, P, y, X=None):
        P = np.asarray(P, dtype=float)
        self.tie_breaker_ = int(np.argmin(_member_log_losses(P, y)))
        self.n_members_ = P.shape[1]
        self.classes_ = np.array([0, 1])
        return self

    def positive_proba(self, P, X=None):
        votes = (P >= self.threshold).astype(float)
        share = votes.mean(axis=1)
        tie = np.isclose(share, 0.5)
        nudge = np.where(votes[:, self.tie_breaker_] == 1.0, self.tie_epsilon, -self.tie_epsilon)
        return np.where(tie, 0.5 + nudge, share)

    def describe(self):
        return {"threshold": self.threshold, "tie_breaker_index": self.tie_breaker_}


class SoftAverage(Combiner):
    """The unweighted mean of member probabilities.

    Attributes
    ----------
    n_members_ : int
        Number of members (columns of P) seen in `fit`; each weighs ``1 / n_members_``.
    classes_ : ndarray of shape (2,)
        The class labels, ``[0, 1]``.
    """

    def fit(self, P, y, X=None):
        self.n_members_ = np.asarray(P).shape[1]
        self.classes_ = np.array([0, 1])
        return self

    def positive_proba(self, P, X=None):
        return P.mean(axis=1)

    def describe(self):
        return {"weights": [round(1 / self.n_members_, 12)] * self.n_members_}


class WeightedAverage(Combiner):
    """A convex combination of member probabilities with weights minimising out-of-fold log loss.

    Weights are constrained to the simplex (non-negative, summing to one) and found with SLSQP
    starting from equal weights, so the result is deterministic.

    Attributes
    ----------
    weights_ : ndarray of shape (n_members_,)
        Non-negative member weights summing to one.
    n_members_ : int
        Number of members (columns of P) seen in `fit`.
    classes_ : ndarray of shape (2,)
        The class labels, ``[0, 1]``.
    """

    def fit(self, P, y, X=None):
        P = _clip(P)
        m = P.shape[1]

        def loss(w: np.ndarray) -> float:
            return _log_loss(y, P @ w)

        result = minimize(
            loss, np.full(m, 1 / m), method="SLSQP", bounds=[(0.0, 1.0)] * m,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            options={"maxiter": 500, "ftol": 1e-10},
        )
        # SLSQP leaves round-off (~1e-16) on its bounds: such a weight is zero (the member is pruned).
        weights = np.where(result.x > _WEIGHT_FLOOR, result.x, 0.0)
        self.weights_ = weights / weights.sum()
        self.n_members_ = m
        self.classes_ = np.array([0, 1])
        return self

    def positive_proba(self, P, X=None):
        return P @ self.weights_

    def describe(self):
        return {"weights": [round(float(w), 12) for w in self.weights_]}


class GreedySelection(WeightedAverage):
    """Caruana et al. (2004) ensemble selection: repeatedly add (with replacement) the member
    that most lowers out-of-fold log loss of the running average; weights are the pick counts.

    Parameters
    ----------
    n_rounds : int, default=50
        Number of picks; a member's weight is its pick count divided by this.

    Attributes
    ----------
    weights_ : ndarray of shape (n_members_,)
        Pick counts over `n_rounds` (non-negative, summing to one); ties go to the lower index.
    n_members_ : int
        Number of members (columns of P) seen in `fit`.
    classes_ : ndarray of shape (2,)
        The class labels, ``[0, 1]``.
    """

    def __init__(self, n_rounds: int = 50):
        self.n_rounds = n_rounds

    def fit(self, P, y, X=None):
        P = _clip(P)
        m = P.shape[1]
        counts = np.zeros(m)
        running = np.zeros(len(P))
        for step in range(1, self.n_rounds + 1):
            # np.argmin picks the lowest index on ties: deterministic.
            trial = [(running * (step - 1) + P[:, j]) / step for j in range(m)]
            best = int(np.argmin([_log_loss(y, t) for t in trial]))
            counts[best] += 1
            running = trial[best]
        self.weights_ = counts / counts.sum()
        self.n_members_ = m
        self.classes_ = np.array([0, 1])
        return self


def encode_features(features: Any, X: pd.DataFrame) -> np.ndarray:
    """`features.transform(X)` as floats, bit for bit. Combiners are evaluated on fixed 64-row blocks
    (`ensemble.batching`), where scikit-learn's per-call overhead (~5 ms) was nearly all the cost: 74 s
    of the 80 s the three reports took at 1M rows went to stacking's passthrough encoding. Small
    inputs therefore take the fitted encoder's numpy form (`members.fast_preprocess`, the same bits);
    anything it does not reproduce uses scikit-learn's own transform."""
    if fast_path_enabled() and len(X) <= FAST_PATH_MAX_ROWS:
        fast = fast_transform(features, X)
        if fast is not None:
            return np.asarray(fast, dtype=float)
    return np.asarray(features.transform(X), dtype=float)


def fit_sample(y: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray | None:
    """Sorted row indices of a sample of at most `max_rows` rows stratified by `y` (seeded), or None
    when all rows are used (no bound, or no more rows than it)."""
    if max_rows is None or len(y) <= max_rows:
        return None
    rows, _ = train_test_split(np.arange(len(y)), train_size=max_rows, stratify=y, random_state=seed)
    return np.sort(rows)


class BoundedFit:
    """For combiners whose learned part fits on a stratified, seeded sample of at most `max_fit_rows`
    rows (`COMBINER_FIT_ROWS` in the catalogue); the subclass holds `max_fit_rows` and `random_state`."""

    max_fit_rows: int | None
    random_state: int

    def _fit_sample(self, P: np.ndarray, y: np.ndarray, X: pd.DataFrame | None):
        """(P, y, X) on the fit sample (as given when unbounded); records `fit_rows_` (None: every row)."""
        rows = fit_sample(y, self.max_fit_rows, self.random_state)
        self.fit_rows_ = None if rows is None else len(rows)
        if rows is None:
            return P, y, X
        return P[rows], y[rows], (None if X is None else X.iloc[rows])

    def _bound_described(self) -> dict[str, object]:
        """`fit_rows` only when the bound applied: below it descriptions (and config hashes) are unchanged."""
        fit_rows = getattr(self, "fit_rows_", None)
        return {} if fit_rows is None else {"fit_rows": fit_rows}


class Stacking(BoundedFit, Combiner):
    """A regularised logistic-regression meta-model on the members' logits.

    With `passthrough=True` it also sees the original features (scaled numerics, one-hot
    categoricals), so it can learn where which member is trustworthy.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength of the logistic-regression meta-model.
    passthrough : bool, default=False
        Whether the meta-model also reads the original features `X`.
    schema : FeatureSchema or None, default=None
        The feature schema used to encode `X`; required when `passthrough` is True.
    random_state : int, default=0
        Seed of the meta-model and of its fitting sample.
    max_fit_rows : int or None, default=None
        Fit on a stratified sample of at most this many rows (None: all rows).

    Attributes
    ----------
    fit_rows_ : int or None
        Rows of the sample the meta-model was fitted on, or None when it saw all rows.
    logit_scaler_ : StandardScaler
        Standardises the member logits.
    features_ : ColumnTransformer
        Encodes the original features (only when `passthrough` is True).
    meta_model_ : LogisticRegression
        The fitted meta-model; its first `n_members_` coefficients act on the member logits.
    n_members_ : int
        Number of members (columns of P) seen in `fit`.
    classes_ : ndarray of shape (2,)
        The class labels, ``[0, 1]``.
    """

    def __init__(self, C: float = 1.0, passthrough: bool = False, schema: FeatureSchema | None = None,
                 random_state: int = 0, max_fit_rows: int | None = None):
        self.C = C
        self.passthrough = passthrough
        self.schema = schema
        self.random_state = random_state
        self.max_fit_rows = max_fit_rows

    @property
    def needs_features(self) -> bool:  # type: ignore[override]
        return self.passthrough

    def _design(self, P: np.ndarray, X: pd.DataFrame | None, fit: bool) -> np.ndarray:
        logits = logit(_clip(P))
        if fit:
            self.logit_scaler_ = StandardScaler().fit(logits)
        parts = [self.logit_scaler_.transform(logits)]
        if self.passthrough:
            if X is None or self.schema is None:
                raise ValueError("Stacking(passthrough=True) needs the original features X and a schema")
            if fit:
                self.features_ = one_hot_scaled(self.schema).fit(X)
            parts.append(encode_features(self.features_, X))
        return np.hstack(parts)

    def fit(self, P, y, X=None):
        P, y, X = self._fit_sample(np.asarray(P, dtype=float), np.asarray(y), X)
        self.meta_model_ = LogisticRegression(C=self.C, max_iter=2000, random_state=self.random_state)
        self.meta_model_.fit(self._design(P, X, fit=True), y)
        self.n_members_ = P.shape[1]
        self.classes_ = np.array([0, 1])
        return self

    def positive_proba(self, P, X=None):
        return self.meta_model_.predict_proba(self._design(P, X, fit=False))[:, 1]

    def describe(self):
        coefs = self.meta_model_.coef_[0]
        described: dict[str, object] = {
            "meta_model": "LogisticRegression",
            "C": self.C,
            "passthrough": self.passthrough,
            "intercept": round(float(self.meta_model_.intercept_[0]), 12),
            # The first n_members coefficients act on standardised member logits.
            "member_coefficients": [round(float(c), 12) for c in coefs[: self.n_members_]],
            **self._bound_described(),
        }
        if self.passthrough:
            names = list(self.features_.get_feature_names_out())
            described["feature_coefficients"] = {
                n: round(float(c), 12) for n, c in zip(names, coefs[self.n_members_:])
            }
        return described


class SingleMember(Combiner):
    """Model selection: the one member with the best out-of-fold log loss, passed through unchanged.

    The honest outcome when no combination beats the best member beyond fold noise: the served
    ensemble is then that member alone (the others are pruned, see `ensemble.pruning`).

    Parameters
    ----------
    costs : tuple of float or None
        Predict seconds per row per member column; with `max_cost`, only members within it compete
        (a spec's `selection.max_cost_ratio` budget). None: every member.
    max_cost : float or None
        The budget in seconds per row.
    """

    def __init__(self, costs: tuple[float, ...] | None = None, max_cost: float | None = None):
        self.costs = costs
        self.max_cost = max_cost

    def fit(self, P, y, X=None):
        P = np.asarray(P, dtype=float)
        losses = _member_log_losses(P, y)
        if self.costs is not None and self.max_cost is not None:  # a cost budget: only members within it
            affordable = np.asarray(self.costs, dtype=float) <= self.max_cost * (1 + 1e-9)
            if not affordable.any():
                raise ValueError(f"no member costs at most {self.max_cost:.3g} s/row; costs: {list(self.costs)}")
            losses = np.where(affordable, losses, np.inf)
        # np.argmin picks the lowest index on ties: deterministic.
        self.member_index_ = int(np.argmin(losses))
        self.n_members_ = P.shape[1]
        self.classes_ = np.array([0, 1])
        return self

    def positive_proba(self, P, X=None):
        return np.array(np.asarray(P, dtype=float)[:, self.member_index_], dtype=float)

    def describe(self):
        return {"member_index": self.member_index_}


def strategy_catalogue(schema: FeatureSchema, seed: int, costs: tuple[float, ...] | None = None,
                       tolerance: float = 0.002) -> dict[str, Combiner]:
    """Every strategy the platform considers, unfitted, in order of simplicity (ties favour the
    simpler one). Model selection (the best single member) is the simplest: a combination is
    chosen only when it beats it beyond fold noise (`selection.NOISE_SE_MULTIPLIER`).

    With the members' `costs` (seconds per row, per member column), the cost-aware strategies
    (`ensemble.cost_aware`: cascade, router) are candidates too, last; they are eligible only under
    a spec's `selection:` block (`selection.eligible_candidates`)."""
    fixed: dict[str, Combiner] = {
        SINGLE_MEMBER: SingleMember(),
        "majority_vote": MajorityVote(),
        "soft_average": SoftAverage(),
        "weighted_average": WeightedAverage(),
        "greedy_selection": GreedySelection(),
        "stacking": Stacking(random_state=seed, max_fit_rows=COMBINER_FIT_ROWS),
        "stacking_passthrough": Stacking(C=0.1, passthrough=True, schema=schema, random_state=seed,
                                         max_fit_rows=COMBINER_FIT_ROWS),
    }
    if costs is None:
        return fixed
    from ensemble_platform.ensemble.cost_aware import Cascade, Router  # cost_aware builds on this module

    return fixed | {
        CASCADE: Cascade(costs=tuple(costs), tolerance=tolerance),
        ROUTER: Router(schema=schema, costs=tuple(costs), tolerance=tolerance, random_state=seed,
                       max_fit_rows=COMBINER_FIT_ROWS),
    }
