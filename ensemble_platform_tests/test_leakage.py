"""Leakage rules: no holdout row reaches any fit or choice; members share folds; out-of-fold
predictions come from models that did not see the row."""

import dataclasses

import numpy as np
import pytest

from ensemble_platform.ensemble.calibrators import select_calibrator
from ensemble_platform.ensemble.selection import select_strategy
from ensemble_platform.ensemble.strategies import strategy_catalogue
from ensemble_platform.members.training import fit_member

MEMBERS = ["logistic_regression", "hist_gradient_boosting"]


def _scrambled_holdout(split):
    """Same training rows; holdout features shuffled per column and labels flipped."""
    rng = np.random.default_rng(123)
    holdout = split.holdout.copy()
    for column in holdout.columns:
        holdout[column] = holdout[column].to_numpy()[rng.permutation(len(holdout))]
    return dataclasses.replace(split, holdout=holdout, y_holdout=1 - split.y_holdout)


def test_holdout_changes_nothing_before_validation(split):
    scrambled = _scrambled_holdout(split)
    for name in MEMBERS:
        a, b = fit_member(name, split, seed=0), fit_member(name, scrambled, seed=0)
        np.testing.assert_array_equal(a.oof_proba, b.oof_proba)
        assert a.fingerprint == b.fingerprint
        assert not np.array_equal(a.holdout_proba, b.holdout_proba)  # the holdout was really changed
    P = np.column_stack([fit_member(n, split, 0).oof_proba for n in MEMBERS])
    P_scrambled = np.column_stack([fit_member(n, scrambled, 0).oof_proba for n in MEMBERS])
    chosen_a = select_strategy(strategy_catalogue(split.schema, 0), P, split.y_train, split.fold_of_row, split.X_train())
    chosen_b = select_strategy(strategy_catalogue(scrambled.schema, 0), P_scrambled, scrambled.y_train,
                               scrambled.fold_of_row, scrambled.X_train())
    assert chosen_a.chosen == chosen_b.chosen
    assert chosen_a.chosen_evidence.combiner.describe() == chosen_b.chosen_evidence.combiner.describe()
    # The post-hoc calibrator is fitted on the chosen strategy's out-of-fold probabilities only.
    calibrated_a = select_calibrator(chosen_a.chosen_evidence.cv_proba, split.y_train, split.fold_of_row)
    calibrated_b = select_calibrator(chosen_b.chosen_evidence.cv_proba, scrambled.y_train, scrambled.fold_of_row)
    assert calibrated_a.describe() == calibrated_b.describe()
    assert calibrated_a.calibrator.n_fit_rows_ == len(split.y_train)


@pytest.mark.parametrize("name", MEMBERS)
def test_out_of_fold_prediction_ignores_own_fold_labels(split, name):
    """Flip the labels of fold 0: only a model that saw fold 0 could move fold-0 predictions."""
    y = split.y_train.copy()
    in_fold = split.fold_of_row == 0
    y[in_fold] = 1 - y[in_fold]
    flipped = dataclasses.replace(split, y_train=y)
    a, b = fit_member(name, split, seed=0), fit_member(name, flipped, seed=0)
    np.testing.assert_allclose(a.oof_proba[in_fold], b.oof_proba[in_fold], rtol=0, atol=1e-12)
    assert not np.allclose(a.oof_proba[~in_fold], b.oof_proba[~in_fold])


def test_members_share_the_split_folds(split):
    assert [len(f[1]) for f in split.folds()] == [int((split.fold_of_row == k).sum()) for k in range(split.n_folds)]
    fits = [fit_member(n, split, seed=0) for n in MEMBERS]
    assert len({f.fingerprint for f in fits}) == len(fits)
    # Fingerprints commit to the fold assignment: another fold layout is another member version.
    other = dataclasses.replace(split, fold_of_row=np.roll(split.fold_of_row, 1))
    assert fit_member(MEMBERS[0], other, 0).fingerprint != fits[0].fingerprint
