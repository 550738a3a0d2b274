"""Known-answer tests for each combination strategy and for out-of-fold strategy selection."""

import numpy as np
import pytest
from sklearn.base import clone

from ensemble_platform.ensemble.selection import cross_validated_proba, select_strategy
from ensemble_platform.ensemble.strategies import (
    GreedySelection,
    MajorityVote,
    SoftAverage,
    Stacking,
    WeightedAverage,
)
from ensemble_platform.evaluation.agreement import probability_dispersion, vote_agreement


def _synthetic(n=400, seed=0):
    """Member 0 is informative, member 1 weakly so, member 2 is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.15, n), 0.01, 0.99)
    weak = np.clip(0.5 + (y - 0.5) * 0.2 + rng.normal(0, 0.2, n), 0.01, 0.99)
    noise = rng.uniform(0.01, 0.99, n)
    folds = np.arange(n) % 4
    return np.column_stack([good, weak, noise]), y, folds


def test_majority_vote_shares():
    P = np.array([[0.9, 0.2, 0.7], [0.1, 0.3, 0.8], [0.6, 0.6, 0.6]])
    y = np.array([1, 0, 1])
    vote = MajorityVote().fit(P, y)
    np.testing.assert_allclose(vote.positive_proba(P), [2 / 3, 1 / 3, 1.0])
    np.testing.assert_array_equal(vote.predict(P), [1, 0, 1])


def test_majority_vote_tie_goes_to_member_with_best_oof_log_loss():
    y = np.array([1, 0, 1, 0])
    # Member 2 is the best (most confident and right); members 0/1 are worse.
    P_fit = np.array([
        [0.6, 0.4, 0.95, 0.45],
        [0.4, 0.6, 0.05, 0.55],
        [0.6, 0.4, 0.95, 0.45],
        [0.4, 0.6, 0.05, 0.55],
    ])
    vote = MajorityVote().fit(P_fit, y)
    assert vote.tie_breaker_ == 2
    # Two votes for, two against: member 2 decides.
    tie_pos = np.array([[0.9, 0.1, 0.8, 0.2]])
    tie_neg = np.array([[0.9, 0.8, 0.2, 0.1]])
    assert vote.predict(tie_pos)[0] == 1
    assert vote.predict(tie_neg)[0] == 0
    assert vote.positive_proba(tie_pos)[0] == pytest.approx(0.5, abs=1e-5)


def test_soft_average_is_mean():
    P = np.array([[0.2, 0.4, 0.9]])
    assert SoftAverage().fit(P, np.array([1])).positive_proba(P)[0] == pytest.approx(0.5)


@pytest.mark.parametrize("combiner", [WeightedAverage(), GreedySelection()])
def test_learned_weights_on_simplex_and_favour_informative_member(combiner):
    P, y, _ = _synthetic()
    fitted = clone(combiner).fit(P, y)
    w = fitted.weights_
    assert (w >= 0).all()
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == w.max()
    assert w[2] < 0.1  # noise gets (almost) nothing
    np.testing.assert_allclose(fitted.positive_proba(P), P @ w)


def test_weighted_average_recovers_a_perfect_member():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    perfect = np.where(y == 1, 0.99, 0.01)
    P = np.column_stack([rng.uniform(size=300), perfect, rng.uniform(size=300)])
    w = WeightedAverage().fit(P, y).weights_
    assert w[1] == pytest.approx(1.0, abs=1e-3)


def test_greedy_selection_weights_are_pick_counts():
    P, y, _ = _synthetic()
    w = GreedySelection(n_rounds=10).fit(P, y).weights_
    np.testing.assert_allclose(w * 10, np.round(w * 10))


def test_stacking_deterministic_and_uses_given_rows_only():
    P, y, _ = _synthetic()
    a = Stacking(random_state=0).fit(P[:300], y[:300])
    b = Stacking(random_state=0).fit(P[:300], y[:300])
    np.testing.assert_array_equal(a.positive_proba(P), b.positive_proba(P))
    assert a.meta_model_.n_features_in_ == 3
    # Changing rows the meta-model was not given changes nothing.
    y_changed = y.copy()
    y_changed[300:] = 1 - y_changed[300:]
    c = Stacking(random_state=0).fit(P[:300], y_changed[:300])
    np.testing.assert_array_equal(a.positive_proba(P), c.positive_proba(P))
    assert a.describe()["member_coefficients"][0] > abs(a.describe()["member_coefficients"][2])


def test_cross_validated_predictions_ignore_labels_of_predicted_fold():
    P, y, folds = _synthetic()
    base = cross_validated_proba(Stacking(), P, y, folds, None)
    y_changed = y.copy()
    y_changed[folds == 2] = 1 - y_changed[folds == 2]
    changed = cross_validated_proba(Stacking(), P, y_changed, folds, None)
    np.testing.assert_array_equal(base[folds == 2], changed[folds == 2])
    assert not np.array_equal(base[folds != 2], changed[folds != 2])


def test_select_strategy_picks_best_out_of_fold_and_breaks_ties_towards_simpler():
    P, y, folds = _synthetic()
    strategies = {"soft_average": SoftAverage(), "weighted_average": WeightedAverage(), "stacking": Stacking()}
    chosen = select_strategy(strategies, P, y, folds)
    losses = {n: ev.cv_metrics["log_loss"] for n, ev in chosen.candidates.items()}
    assert chosen.chosen == min(losses, key=losses.get)
    assert chosen.chosen != "soft_average"  # noise member drags the plain mean down
    # Identical strategies: the first listed wins.
    tie = select_strategy({"a": SoftAverage(), "b": SoftAverage()}, P, y, folds)
    assert tie.chosen == "a"


def test_agreement_known_values():
    P = np.array([[0.9, 0.8, 0.2], [0.4, 0.45, 0.1], [0.5, 0.5, 0.5]])
    ensemble = np.array([0.7, 0.3, 0.5])
    np.testing.assert_allclose(vote_agreement(P, ensemble), [2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(probability_dispersion(P)[2], 0.0)
    assert probability_dispersion(P)[0] == pytest.approx(np.std(P[0]) / np.mean(P[0]))
