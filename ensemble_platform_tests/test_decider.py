"""The decider on a real production bundle: bit-for-bit equality with the runtime when healthy, batch
invariance, every member fault (raise, deadline, NaN, out of range) and how each combiner copes with a
missing member, refusal below min_members, input validation naming row and column, review routing."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble_platform.ensemble.strategies import (
    GreedySelection,
    MajorityVote,
    SoftAverage,
    Stacking,
    WeightedAverage,
)
from ensemble_platform.service.runner import load_verified_bundle
from ensemble_platform.serving.decider import (
    COMBINER_CANNOT_SKIP,
    COMBINER_FAILED,
    ISOLATION_BUDGET,
    WEIGHT_ON_EXCLUDED,
    Decider,
    DecisionInputError,
    RefusalError,
    majority_vote,
)
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform_tests.conftest import home_in_production

DATASET = "credit_slice"
VERSION = "1.0.0"


@pytest.fixture(scope="module")
def served(tmp_path_factory, credit_slice):
    """(runtime, manifest) of the production bundle and the version's parity set."""
    root = tmp_path_factory.mktemp("decider")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(root / "config"))
        _, _, release, result = home_in_production(root, credit_slice)
        bundle = Path(result.bundle.path)
        manifest, runtime, _ = load_verified_bundle(bundle, result.bundle.manifest_sha256)
        yield runtime, manifest, ParitySet.read(release.paths.parity_dir(DATASET, VERSION))


@pytest.fixture(scope="module")
def production(served):
    runtime, manifest, parity = served
    return runtime, manifest, parity.rows


@pytest.fixture(scope="module")
def rows(production) -> pd.DataFrame:
    """256 rows: the holdout rows repeated (a multiple of 8: full BLAS tiles for `runtime.score`)."""
    _, _, holdout = production
    return pd.concat([holdout] * 2, ignore_index=True).iloc[:256].reset_index(drop=True)


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as a JSON client sends them (NaN -> null)."""
    return json.loads(frame.to_json(orient="records"))


def decider_for(runtime, manifest, **kwargs) -> Decider:
    kwargs.setdefault("member_timeout_s", 10.0)
    kwargs.setdefault("min_members", 2)
    return Decider(runtime, manifest, **kwargs)


# --- fault members (Pipeline-compatible: classes_ and predict_proba) ------------------------------

class Raising:
    classes_ = np.array([0, 1])

    def predict_proba(self, X):
        raise RuntimeError("member backend unavailable")


class Sleeping:
    classes_ = np.array([0, 1])

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds

    def predict_proba(self, X):
        time.sleep(self.seconds)
        return self.inner.predict_proba(X)


class NaNOnSome:
    """NaN for rows whose Amount is above `limit`, the inner member's output elsewhere."""

    classes_ = np.array([0, 1])

    def __init__(self, inner, limit: float, value: float = np.nan):
        self.inner, self.limit, self.value = inner, limit, value

    def predict_proba(self, X):
        out = np.array(self.inner.predict_proba(X), dtype=float)
        bad = (X["Amount"] > self.limit).to_numpy()
        out[bad, 1] = self.value
        return out


class RaisingOnSome:
    """Raises when any row's Amount is above `limit` (a member whose backend chokes on some input)."""

    classes_ = np.array([0, 1])

    def __init__(self, inner, limit: float, seconds_per_call: float = 0.0):
        self.inner, self.limit, self.calls, self.seconds_per_call = inner, limit, 0, seconds_per_call

    def predict_proba(self, X):
        self.calls += 1
        time.sleep(self.seconds_per_call)
        if (X["Amount"] > self.limit).any():
            raise RuntimeError("member backend rejected a row")
        return self.inner.predict_proba(X)


def with_member(runtime, name: str, member):
    return dataclasses.replace(runtime, members={**runtime.members, name: member})


def fitted(combiner, runtime, frame: pd.DataFrame):
    X = runtime.model_input(frame)
    P = runtime.member_matrix(X)
    y = (P.mean(axis=1) > np.median(P.mean(axis=1))).astype(int)
    return combiner.fit(P, y, X)


# --- healthy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 37, 64, 255, 256])
def test_healthy_output_equals_runtime_score_bit_for_bit(production, rows, n):
    runtime, manifest, _ = production
    decider = decider_for(runtime, manifest, max_missing_share=1.0)
    batch = decider.decide(records(rows.iloc[:n]))
    expected = runtime.score(rows.iloc[:n])
    got = pd.DataFrame({"probability": [r.probability for r in batch.rows],
                        "decision": [r.decision for r in batch.rows],
                        "agreement": [r.agreement for r in batch.rows],
                        "needs_review": [r.needs_review for r in batch.rows]})
    for column in got.columns:
        np.testing.assert_array_equal(got[column].to_numpy(), expected[column].to_numpy(), column)
    assert not any(r.degraded or r.fallback for r in batch.rows)
    members = runtime.member_matrix(runtime.model_input(rows.iloc[:n]))
    for j, name in enumerate(runtime.members):
        np.testing.assert_array_equal([r.members[name].probability for r in batch.rows], members[:, j], name)
    assert batch.rows[0].members["xgboost"].version == "1"
    assert batch.rows[0].members["xgboost"].registered_model == f"{DATASET}.xgboost"


def test_a_row_gets_the_same_bits_alone_or_in_any_batch(production, rows):
    runtime, manifest, _ = production
    decider = decider_for(runtime, manifest)
    everything = records(rows)
    in_batch = decider.decide(everything).rows
    for size in (1, 3, 7, 17):
        for start in range(0, 40, size):
            chunk = decider.decide(everything[start:start + size]).rows
            for offset, row in enumerate(chunk):
                assert row == in_batch[start + offset], (size, start + offset)


def test_the_holdout_scored_as_one_batch_or_row_by_row_gives_the_validated_scores(served):
    runtime, manifest, parity = served
    assert not parity.mismatches(runtime.score)  # the whole holdout as one batch
    one_by_one = pd.concat([runtime.score(parity.rows.iloc[[i]]) for i in range(len(parity.rows))])
    for column in parity.scores.columns:
        np.testing.assert_array_equal(one_by_one[column].to_numpy(), parity.scores[column].to_numpy(), column)
    decider = decider_for(runtime, manifest)
    decided = [decider.decide(records(parity.rows.iloc[[i]])).rows[0] for i in range(len(parity.rows))]
    decider.close()
    np.testing.assert_array_equal([r.probability for r in decided], parity.scores["probability"].to_numpy())


def test_empty_batch_is_an_empty_result(production):
    runtime, manifest, _ = production
    batch = decider_for(runtime, manifest).decide([])
    assert batch.rows == [] and batch.features == []


# --- member faults ------------------------------------------------------------------------------

def test_a_raising_member_is_excluded_with_its_reason(production, rows):
    runtime, manifest, _ = production
    decider = decider_for(with_member(runtime, "xgboost", Raising()), manifest)
    batch = decider.decide(records(rows.iloc[:8]))
    for row in batch.rows:
        assert row.degraded and "degraded" in row.review_reasons and row.needs_review
        assert row.members["xgboost"].probability is None
        assert row.members["xgboost"].reason == "exception"
        assert "member backend unavailable" in row.excluded["xgboost"]
        assert row.members["xgboost"].version == "1"  # still names the registered version


def test_a_member_raising_on_one_row_is_excluded_for_that_row_only(production, rows):
    """A member that raises because of one row is asked again in halves: it is excluded for the rows it
    raises on and no other, so every row's decision is the one it gets alone."""
    runtime, manifest, _ = production
    batch_rows = rows.iloc[:16].reset_index(drop=True)
    limit = float(batch_rows["Amount"].quantile(0.9))
    poisoned = (batch_rows["Amount"] > limit).to_numpy()
    assert 0 < poisoned.sum() < len(batch_rows)
    member = RaisingOnSome(runtime.members["xgboost"], limit, seconds_per_call=0.02)
    decider = decider_for(with_member(runtime, "xgboost", member), manifest)
    try:
        decided = decider.decide(records(batch_rows))
        batch, calls = decided.rows, member.calls
        # Its time to this request counts every call, the retries too (it counted the first call only).
        assert decided.member_seconds["xgboost"] >= 0.02 * calls
        alone = [decider.decide(records(batch_rows.iloc[[i]])).rows[0] for i in range(len(batch_rows))]
    finally:
        decider.close()
    assert batch == alone
    for row, bad in zip(batch, poisoned, strict=True):
        assert row.degraded == bad and ("xgboost" in row.excluded) == bad
        assert (row.members["xgboost"].reason == "exception") if bad else row.members["xgboost"].probability is not None
    assert calls <= 1 + 2 * int(poisoned.sum()) * int(np.ceil(np.log2(len(batch_rows))))  # halves, not every row
    # A member down (it raises on every row) costs at most the request's isolation budget of calls.
    down = RaisingOnSome(runtime.members["xgboost"], -np.inf)
    decider = decider_for(with_member(runtime, "xgboost", down), manifest)
    try:
        decided = decider.decide(records(rows)).rows
    finally:
        decider.close()
    assert down.calls <= 1 + ISOLATION_BUDGET
    assert all(row.members["xgboost"].reason == "exception" and row.degraded for row in decided)


def test_a_member_past_its_deadline_is_excluded_and_does_not_hold_the_answer(production, rows):
    runtime, manifest, _ = production
    slow = Sleeping(runtime.members["random_forest"], 3.0)
    decider = decider_for(with_member(runtime, "random_forest", slow), manifest, member_timeout_s=0.5)
    started = time.perf_counter()
    batch = decider.decide(records(rows.iloc[:4]))
    assert time.perf_counter() - started < 2.5
    assert all(r.members["random_forest"].reason == "timeout" for r in batch.rows)
    assert all("within 0.5s" in r.excluded["random_forest"] for r in batch.rows)
    decider.close()


@pytest.mark.parametrize("value, reason", [(np.nan, "non_finite"), (np.inf, "non_finite"), (1.5, "out_of_range"),
                                           (-0.1, "out_of_range")])
def test_bad_values_exclude_the_member_only_for_the_affected_rows(production, rows, value, reason):
    runtime, manifest, _ = production
    limit = float(rows["Amount"].median())
    faulty = NaNOnSome(runtime.members["logistic_regression"], limit, value)
    batch = decider_for(with_member(runtime, "logistic_regression", faulty), manifest).decide(records(rows.iloc[:64]))
    healthy = decider_for(runtime, manifest).decide(records(rows.iloc[:64]))
    for row, good, amount in zip(batch.rows, healthy.rows, rows["Amount"].iloc[:64]):
        if amount > limit:
            assert row.members["logistic_regression"].reason == reason and row.degraded
            assert row.members["logistic_regression"].probability is None
        else:
            assert not row.degraded and row == good


# --- combining without a member -----------------------------------------------------------------

def test_averages_renormalise_over_the_remaining_members(production, rows):
    runtime, manifest, _ = production
    names = list(runtime.members)
    failed = names.index("xgboost")
    frame = rows.iloc[:16]
    P = runtime.member_matrix(runtime.model_input(frame))
    keep = [j for j in range(len(names)) if j != failed]
    for combiner in (SoftAverage(), WeightedAverage(), GreedySelection(n_rounds=20)):
        fitted(combiner, runtime, rows)
        weights = np.full(len(names), 1 / len(names)) if isinstance(combiner, SoftAverage) else combiner.weights_
        if weights[keep].sum() == 0:
            continue
        degraded = dataclasses.replace(with_member(runtime, "xgboost", Raising()), combiner=combiner)
        batch = decider_for(degraded, manifest).decide(records(frame))
        expected = (P[:, keep] * (weights[keep] / weights[keep].sum())).sum(axis=1)
        np.testing.assert_allclose([r.combined for r in batch.rows], expected, rtol=0, atol=1e-12)
        assert not any(r.fallback for r in batch.rows), type(combiner).__name__
        calibrated = runtime.calibrator.transform(np.array([r.combined for r in batch.rows]))
        np.testing.assert_array_equal([r.probability for r in batch.rows], calibrated)


def test_all_weight_on_the_failed_member_falls_back_to_a_vote(production, rows):
    runtime, manifest, _ = production
    names = list(runtime.members)
    combiner = fitted(WeightedAverage(), runtime, rows)
    combiner.weights_ = np.eye(len(names))[names.index("xgboost")]
    degraded = dataclasses.replace(with_member(runtime, "xgboost", Raising()), combiner=combiner)
    batch = decider_for(degraded, manifest).decide(records(rows.iloc[:8]))
    assert all(r.fallback and r.fallback_reason == WEIGHT_ON_EXCLUDED for r in batch.rows)


@pytest.mark.parametrize("combiner", [MajorityVote(), Stacking(), Stacking(C=0.1, passthrough=True)],
                         ids=["majority_vote", "stacking", "stacking_passthrough"])
def test_vote_and_stacking_fall_back_to_a_majority_vote_of_the_rest(production, rows, combiner):
    runtime, manifest, _ = production
    if getattr(combiner, "passthrough", False):
        combiner.schema = runtime.schema
    fitted(combiner, runtime, rows)
    frame = rows.iloc[:16]
    healthy = decider_for(dataclasses.replace(runtime, combiner=combiner), manifest).decide(records(frame))
    np.testing.assert_array_equal([r.combined for r in healthy.rows],
                                  dataclasses.replace(runtime, combiner=combiner).combined_proba(
                                      runtime.member_matrix(runtime.model_input(frame)), runtime.model_input(frame)))
    degraded = dataclasses.replace(with_member(runtime, "k_nearest_neighbours", Raising()), combiner=combiner)
    batch = decider_for(degraded, manifest).decide(records(frame))
    P = runtime.member_matrix(runtime.model_input(frame))[:, :-1]
    threshold = combiner.threshold if isinstance(combiner, MajorityVote) else runtime.decision_threshold
    tie = getattr(combiner, "tie_breaker_", None)
    expected = majority_vote(P, threshold, tie if tie is not None and tie < P.shape[1] else None)
    np.testing.assert_array_equal([r.combined for r in batch.rows], expected)
    assert all(r.fallback and r.fallback_reason == COMBINER_CANNOT_SKIP and r.degraded for r in batch.rows)


def test_a_failing_stacker_falls_back_to_a_vote_flagged(production, rows):
    runtime, manifest, _ = production
    combiner = fitted(Stacking(), runtime, rows)
    combiner.meta_model_ = None  # the stacker raises on every call
    batch = decider_for(dataclasses.replace(runtime, combiner=combiner), manifest).decide(records(rows.iloc[:8]))
    P = runtime.member_matrix(runtime.model_input(rows.iloc[:8]))
    np.testing.assert_array_equal([r.combined for r in batch.rows], majority_vote(P, runtime.decision_threshold, None))
    assert all(r.fallback and r.fallback_reason.startswith(COMBINER_FAILED) and not r.degraded for r in batch.rows)


# --- refusal ------------------------------------------------------------------------------------

def test_fewer_working_members_than_min_members_is_refused(production, rows):
    runtime, manifest, _ = production
    broken = runtime
    for name in list(runtime.members)[:5]:
        broken = with_member(broken, name, Raising())
    with pytest.raises(RefusalError, match=r"1 working member\(s\), fewer than min_members=2") as refused:
        decider_for(broken, manifest).decide(records(rows.iloc[:3]))
    assert refused.value.rows == [0, 1, 2]
    assert refused.value.members["xgboost"].reason == "exception"
    # One member failing is fine at min_members 5, refused at 6.
    one_down = with_member(runtime, "xgboost", Raising())
    assert decider_for(one_down, manifest, min_members=5).decide(records(rows.iloc[:2])).rows[0].degraded
    with pytest.raises(RefusalError, match="min_members=6"):
        decider_for(one_down, manifest, min_members=6).decide(records(rows.iloc[:2]))


# --- input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("Income"), r"row 1: missing column 'Income'"),
    (lambda r: r.update(Amount="lots"), r"row 1, column 'Amount': unparseable number 'lots'"),
    (lambda r: r.update(Amount=float("inf")), r"row 1, column 'Amount': inf is not a finite number"),
    (lambda r: r.update(Price="1e309"), r"row 1, column 'Price': '1e309' is not a finite number"),
    (lambda r: r.update(Price=1e300), r"row 1, column 'Price': 1e\+300 is not a finite number within"),
    (lambda r: r.update(Debt=True), r"row 1, column 'Debt': expected a number, got bool"),
    (lambda r: r.update(Home=["owner"]), r"row 1, column 'Home': expected text, got list"),
    (lambda r: r.update(Home="owner\ud800"), r"row 1, column 'Home': .* is not valid Unicode text"),
    # Python's float() takes these; the training table's parser does not, so neither does the service.
    (lambda r: r.update(Amount="1_000"), r"row 1, column 'Amount': unparseable number '1_000'"),
    (lambda r: r.update(Amount="\u0661\u0662"), r"row 1, column 'Amount': unparseable number"),
    (lambda r: r.update(Amount=" Infinity"), r"row 1, column 'Amount': unparseable number"),
    # Past float32's range: the tree members would overflow to infinity (was a 422 naming no row).
    (lambda r: r.update(Price=1e39), r"row 1, column 'Price': 1e\+39 is not a finite number within \+-3.40282e\+38"),
], ids=["missing", "unparseable", "inf", "overflow", "huge", "bool", "list", "lone surrogate", "underscores",
        "non-ASCII digits", "infinity text", "past float32"])
def test_bad_input_names_the_row_and_column(production, rows, change, message):
    runtime, manifest, _ = production
    batch = records(rows.iloc[:3])
    change(batch[1])
    with pytest.raises(DecisionInputError, match=message) as error:
        decider_for(runtime, manifest).decide(batch)
    assert error.value.row == 1


def test_review_routing_reasons(production, rows):
    runtime, manifest, _ = production
    batch = records(rows.iloc[:4])
    batch[1]["Home"] = "houseboat"
    for column in ("Income", "Assets", "Debt", "Amount", "Price", "Expenses", "Seniority"):
        batch[2][column] = None
    decided = decider_for(runtime, manifest, max_missing_share=0.5).decide(batch).rows
    assert "unseen_category" in decided[1].review_reasons and decided[1].needs_review
    assert "missing_features" in decided[2].review_reasons and decided[2].missing_share > 0.5
    for row in decided:
        assert ("low_agreement" in row.review_reasons) == (row.agreement < runtime.agreement_threshold)
