"""Semantic version rules of ensemble configs."""

import pytest

from ensemble_platform.ensemble.config import ConfigStore, EnsembleConfig, MemberRef, bump_kind, next_version
from ensemble_platform.policy import FairnessPolicy, GapThreshold, GovernancePolicy


def _config(strategy="stacking", versions=("1", "1"), combiner=None, threshold=0.6, version="0.0.0",
            calibration=None, fairness=None):
    members = tuple(
        MemberRef(name=f"m{i}", family="f", registered_model=f"d.m{i}", version=v, run_id=f"r{i}{v}")
        for i, v in enumerate(versions)
    )
    return EnsembleConfig(dataset="d", version=version, strategy=strategy, members=members,
                          combiner=combiner or {"weights": [0.5, 0.5]},
                          calibration=calibration or {"method": "none"},
                          governance=GovernancePolicy(agreement_threshold=threshold,
                                                      fairness=fairness or FairnessPolicy()))


def test_first_version_is_1_0_0():
    assert next_version(None, _config()) == "1.0.0"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, "2.3.4"),
        ({"strategy": "weighted_average"}, "3.0.0"),
        ({"versions": ("1", "2")}, "2.4.0"),
        ({"combiner": {"weights": [0.6, 0.4]}}, "2.3.5"),
        ({"threshold": 0.7}, "2.3.5"),
        ({"calibration": {"method": "sigmoid", "params": {"slope": 1.1, "intercept": 0.0}}}, "2.3.5"),
        ({"fairness": FairnessPolicy(demographic_parity_difference=GapThreshold(warn=0.05, fail=0.1))}, "2.3.5"),
        ({"strategy": "soft_average", "versions": ("2", "2")}, "3.0.0"),  # the bigger change wins
    ],
    ids=["unchanged", "major", "minor", "patch-weights", "patch-threshold", "patch-calibrator",
         "patch-fairness-threshold", "major-beats-minor"],
)
def test_bump_rules(change, expected):
    previous = _config(version="2.3.4")
    assert next_version(previous, _config(**change)) == expected


def test_version_and_registry_fields_are_not_content():
    a = _config(version="1.0.0")
    b = a.model_copy(update={"version": "9.9.9", "registered_version": "7"})
    assert a.config_hash == b.config_hash
    assert bump_kind(a, b) is None


def test_store_round_trip_and_latest_by_semver(tmp_path):
    store = ConfigStore(tmp_path)
    for version in ("1.0.0", "1.10.0", "1.2.0"):
        store.save(_config(version=version))
    assert store.versions() == ["1.0.0", "1.2.0", "1.10.0"]
    assert store.latest().version == "1.10.0"
    assert store.load("1.2.0") == _config(version="1.2.0")
    assert not list(tmp_path.glob("*.tmp"))


def test_config_hash_ignores_member_run_ids_but_not_member_versions():
    a = _config()
    moved = a.model_copy(update={"members": tuple(m.model_copy(update={"run_id": "elsewhere"}) for m in a.members)})
    assert moved.config_hash == a.config_hash
    assert _config(versions=("1", "2")).config_hash != a.config_hash


def _pruned(config, version="1"):
    from ensemble_platform.ensemble.config import PrunedMember

    return config.model_copy(update={"pruned": (PrunedMember(
        name="m9", family="f", registered_model="d.m9", version=version, run_id="r9", reason="weight 0 in stacking"),)})


def test_pruned_members_are_content_and_a_new_pruned_version_is_minor():
    a = _config(version="2.3.4")
    assert "pruned" not in a.content()  # nothing pruned: the content (and hash) of before pruning existed
    pruned = _pruned(a)
    assert pruned.content()["pruned"] == [{"name": "m9", "family": "f", "registered_model": "d.m9", "version": "1",
                                           "reason": "weight 0 in stacking"}]
    assert next_version(a, pruned) == "2.4.0"
    assert next_version(_pruned(a), _pruned(a, version="2")) == "2.4.0"
    assert _pruned(a).config_hash == _pruned(a).model_copy(
        update={"pruned": tuple(m.model_copy(update={"run_id": "elsewhere"}) for m in _pruned(a).pruned)}).config_hash
    assert not a.model_selection and _config(versions=("1",)).model_selection
