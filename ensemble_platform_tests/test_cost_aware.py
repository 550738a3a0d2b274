"""Cost-aware strategies (cascade, router): known answers on constructed data, lazy == eager, the
lazy runtime calls exactly the members it says it called, no holdout reaches them, and the
accuracy-cost choice."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.ensemble.build import member_references
from ensemble_platform.ensemble.calibrators import ProbabilityCalibrator
from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.ensemble.cost_aware import FALLBACK, Cascade, Router, route_labels, routing_rates
from ensemble_platform.ensemble.runtime import EnsembleRuntime
from ensemble_platform.ensemble.selection import select_strategy
from ensemble_platform.ensemble.strategies import CASCADE, ROUTER, strategy_catalogue
from ensemble_platform.errors import PlatformError
from ensemble_platform.members.training import fit_member
from ensemble_platform.policy import SelectionPolicy


def _cascade_data(n: int = 400, seed: int = 0):
    """Member 0 (cheap) is confident and right on 'easy' rows, exactly 0.5 on the others; member 1
    (expensive) is right with 0.9 everywhere."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    easy = rng.random(n) < 0.7
    p0 = np.where(easy, np.where(y == 1, 0.95, 0.05), 0.5)
    p1 = np.where(y == 1, 0.9, 0.1)
    return np.column_stack([p0, p1]), y, easy


def test_cascade_exit_bands_known_answer():
    P, y, easy = _cascade_data()
    cascade = Cascade(costs=(1.0, 10.0), tolerance=0.0).fit(P, y)
    assert cascade.order_ == [0, 1]
    # The narrowest band on the grid exits every easy row (|0.95 - 0.5| = 0.45) and no hard one (0).
    assert cascade.exit_bands_ == [0.02]
    called = cascade.calls(P)
    np.testing.assert_array_equal(called[:, 0], True)
    np.testing.assert_array_equal(called[:, 1], ~easy)
    proba = cascade.positive_proba(P)
    np.testing.assert_array_equal(proba[easy], P[easy, 0])
    # Stage 2 is the fitted weighted average of members 0 and 1 (weights on the simplex).
    w = cascade.stage_weights_[1]
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    np.testing.assert_allclose(proba[~easy], w[0] * 0.5 + w[1] * P[~easy, 1])


def test_cascade_orders_stages_by_cost():
    P, y, _ = _cascade_data()
    cascade = Cascade(costs=(10.0, 1.0), tolerance=0.0).fit(P, y)
    assert cascade.order_ == [1, 0]
    # Member 1 first: at 0.9/0.1 it is already confident, so every row exits at stage 1 only if that
    # keeps the log loss within the full average's; here the average is better on easy rows.
    assert cascade.describe()["stage_order"] == [1, 0]


def test_cascade_never_exits_when_no_band_meets_the_target():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    wrong_cheap = np.where(y == 1, 0.2, 0.8)  # confidently wrong: exiting on it always costs log loss
    right = np.where(y == 1, 0.8, 0.2)
    cascade = Cascade(costs=(1.0, 2.0), tolerance=0.0).fit(np.column_stack([wrong_cheap, right]), y)
    assert cascade.exit_bands_ == [1.0]
    assert cascade.calls(np.column_stack([wrong_cheap, right])).all()


def _router_data(n: int = 600, seed: int = 0):
    """Member 0 is right where x < 0, member 1 where x > 0 (each is 0.5 elsewhere)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, n)
    y = rng.integers(0, 2, n)
    right = np.where(y == 1, 0.9, 0.1)
    P = np.column_stack([np.where(x < 0, right, 0.5), np.where(x > 0, right, 0.5)])
    X = pd.DataFrame({"x": x})
    return P, y, X, FeatureSchema(numeric=("x",), categorical=())


def test_router_known_answer_routes_by_feature():
    P, y, X, schema = _router_data()
    router = Router(schema=schema, costs=(1.0, 1.0), tolerance=0.0).fit(P, y, X)
    route = router.route(pd.DataFrame({"x": [-2.5, -1.0, 1.0, 2.5]}))
    np.testing.assert_array_equal(route, [0, 0, 1, 1])
    called = router.calls(P, X)
    assert called.sum(axis=1).mean() < 1.5  # mostly one member per row
    routed = router.route(X)
    one = routed != FALLBACK
    np.testing.assert_array_equal(router.positive_proba(P, X)[one], P[one, routed[one]])
    np.testing.assert_allclose(router.positive_proba(P, X)[~one], (P @ router.fallback_weights_)[~one])


def test_router_falls_back_to_the_full_ensemble_when_unsure():
    """Features that say nothing about which member is right: no confident route beats the average."""
    rng = np.random.default_rng(2)
    n = 600
    y = rng.integers(0, 2, n)
    swap = rng.random(n) < 0.5
    right, flat = np.where(y == 1, 0.9, 0.1), np.full(n, 0.5)
    P = np.column_stack([np.where(swap, right, flat), np.where(swap, flat, right)])
    X = pd.DataFrame({"x": rng.normal(size=n)})
    router = Router(schema=FeatureSchema(numeric=("x",), categorical=()), tolerance=0.0).fit(P, y, X)
    assert (router.route(X) == FALLBACK).mean() > 0.9
    fallback = router.route(X) == FALLBACK
    np.testing.assert_allclose(router.positive_proba(P, X)[fallback], (P @ router.fallback_weights_)[fallback],
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("which", ["cascade", "router"])
def test_lazy_calls_exactly_what_it_reports_and_equals_eager(which):
    P, y, X, schema = _router_data()
    combiner = (Cascade(costs=(1.0, 2.0)).fit(P, y) if which == "cascade"
                else Router(schema=schema).fit(P, y, X))
    seen: list[tuple[int, int]] = []

    def fetch(j, rows):
        seen.extend((int(r), j) for r in rows)
        return P[rows, j]

    result = combiner.lazy_proba(fetch, len(P), X)
    assert sorted(seen) == sorted(zip(*np.nonzero(result.called)))  # each called (row, member) once
    assert len(set(seen)) == len(seen)
    np.testing.assert_array_equal(result.proba, combiner.positive_proba(P, X))


class CountingMember:
    """A real fitted member that records which rows (by index label) it was asked to score."""

    def __init__(self, model):
        self.model, self.rows = model, set()
        self.classes_ = model.classes_

    def predict_proba(self, X):
        self.rows.update(X.index.tolist())
        return self.model.predict_proba(X)


@pytest.fixture(scope="module")
def two_fits(split):
    return [fit_member(name, split, seed=0) for name in ("logistic_regression", "hist_gradient_boosting")]


def _runtime(split, fits, combiner, members):
    return EnsembleRuntime(dataset=split.dataset, version="1.0.0", schema=split.schema,
                           members=members, combiner=combiner,
                           calibrator=ProbabilityCalibrator().fit(np.array([0.2, 0.8]), np.array([0, 1])),
                           agreement_threshold=0.6)


@pytest.mark.parametrize("which", ["cascade", "router"])
def test_lazy_runtime_calls_only_needed_members_and_matches_eager(split, two_fits, which):
    P = np.column_stack([f.oof_proba for f in two_fits])
    X_train = split.X_train()
    combiner = (Cascade(costs=(1.0, 2.0), tolerance=0.1).fit(P, split.y_train) if which == "cascade"
                else Router(schema=split.schema, tolerance=0.1).fit(P, split.y_train, X_train))
    counting = {f.name: CountingMember(f.pipeline) for f in two_fits}
    runtime = _runtime(split, two_fits, combiner, counting)
    holdout = split.holdout.reset_index(drop=True)
    scores = runtime.score(holdout)
    P_lazy, result = runtime.lazy_member_proba(runtime.model_input(holdout))
    for j, member in enumerate(counting.values()):
        assert member.rows == set(np.flatnonzero(result.called[:, j]))  # called exactly where it says
        np.testing.assert_array_equal(np.isnan(P_lazy[:, j]), ~result.called[:, j])
    assert result.called.sum() < P.shape[1] * len(holdout)  # something was skipped
    eager = _runtime(split, two_fits, combiner, {f.name: f.pipeline for f in two_fits})
    P_eager = eager.member_matrix(eager.model_input(holdout))
    _, proba_eager = eager.proba_from_members(P_eager, eager.model_input(holdout))
    np.testing.assert_array_equal(scores["probability"].to_numpy(), proba_eager)
    # Batch invariance: one row alone scores the same bits as within the batch.
    alone = runtime.score(holdout.iloc[[7]])
    assert alone["probability"].iloc[0] == scores["probability"].iloc[7]


@pytest.mark.parametrize("which", ["cascade", "router", "stacking"])
def test_runtime_of_member_references_scores_stored_probabilities_like_the_loaded_one(
        split, two_fits, which, tmp_path):
    # What `ensemble_config` stores and registers: the members as registry references. Validation
    # scores the holdout from the members' stored probabilities; a lazy combiner (cascade, router)
    # needs the member columns to exist there too (an empty member dict failed with an IndexError).
    P = np.column_stack([f.oof_proba for f in two_fits])
    X_train = split.X_train()
    combiner = (Cascade(costs=(1.0, 2.0), tolerance=0.1).fit(P, split.y_train) if which == "cascade"
                else Router(schema=split.schema, tolerance=0.1).fit(P, split.y_train, X_train) if which == "router"
                else strategy_catalogue(split.schema, 0)["stacking"].fit(P, split.y_train, X_train))
    loaded = _runtime(split, two_fits, combiner, {f.name: f.pipeline for f in two_fits})
    references = _runtime(split, two_fits, combiner, member_references(f.name for f in two_fits))
    holdout = split.holdout.reset_index(drop=True)
    stored = np.column_stack([f.holdout_proba for f in two_fits])
    expected = loaded.score(holdout)
    pd.testing.assert_frame_equal(references.score(holdout, member_proba=stored), expected)
    # Asked to call its members, it says what it is instead of failing somewhere inside.
    with pytest.raises(PlatformError, match=r"registry references.*member_proba"):
        references.score(holdout)
    with pytest.raises(PlatformError, match="no artefact file was given"):
        references.save(tmp_path / "runtime")


def test_cost_aware_strategies_never_see_the_holdout(split, two_fits):
    rng = np.random.default_rng(123)
    holdout = split.holdout.copy()
    for column in holdout.columns:
        holdout[column] = holdout[column].to_numpy()[rng.permutation(len(holdout))]
    scrambled = dataclasses.replace(split, holdout=holdout, y_holdout=1 - split.y_holdout)
    P = np.column_stack([f.oof_proba for f in two_fits])
    P_b = np.column_stack([fit_member(f.name, scrambled, 0).oof_proba for f in two_fits])
    np.testing.assert_array_equal(P, P_b)
    costs = np.array([1e-6, 5e-6])

    def choose(s):
        catalogue = {name: c for name, c in strategy_catalogue(s.schema, 0, costs=tuple(costs)).items()
                     if name in (CASCADE, ROUTER, "single_member")}
        return select_strategy(catalogue, P, s.y_train, s.fold_of_row, s.X_train(), costs=costs,
                               selection=SelectionPolicy(max_cost_ratio=5.0))

    a, b = choose(split), choose(scrambled)
    for name in (CASCADE, ROUTER):
        assert a.candidates[name].combiner.describe() == b.candidates[name].combiner.describe()
        np.testing.assert_array_equal(a.candidates[name].cv_proba, b.candidates[name].cv_proba)


def _selection_inputs(n: int = 500):
    P, y, _ = _cascade_data(n)
    fold_of_row = np.arange(n) % 5
    X = pd.DataFrame({"x": np.zeros(n)})
    schema = FeatureSchema(numeric=("x",), categorical=())
    return P, y, fold_of_row, X, schema


def test_without_selection_block_cost_aware_candidates_are_evaluated_not_eligible():
    P, y, folds, X, schema = _selection_inputs()
    costs = np.array([1.0, 10.0])
    result = select_strategy(strategy_catalogue(schema, 0, costs=(1.0, 10.0)), P, y, folds, X, costs=costs)
    plain = select_strategy(strategy_catalogue(schema, 0), P, y, folds, X)
    assert result.chosen == plain.chosen and result.chosen not in (CASCADE, ROUTER)
    frontier = result.frontier_table()
    assert not frontier[CASCADE]["eligible"] and frontier[result.chosen]["chosen"]
    # Known costs: the soft average calls both members on every row; the cascade only member 0 on easy rows.
    assert frontier["soft_average"]["cost_per_row"] == pytest.approx(11.0)
    assert frontier[CASCADE]["cost_per_row"] < 11.0
    assert 1.0 < frontier[CASCADE]["members_called_per_row"] < 2.0


def test_selection_budget_picks_the_best_within_it():
    P, y, folds, X, schema = _selection_inputs()
    costs = np.array([1.0, 10.0])
    result = select_strategy(strategy_catalogue(schema, 0, costs=(1.0, 10.0)), P, y, folds, X, costs=costs,
                             selection=SelectionPolicy(max_cost_ratio=5.0))
    frontier = result.frontier_table()
    assert all(row["cost_ratio"] <= 5.0 for row in frontier.values() if row["eligible"])
    assert result.chosen == CASCADE  # cheaper than any full combination, better than member 0 alone
    assert frontier[CASCADE]["chosen"]


def test_costs_are_evidence_not_content():
    config = EnsembleConfig(dataset="d", strategy="s", members=())
    measured = config.model_copy(update={"member_costs": {"a": 1e-5}, "expected_cost_per_row": 2e-5})
    assert measured.config_hash == config.config_hash
    assert config.model_copy(update={"selection": SelectionPolicy(max_cost_ratio=1.5)}).config_hash != config.config_hash


class FailingMember(CountingMember):
    def predict_proba(self, X):
        raise RuntimeError("member down")


def _router_runtime(split, fits, members):
    P = np.column_stack([f.oof_proba for f in fits])
    router = Router(schema=split.schema, tolerance=0.1).fit(P, split.y_train, split.X_train())
    return _runtime(split, fits, router, members)


def test_decider_serves_lazily_and_records_skipped_members(split, two_fits):
    from ensemble_platform.serving.decider import Decider

    counting = {f.name: CountingMember(f.pipeline) for f in two_fits}
    runtime = _router_runtime(split, two_fits, counting)
    holdout = split.holdout.reset_index(drop=True).iloc[:40]
    expected = runtime.score(holdout)
    for member in counting.values():
        member.rows.clear()
    decider = Decider(runtime, {}, min_members=1, member_timeout_s=30.0)
    try:
        rows = [{c: (None if pd.isna(v) else v) for c, v in r.items()} for r in holdout[runtime.schema.features]
                .astype(object).to_dict("records")]
        batch = decider.decide(rows)
    finally:
        decider.close()
    np.testing.assert_array_equal([r.probability for r in batch.rows], expected["probability"].to_numpy())
    np.testing.assert_array_equal([r.agreement for r in batch.rows], expected["agreement"].to_numpy())
    names = list(counting)
    for row in batch.rows:
        assert set(row.members) | set(row.skipped) == set(names) and not set(row.members) & set(row.skipped)
        assert not row.degraded
        for name in row.skipped:
            assert row.skipped[name].startswith("routed to ")
    assert any(row.skipped for row in batch.rows)
    called = {name: sum(name in row.members for row in batch.rows) for name in names}
    assert called == {name: len(m.rows) for name, m in counting.items()}  # the wrapper saw exactly those rows


def test_decider_lazy_member_failure_degrades_only_the_rows_that_need_it(split, two_fits):
    """A member the router calls fails: the rows that need it get the full ensemble over the working
    members, degraded; every other row is decided lazily as if nothing failed, and each row's decision
    is the one it gets alone (one row never sends its neighbours to the full ensemble)."""
    import dataclasses

    from ensemble_platform.serving.decider import Decider

    members = {f.name: CountingMember(f.pipeline) for f in two_fits}
    runtime = _router_runtime(split, two_fits, members)
    holdout = split.holdout.reset_index(drop=True).iloc[:40]
    route = runtime.combiner.route(runtime.model_input(holdout))
    routed = [name for j, name in enumerate(members) if (route == j).any()]
    assert routed, "the router routes at least one row to one member"
    broken = routed[0]
    broken_runtime = dataclasses.replace(
        runtime, members={**runtime.members, broken: FailingMember(two_fits[list(members).index(broken)].pipeline)})
    rows = [{c: (None if pd.isna(v) else v) for c, v in r.items()} for r in holdout[runtime.schema.features]
            .astype(object).to_dict("records")]
    healthy, decider = Decider(runtime, {}, min_members=1, member_timeout_s=30.0), Decider(broken_runtime, {}, min_members=1, member_timeout_s=30.0)
    try:
        expected = healthy.decide(rows).rows
        batch = decider.decide(rows)
        alone = [decider.decide([row]).rows[0] for row in rows]
    finally:
        healthy.close()
        decider.close()
    assert batch.rows == alone
    working = [name for name in members if name != broken]
    needing = [broken in row.members for row in expected]  # the rows the healthy router called it on
    assert any(needing) and not all(needing)
    for row, needs, healthy_row in zip(batch.rows, needing, expected, strict=True):
        if needs:
            assert row.degraded and broken in row.excluded and not row.skipped
            # The full ensemble over the working member: its probability (weights renormalised).
            assert row.combined == pytest.approx(row.members[working[0]].probability)
        else:
            assert row == healthy_row and not row.degraded


def test_a_lazy_decision_replays_to_the_same_bits(split, two_fits):
    """Replay (`service.replay`) re-decides one recorded row with its recorded exclusions, none for a
    healthy lazy decision: it is decided lazily again, not by the full ensemble."""
    from ensemble_platform.serving.decider import Decider

    runtime = _router_runtime(split, two_fits, {f.name: f.pipeline for f in two_fits})
    holdout = split.holdout.reset_index(drop=True).iloc[:12]
    rows = [{c: (None if pd.isna(v) else v) for c, v in r.items()} for r in holdout[runtime.schema.features]
            .astype(object).to_dict("records")]
    decider = Decider(runtime, {}, min_members=1, member_timeout_s=30.0)
    try:
        decided = decider.decide(rows).rows
        replayed = [decider.decide_validated(decider.validate([row]), [{}]).rows[0] for row in rows]
    finally:
        decider.close()
    assert any(row.skipped for row in decided)  # lazily decided: some members not called
    assert replayed == decided


def test_decider_lazy_refusal_names_every_short_row_of_the_request(split, two_fits):
    """With min_members=2 and one of two members down, every row the router would send to it is short:
    the refusal names the request's rows (not a position within some part of a split request)."""
    import dataclasses

    from ensemble_platform.serving.decider import Decider, RefusalError

    members = {f.name: CountingMember(f.pipeline) for f in two_fits}
    runtime = _router_runtime(split, two_fits, members)
    broken = list(members)[-1]
    broken_runtime = dataclasses.replace(
        runtime, members={**runtime.members, broken: FailingMember(two_fits[-1].pipeline)})
    holdout = split.holdout.reset_index(drop=True).iloc[:24]
    rows = [{c: (None if pd.isna(v) else v) for c, v in r.items()} for r in holdout[runtime.schema.features]
            .astype(object).to_dict("records")]
    decider = Decider(broken_runtime, {}, min_members=2, member_timeout_s=30.0)
    try:
        with pytest.raises(RefusalError) as refused:
            decider.decide(rows)
    finally:
        decider.close()
    assert refused.value.rows == list(range(len(rows)))  # the whole request: each row has one member left
    assert "(first: row 0)" in str(refused.value) and f"{len(rows)} of {len(rows)} row(s)" in str(refused.value)


@pytest.mark.parametrize("which", ["cascade", "router"])
def test_lazy_runtime_round_trips_through_the_safe_format(split, two_fits, which, tmp_path):
    P = np.column_stack([f.oof_proba for f in two_fits])
    combiner = (Cascade(costs=(1.0, 2.0), tolerance=0.1).fit(P, split.y_train) if which == "cascade"
                else Router(schema=split.schema, tolerance=0.1).fit(P, split.y_train, split.X_train()))
    runtime = _runtime(split, two_fits, combiner, {f.name: f.pipeline for f in two_fits})
    runtime.save(tmp_path / "runtime")
    loaded = EnsembleRuntime.load(tmp_path / "runtime")
    assert type(loaded.combiner) is type(combiner) and loaded.combiner.describe() == combiner.describe()
    holdout = split.holdout.reset_index(drop=True)
    pd.testing.assert_frame_equal(loaded.score(holdout), runtime.score(holdout))


def test_routing_rates_by_sensitive_group_known_answer():
    labels = ["a", "a", "full ensemble", "b", "b", "b"]
    rates = routing_rates(labels, {"sex": pd.Series(["f", "f", "f", "m", "m", "m"])})
    assert rates == {"sex": {"f": {"a": pytest.approx(2 / 3), "b": 0.0, "full ensemble": pytest.approx(1 / 3)},
                             "m": {"a": 0.0, "b": 1.0, "full ensemble": 0.0}}}


def test_route_labels_name_the_member_or_the_stage():
    P, y, X, schema = _router_data()
    router = Router(schema=schema, tolerance=0.0).fit(P, y, X)
    labels = route_labels(router, P, X, ["left", "right"])
    side = np.where(X["x"].to_numpy() < 0, "left", "right")
    routed = np.array(labels) != "full ensemble"
    assert (np.array(labels)[routed] == side[routed]).mean() > 0.95
    cascade = Cascade(costs=(1.0, 2.0)).fit(P, y)
    assert set(route_labels(cascade, P, None, ["left", "right"])) <= {"stage 1", "stage 2"}


def test_under_a_budget_model_selection_picks_the_best_affordable_member():
    P, y, folds, X, schema = _selection_inputs()
    costs = np.array([1.0, 10.0])  # member 1 has the lower log loss; only member 0 is within 1.0 x the cheapest
    result = select_strategy({"single_member": strategy_catalogue(schema, 0)["single_member"]}, P, y, folds, X,
                             costs=costs, selection=SelectionPolicy(max_cost_ratio=1.0))
    assert result.chosen == "single_member"
    assert result.chosen_evidence.combiner.member_index_ == 0  # member 1 is better but 10x the budget
    assert result.frontier_table()["single_member"]["cost_per_row"] == pytest.approx(1.0)


def test_fairness_report_shows_routing_rates_by_sensitive_group(split, two_fits, tmp_path, credit_slice):
    from types import SimpleNamespace

    from ensemble_platform.data.spec import load_spec
    from ensemble_platform.governance.reports import HoldoutView, build_fairness_report
    from ensemble_platform_tests.conftest import write_spec

    runtime = _router_runtime(split, two_fits, {f.name: f.pipeline for f in two_fits})
    P = np.column_stack([f.holdout_proba for f in two_fits])
    before, after = runtime.proba_from_members(P, split.X_holdout())
    config = EnsembleConfig(dataset=split.dataset, version="1.0.0", strategy=ROUTER, members=())
    view = HoldoutView(SimpleNamespace(runtime=runtime, config=config), split,  # type: ignore[arg-type]
                       tuple(runtime.members), P, before, after)
    spec = load_spec(write_spec(tmp_path, credit_slice))
    report = build_fairness_report(view, spec)
    routing = report.data["routing"]
    assert set(routing) == set(spec.sensitive)
    for groups in routing.values():
        for shares in groups.values():
            assert sum(shares.values()) == pytest.approx(1.0)
            assert set(shares) <= {*runtime.members, "full ensemble"}
    assert any(s.heading == f"Routing by {spec.sensitive[0]}" for s in report.document.sections)


def test_router_bounded_fit_learns_the_same_routes_from_a_sample():
    """Above `max_fit_rows` the router fits on a stratified sample (recorded as `fit_rows`) and still
    learns where each member is right; the full ensemble's weights use every row; at or below the
    bound nothing changes (no `fit_rows` in the description, so small tables keep their hashes)."""
    P, y, X, schema = _router_data(n=3000)
    bounded = Router(schema=schema, costs=(1.0, 1.0), tolerance=0.0, max_fit_rows=600).fit(P, y, X)
    assert bounded.fit_rows_ == 600 and bounded.describe()["fit_rows"] == 600
    np.testing.assert_array_equal(bounded.route(pd.DataFrame({"x": [-2.5, -1.0, 1.0, 2.5]})), [0, 0, 1, 1])
    everything = Router(schema=schema, costs=(1.0, 1.0), tolerance=0.0).fit(P, y, X)
    np.testing.assert_array_equal(bounded.fallback_weights_, everything.fallback_weights_)
    unbounded = Router(schema=schema, costs=(1.0, 1.0), tolerance=0.0, max_fit_rows=3000).fit(P, y, X)
    assert unbounded.fit_rows_ is None and unbounded.describe() == everything.describe()


def test_strategies_scored_at_once_give_the_same_bits_as_one_at_a_time(monkeypatch, split, two_fits):
    """`select_strategy` scores strategies in worker threads: every candidate's fitted combiner (its
    stored bytes), out-of-fold probabilities and cost must equal the one-at-a-time run's, bit for bit."""
    from ensemble_platform import safe_format
    from ensemble_platform.ensemble import selection

    P = np.column_stack([f.oof_proba for f in two_fits])
    costs = np.array([1.0, 10.0])

    def run(workers: int):
        monkeypatch.setattr(selection, "CANDIDATE_WORKERS", workers)
        return select_strategy(strategy_catalogue(split.schema, 0, costs=(1.0, 10.0)), P, split.y_train,
                               split.fold_of_row, split.X_train(), costs=costs)

    alone, together = run(1), run(2)
    assert list(together.candidates) == list(alone.candidates) and together.chosen == alone.chosen
    for name, evidence in alone.candidates.items():
        other = together.candidates[name]
        assert safe_format.dumps(other.combiner) == safe_format.dumps(evidence.combiner), name
        assert other.cv_proba.tobytes() == evidence.cv_proba.tobytes() and other.cost_per_row == evidence.cost_per_row
