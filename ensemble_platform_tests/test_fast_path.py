"""The fast single-row path (issue 18) gives the plain path's bits: fitted preprocessing applied with
numpy, preprocessing shared by members, direct forest sums, the small model input; for every member
family, row by row and in blocks, with missing values and unseen categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ensemble_platform.data.schema import as_model_input
from ensemble_platform.ensemble.batching import MemberScoring, member_probabilities
from ensemble_platform.ensemble.runtime import missing_shares, small_model_input
from ensemble_platform.members.catalogue import MEMBER_NAMES, get_member_spec, predict_single_threaded
from ensemble_platform.members.fast_predict import FAST_PATH_ENV
from ensemble_platform.members.fast_preprocess import shared_parts


@pytest.fixture(scope="module")
def fitted_members(split) -> dict:
    """Every catalogue family, fitted once on the slice's training rows (predicting on one thread)."""
    X, y = split.X_train(), split.y_train
    return {name: predict_single_threaded(get_member_spec(name).build(split.schema, 0).fit(X, y))
            for name in MEMBER_NAMES}


@pytest.fixture(scope="module")
def hard_rows(split) -> pd.DataFrame:
    """The holdout plus rows with missing numerics, missing (None and NaN) and unseen categories."""
    holdout = split.holdout.reset_index(drop=True)
    extra = holdout.iloc[:6].copy()
    numeric, categorical = split.schema.numeric, split.schema.categorical
    extra.loc[0, numeric[:3]] = np.nan
    extra.loc[1, categorical[0]] = "never-seen-in-training"
    extra.loc[2, categorical] = None
    extra.loc[3, numeric] = np.nan
    extra.loc[4, categorical[-1]] = "another-new-level"
    extra.loc[5, [numeric[-1], categorical[1]]] = [np.nan, np.nan]
    table = pd.concat([holdout, extra], ignore_index=True)
    return as_model_input(table, split.schema)


def plain(monkeypatch, fn):
    with monkeypatch.context() as patch:
        patch.setenv(FAST_PATH_ENV, "off")
        return fn()


@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_fast_path_equals_the_pipeline_bit_for_bit(fitted_members, hard_rows, monkeypatch, name):
    model = fitted_members[name]
    scoring = MemberScoring({name: model})
    prep = scoring.preprocessing[name]
    assert prep.fast is not None, f"{name}'s fitted preprocessing is not compiled"
    X = hard_rows
    expected = plain(monkeypatch, lambda: member_probabilities(model, X))
    reference = model[:-1].transform(X)
    for start in range(0, len(X), 5):  # the preprocessing itself, row by row: same dtype, same bits
        Z = prep.fast.transform(X.iloc[start:start + 1])
        assert Z.dtype == reference.dtype and np.array_equal(Z, reference[start:start + 1], equal_nan=True)
    rows = np.concatenate([scoring.matrix(X.iloc[[i]])[:, 0] for i in range(len(X))])
    assert np.array_equal(rows, expected)
    for block in (7, 64):
        blocks = np.concatenate([scoring.matrix(X.iloc[i:i + block])[:, 0] for i in range(0, len(X), block)])
        assert np.array_equal(blocks, expected)
    assert np.array_equal(scoring.matrix(X)[:, 0], expected)  # above 64 rows: scikit-learn's transform, shared


def test_identical_fitted_preprocessing_is_shared(fitted_members, hard_rows, monkeypatch):
    scoring = MemberScoring(fitted_members)
    keys = {name: prep.key for name, prep in scoring.preprocessing.items()}
    assert keys["random_forest"] == keys["extra_trees"]  # same ordinal encoding, same imputer, same rows
    assert keys["hist_gradient_boosting"] == keys["xgboost"]
    assert keys["random_forest"] != keys["xgboost"] != keys["logistic_regression"]
    shared = shared_parts({name: prep.fast for name, prep in scoring.preprocessing.items()})
    users = sorted(map(sorted, shared.values()))
    # The categoricals' ordinal encoding is one fitted part for all four tree members.
    assert ["extra_trees", "hist_gradient_boosting", "random_forest", "xgboost"] in users
    X = hard_rows.iloc[:3]
    inputs = scoring.preprocess(X)
    assert set(inputs) == set(fitted_members)
    expected = plain(monkeypatch, lambda: scoring.matrix(X))
    assert plain(monkeypatch, lambda: scoring.preprocess(X)) == {}
    assert np.array_equal(scoring.matrix(X), expected)


def test_small_model_input_equals_as_model_input(split, hard_rows):
    table = pd.concat([split.holdout.iloc[:4], split.holdout.iloc[:2]]).copy()
    table.iloc[0, table.columns.get_loc(split.schema.categorical[0])] = None
    table.iloc[1, table.columns.get_loc(split.schema.categorical[1])] = np.nan
    table.iloc[2, table.columns.get_loc(split.schema.numeric[0])] = np.nan
    for rows in (table.iloc[:1], table.iloc[1:2], table):
        fast, slow = small_model_input(rows, split.schema), as_model_input(rows, split.schema)
        assert fast is not None
        assert fast.equals(slow) and list(fast.dtypes) == list(slow.dtypes) and fast.index.equals(slow.index)
    # What it does not reproduce goes to as_model_input (which converts or names the problem).
    as_text = table.astype({split.schema.numeric[0]: object})
    assert small_model_input(as_text, split.schema) is None
    huge = table.copy()
    huge[split.schema.numeric[0]] = 1e300
    assert small_model_input(huge, split.schema) is None


def test_small_input_row_checks_equal_pandas(hard_rows, monkeypatch):
    X = hard_rows.iloc[-8:]  # the rows with missing values and unseen categories
    expected = X.isna().mean(axis=1).to_numpy()
    assert np.array_equal(missing_shares(X), expected) and expected.max() > 0
    assert np.array_equal(plain(monkeypatch, lambda: missing_shares(X)), expected)


def test_boosting_on_one_openmp_thread_restores_the_thread_setting(fitted_members, hard_rows, monkeypatch):
    from threadpoolctl import ThreadpoolController

    from ensemble_platform.members.fast_predict import estimator_proba

    model = fitted_members["hist_gradient_boosting"]
    Z = model[:-1].transform(hard_rows)
    estimator = model.steps[-1][1]
    before = [lib["num_threads"] for lib in ThreadpoolController().info()]
    rows = np.vstack([estimator_proba(estimator, Z[i:i + 1]) for i in range(0, len(Z), 9)])
    assert np.array_equal(rows, estimator.predict_proba(Z)[::9])
    assert [lib["num_threads"] for lib in ThreadpoolController().info()] == before


def test_a_runtime_with_built_scoring_still_pickles(fitted_members, split, hard_rows):
    import pickle

    from ensemble_platform.ensemble.calibrators import ProbabilityCalibrator
    from ensemble_platform.ensemble.runtime import EnsembleRuntime
    from ensemble_platform.ensemble.strategies import SoftAverage

    members = {name: fitted_members[name] for name in ("logistic_regression", "random_forest")}
    X = hard_rows.iloc[:3]
    runtime = EnsembleRuntime("credit_slice", "1.0.0", split.schema, members, SoftAverage(), ProbabilityCalibrator(),
                              agreement_threshold=0.5)
    scored = runtime.member_matrix(X)  # builds the scoring (closures)
    copy = pickle.loads(pickle.dumps(runtime))
    assert copy._scoring is None and np.array_equal(copy.member_matrix(X), scored)


def test_combiner_feature_encoding_gives_the_same_bits_and_is_used(split, fitted_members, hard_rows, monkeypatch):
    """Stacking with passthrough and the router encode features on each 64-row block through the numpy
    form of their fitted encoder: the same probabilities and routes as scikit-learn's transform, with
    missing values and unseen categories, and the encoder itself is not changed (nothing new to store)."""
    from ensemble_platform.ensemble.batching import blocked
    from ensemble_platform.ensemble.cost_aware import Router
    from ensemble_platform.ensemble.strategies import Stacking
    from ensemble_platform.members import fast_preprocess

    X, y = split.X_train(), split.y_train
    P = np.column_stack([member_probabilities(fitted_members[n], X) for n in MEMBER_NAMES[:3]])
    Q = np.column_stack([member_probabilities(fitted_members[n], hard_rows) for n in MEMBER_NAMES[:3]])
    stacking = Stacking(C=0.1, passthrough=True, schema=split.schema).fit(P, y, X)
    router = Router(schema=split.schema, tolerance=0.1).fit(P, y, X)
    state = vars(stacking.features_).keys()

    def scored():
        proba = blocked(lambda rows: stacking.positive_proba(Q[rows], hard_rows.iloc[rows]), len(Q))
        routes = blocked(lambda rows: router.route(hard_rows.iloc[rows]), len(Q))
        return proba, routes

    fast = scored()
    assert fast_preprocess._COMPILED.get(stacking.features_) is not None  # the numpy form was used
    reference = plain(monkeypatch, scored)
    assert np.array_equal(fast[0], reference[0]) and np.array_equal(fast[1], reference[1])
    assert vars(stacking.features_).keys() == state
