"""Pruned members: the served runtime holds (and calls) only the members the chosen combiner uses; the
config lists the others as evaluated but pruned; model selection serves one member."""

import dataclasses

import numpy as np
import pytest

from ensemble_platform.ensemble.build import build_ensemble
from ensemble_platform.ensemble.predictions import collect_member_predictions, matrix
from ensemble_platform.ensemble.selection import select_strategy
from ensemble_platform.ensemble.strategies import SingleMember, WeightedAverage
from ensemble_platform.members.training import fit_member
from ensemble_platform.serving.decider import Decider, RefusalError

MEMBERS = ["logistic_regression", "xgboost", "k_nearest_neighbours"]


class Exploding:
    """A member that must never be loaded into or called by a served runtime."""

    classes_ = np.array([0, 1])

    def predict_proba(self, X):
        raise AssertionError("a pruned member was called")


@pytest.fixture(scope="module")
def members(split):
    fits = {}
    for i, name in enumerate(MEMBERS):
        fit = fit_member(name, split, seed=0)
        fits[name] = dataclasses.replace(fit, registered_model=f"{split.dataset}.{name}", version=str(i + 1),
                                         run_id=f"run{i}")
    return fits, collect_member_predictions(fits, split, MEMBERS)


def _build(split, members, strategy, combiner, adjust=None, exploding=()):
    fits, predictions = members
    candidates = select_strategy({strategy: combiner}, matrix(predictions.oof, MEMBERS), split.y_train,
                                 split.fold_of_row)
    if adjust is not None:
        adjust(candidates.chosen_evidence.combiner)
    fits = {**fits, **{name: dataclasses.replace(fits[name], pipeline=Exploding()) for name in exploding}}
    return build_ensemble(candidates, predictions, fits, split, previous=None), predictions


def test_zero_weight_member_is_pruned_from_the_served_ensemble(split, members):
    def zero_xgboost(combiner):
        combiner.weights_ = np.array([0.6, 0.0, 0.4])

    build, predictions = _build(split, members, "weighted_average", WeightedAverage(), zero_xgboost,
                                exploding=["xgboost"])
    config, runtime = build.config, build.runtime
    assert [m.name for m in config.members] == ["logistic_regression", "k_nearest_neighbours"]
    assert [(m.name, m.version, m.reason) for m in config.pruned] == [("xgboost", "2", "weight 0 in weighted_average")]
    assert list(runtime.members) == ["logistic_regression", "k_nearest_neighbours"]
    assert config.combiner == {"weights": [0.6, 0.4]} and not config.model_selection
    scored = runtime.score(split.holdout)  # the exploding pruned member is never called
    H = matrix(predictions.holdout, ["logistic_regression", "k_nearest_neighbours"])
    expected = build.calibration.calibrator.transform(H @ np.array([0.6, 0.4]))
    np.testing.assert_allclose(scored["probability"], expected, rtol=0, atol=1e-12)
    # Agreement counts the two served members only: every value is 0, 1/2 or 1.
    assert set(np.round(scored["agreement"], 6)) <= {0.0, 0.5, 1.0}
    assert "pruned" in config.content() and config.pruned_versions() == {"xgboost": "2"}


def test_model_selection_serves_one_member_and_refuses_when_it_fails(split, members):
    best = min(MEMBERS, key=lambda n: members[0][n].oof_metrics["log_loss"])
    build, predictions = _build(split, members, "single_member", SingleMember(),
                                exploding=[n for n in MEMBERS if n != best])
    config, runtime = build.config, build.runtime
    assert config.model_selection and [m.name for m in config.members] == [best] and list(runtime.members) == [best]
    assert {m.name for m in config.pruned} == set(MEMBERS) - {best}
    assert all("model selection" in m.reason for m in config.pruned)
    scored = runtime.score(split.holdout)
    np.testing.assert_allclose(scored["probability"],
                               build.calibration.calibrator.transform(predictions.holdout[best].to_numpy()),
                               rtol=0, atol=1e-12)
    assert set(scored["agreement"]) <= {0.0, 1.0}
    # min_members 2 of the policy is capped at the one served member: that member failing refuses.
    decider = Decider(runtime, {}, min_members=2)
    try:
        assert decider.min_members == 1
        rows = split.holdout[split.schema.features].iloc[:2].to_dict(orient="records")
        assert len(decider.decide(rows).rows) == 2
        broken = Decider(dataclasses.replace(runtime, members={best: Exploding()}), {}, min_members=2)
        with pytest.raises(RefusalError, match="0 working member"):
            broken.decide(rows)
        broken.close()
    finally:
        decider.close()


def test_model_card_says_model_selection_and_lists_pruned_members(slice_spec):
    from ensemble_platform.ensemble.config import EnsembleConfig, MemberRef, PrunedMember
    from ensemble_platform.governance.model_card import MemberEntry, ModelCardInputs, _combination, _constituents

    served = MemberRef(name="xgboost", family="boosted", registered_model="d.xgboost", version="3", run_id="r3")
    pruned = PrunedMember(name="k_nearest_neighbours", family="knn", registered_model="d.k_nearest_neighbours",
                          version="2", run_id="r2", reason="not the selected member (single_member: model selection)")
    config = EnsembleConfig(dataset="d", version="1.0.0", strategy="single_member", members=(served,),
                            pruned=(pruned,), combiner={"member_index": 0})
    metrics = {"roc_auc": 0.8, "log_loss": 0.4}
    noise = {"single_member": {"mean_difference_to_best": 0.0004, "standard_error": 0.0011, "within_noise": True},
             "stacking": {"mean_difference_to_best": 0.0, "standard_error": 0.0, "within_noise": True}}
    validation = {"members": {"xgboost": metrics, "k_nearest_neighbours": {"roc_auc": 0.7, "log_loss": 0.5}},
                  "selection": {"criterion": "log_loss", "folds": 5, "rule": "one-standard-error rule",
                                "best_out_of_fold": "stacking", "order_of_simplicity": ["single_member", "stacking"],
                                "noise": noise, "out_of_fold": {"single_member": metrics, "stacking": metrics}}}
    inputs = ModelCardInputs(config, slice_spec, [MemberEntry("xgboost", "boosted", "d.xgboost", "3", "r3")],
                             validation, {}, {}, {}, None, {})  # type: ignore[arg-type]
    combination = _combination(inputs).body
    assert "**Model selection**" in combination and "xgboost" in combination and "best out of fold: stacking" in combination
    assert "| single_member | 0.4000 | 0.00040 | 0.00110 | yes |" in combination
    assert "1 (model selection; min_members 2 applies to combinations)" in combination
    constituents = _constituents(inputs).body
    assert "**Evaluated but pruned**" in constituents
    assert "| k_nearest_neighbours | knn | d.k_nearest_neighbours | 2 | not the selected member" in constituents
