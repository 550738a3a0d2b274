"""Known-answer tests for each combination strategy and for out-of-fold strategy selection."""

import numpy as np
import pytest
from scipy.special import expit
from sklearn.base import clone

from ensemble_platform.ensemble.pruning import prune_reason, restricted, used_columns
from ensemble_platform.ensemble.selection import (
    NOISE_SE_MULTIPLIER,
    choose_within_noise,
    cross_validated_proba,
    select_strategy,
)
from ensemble_platform.ensemble.strategies import (
    GreedySelection,
    MajorityVote,
    SingleMember,
    SoftAverage,
    Stacking,
    WeightedAverage,
    fit_sample,
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
    assert chosen.best == min(losses, key=losses.get)
    assert chosen.chosen != "soft_average"  # noise member drags the plain mean down beyond noise
    assert chosen.noise[chosen.chosen].within_noise and not chosen.noise["soft_average"].within_noise
    # Identical strategies: the first listed wins.
    tie = select_strategy({"a": SoftAverage(), "b": SoftAverage()}, P, y, folds)
    assert tie.chosen == "a"


def test_noise_rule_keeps_the_simpler_strategy_when_the_gain_is_within_one_standard_error():
    simple = np.array([0.50, 0.40, 0.45, 0.55, 0.48])
    # The complex one is 0.0004 better on average, with fold differences that scatter around it.
    complex_ = simple + np.array([-0.002, 0.001, -0.001, 0.0005, -0.0005])
    chosen, best, noise = choose_within_noise({"simple": simple, "complex": complex_})
    assert (chosen, best) == ("simple", "complex")
    assert noise["simple"].mean_difference == pytest.approx(0.0004)
    # sd of the differences (ddof=1) = sqrt(5.7e-6 / 4); SE = sd / sqrt(5)
    assert noise["simple"].standard_error == pytest.approx(np.sqrt(5.7e-6 / 4 / 5))
    assert noise["simple"].within_noise and NOISE_SE_MULTIPLIER == 1.0
    assert noise["complex"].mean_difference == 0.0


def test_noise_rule_takes_the_complex_strategy_when_it_is_better_in_every_fold():
    simple = np.array([0.50, 0.40, 0.45, 0.55, 0.48])
    complex_ = simple - np.array([0.004, 0.005, 0.0045, 0.0035, 0.005])
    chosen, best, noise = choose_within_noise({"simple": simple, "complex": complex_})
    assert (chosen, best) == ("complex", "complex")
    assert noise["simple"].mean_difference == pytest.approx(0.0044)
    assert noise["simple"].standard_error == pytest.approx(np.std([0.004, 0.005, 0.0045, 0.0035, 0.005], ddof=1)
                                                           / np.sqrt(5))
    assert not noise["simple"].within_noise


def test_noise_rule_chooses_the_simplest_within_noise_not_the_second_best():
    a = np.array([0.302, 0.316, 0.310, 0.286])  # simplest: 0.003 worse than d, SE 0.0037
    b = np.array([0.40, 0.42, 0.41, 0.39])  # clearly worse
    c = np.array([0.295, 0.325, 0.300, 0.290])  # second best
    d = np.array([0.290, 0.322, 0.306, 0.284])  # best on average
    chosen, best, noise = choose_within_noise({"a": a, "b": b, "c": c, "d": d})
    assert (chosen, best) == ("a", "d")
    assert noise["a"].mean_difference == pytest.approx(0.003)
    assert noise["a"].standard_error == pytest.approx(np.sqrt(164e-6 / 3 / 4))
    assert [n for n, comparison in noise.items() if comparison.within_noise] == ["a", "c", "d"]
    # A stricter multiplier (0) keeps only the best and exact ties.
    assert choose_within_noise({"a": a, "b": b, "c": c, "d": d}, multiplier=0.0)[0] == "d"


def _one_calibrated_member(seed, n=600):
    """Member 1 is the true probability (perfectly calibrated); member 0 a noisy copy, member 2 noise:
    no combination can beat member 1 except by fold noise."""
    rng = np.random.default_rng(seed)
    truth = expit(rng.normal(0, 1.5, n))
    y = (rng.uniform(size=n) < truth).astype(int)
    noisy = np.clip(truth + rng.normal(0, 0.25, n), 0.01, 0.99)
    return np.column_stack([noisy, truth, rng.uniform(0.01, 0.99, n)]), y, np.arange(n) % 5


@pytest.mark.parametrize("seed", [0, 5])
def test_model_selection_when_no_combination_helps(seed):
    P, y, folds = _one_calibrated_member(seed)
    strategies = {"single_member": SingleMember(), "soft_average": SoftAverage(), "weighted_average": WeightedAverage(),
                  "greedy_selection": GreedySelection(), "stacking": Stacking()}
    candidates = select_strategy(strategies, P, y, folds)
    assert candidates.chosen == "single_member" and candidates.model_selection
    assert candidates.chosen_evidence.combiner.member_index_ == 1
    np.testing.assert_array_equal(candidates.chosen_evidence.combiner.positive_proba(P), P[:, 1])
    if seed == 5:  # stacking is best out of fold here, by less than one standard error
        assert candidates.best == "stacking"
        comparison = candidates.noise["single_member"]
        assert 0 < comparison.mean_difference <= comparison.standard_error


def test_pruning_drops_zero_weight_members_and_keeps_the_probabilities():
    P, y, _ = _synthetic()
    weighted = WeightedAverage().fit(P, y)
    weighted.weights_ = np.array([0.75, 0.0, 0.25])
    assert used_columns(weighted) == [0, 2] and prune_reason(weighted, "weighted_average") == "weight 0 in weighted_average"
    pruned = restricted(weighted, [0, 2])
    assert pruned.n_members_ == 2 and weighted.n_members_ == 3  # the original is untouched
    np.testing.assert_allclose(pruned.positive_proba(P[:, [0, 2]]), weighted.positive_proba(P), rtol=0, atol=1e-15)
    single = SingleMember().fit(P, y)
    assert used_columns(single) == [0]
    np.testing.assert_array_equal(restricted(single, [0]).positive_proba(P[:, [0]]), P[:, 0])
    greedy = GreedySelection(n_rounds=3).fit(P, y)
    assert used_columns(greedy) == [j for j in range(3) if greedy.weights_[j] > 0]
    # Combiners that use every member are not restricted.
    assert used_columns(Stacking().fit(P, y)) == [0, 1, 2]
    assert restricted(MajorityVote().fit(P, y), [0, 1, 2]).n_members_ == 3
    with pytest.raises(ValueError, match="uses every member"):
        restricted(SoftAverage().fit(P, y), [0, 1])


def test_weighted_average_sets_round_off_weights_to_zero():
    P, y, _ = _one_calibrated_member(0)
    weights = WeightedAverage().fit(P, y).weights_
    assert np.all((weights == 0) | (weights > 1e-9)) and weights.sum() == pytest.approx(1.0)


def test_agreement_known_values():
    P = np.array([[0.9, 0.8, 0.2], [0.4, 0.45, 0.1], [0.5, 0.5, 0.5]])
    ensemble = np.array([0.7, 0.3, 0.5])
    np.testing.assert_allclose(vote_agreement(P, ensemble), [2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(probability_dispersion(P)[2], 0.0)
    assert probability_dispersion(P)[0] == pytest.approx(np.std(P[0]) / np.mean(P[0]))


def test_fit_sample_is_stratified_seeded_and_absent_below_the_bound():
    y = np.array([1] * 300 + [0] * 700)
    rows = fit_sample(y, 100, seed=0)
    assert len(rows) == 100 and y[rows].sum() == 30 and (np.diff(rows) > 0).all()  # class shares kept, sorted
    np.testing.assert_array_equal(rows, fit_sample(y, 100, seed=0))
    assert not np.array_equal(rows, fit_sample(y, 100, seed=1))
    assert fit_sample(y, 1000, seed=0) is None and fit_sample(y, None, seed=0) is None


def test_bounded_stacking_fits_on_the_sample_only():
    """Above `max_fit_rows` the meta-model is exactly the one fitted on the sample's rows; at or below it
    the description is the unbounded one (no `fit_rows`: the default data's config hash is unchanged)."""
    P, y, _ = _synthetic(n=2000)
    bounded = Stacking(max_fit_rows=500, random_state=3).fit(P, y)
    rows = fit_sample(y, 500, 3)
    on_sample = Stacking(random_state=3).fit(P[rows], y[rows])
    np.testing.assert_array_equal(bounded.positive_proba(P), on_sample.positive_proba(P))
    assert bounded.describe() == on_sample.describe() | {"fit_rows": 500}
    assert Stacking(max_fit_rows=2000).fit(P, y).describe() == Stacking().fit(P, y).describe()
