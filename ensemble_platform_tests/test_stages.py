"""Stage transitions (pure planning) and the hash-chained audit log."""


import pytest

from ensemble_platform.governance.approvals import ReleaseRefused
from ensemble_platform.governance.stages import StageState, mark_candidate, plan_promotion

MEMBERS_V1 = {"d.a": "1", "d.b": "1"}
MEMBERS_V2 = {"d.a": "2", "d.b": "1"}


def _validated(*versions: str) -> StageState:
    state = StageState()
    for version in versions:
        state = mark_candidate(state, version)
    return state


def test_validated_versions_become_candidates_and_keep_later_stages():
    state = _validated("1", "2")
    assert state.stages == {"1": "candidate", "2": "candidate"} and state.aliases == {"candidate": "2"}
    staged, _ = plan_promotion(state, "1", "staging", MEMBERS_V1)
    assert mark_candidate(staged, "1") == staged  # re-validating a staged version does not demote it


def test_candidate_to_staging_to_production():
    staged, kind = plan_promotion(_validated("1"), "1", "staging", MEMBERS_V1, "1.0.0")
    assert kind == "promotion"
    assert staged.stages == {"1": "staging"} and staged.aliases == {"staging": "1"}
    assert staged.member_aliases == {"d.a": {"staging": "1"}, "d.b": {"staging": "1"}}
    produced, kind = plan_promotion(staged, "1", "production", MEMBERS_V1)
    assert kind == "promotion"
    assert produced.stages == {"1": "production"} and produced.aliases == {"production": "1"}
    assert produced.member_aliases == {"d.a": {"production": "1"}, "d.b": {"production": "1"}}


def test_new_production_archives_the_previous_and_rollback_restores_it():
    state = _validated("1", "2")
    state, _ = plan_promotion(state, "1", "staging", MEMBERS_V1)
    state, _ = plan_promotion(state, "1", "production", MEMBERS_V1)
    state, _ = plan_promotion(state, "2", "staging", MEMBERS_V2)
    assert state.member_aliases["d.a"] == {"production": "1", "staging": "2"}
    state, kind = plan_promotion(state, "2", "production", MEMBERS_V2)
    assert kind == "promotion"
    assert state.stages == {"1": "archived", "2": "production"}
    assert state.aliases == {"production": "2", "archived": "1"}
    assert state.member_aliases == {"d.a": {"production": "2"}, "d.b": {"production": "1"}}
    rolled, kind = plan_promotion(state, "1", "production", MEMBERS_V1)
    assert kind == "rollback"
    assert rolled.stages == {"1": "production", "2": "archived"}
    assert rolled.aliases == {"production": "1", "archived": "2"}
    assert rolled.member_aliases["d.a"] == {"production": "1"}


def test_a_new_staging_version_sends_the_old_one_back_to_candidate():
    state = _validated("1", "2")
    state, _ = plan_promotion(state, "1", "staging", MEMBERS_V1)
    state, _ = plan_promotion(state, "2", "staging", MEMBERS_V2)
    assert state.stages == {"1": "candidate", "2": "staging"} and state.aliases == {"staging": "2"}


def test_promoting_to_the_current_stage_changes_nothing():
    state, _ = plan_promotion(_validated("1"), "1", "staging", MEMBERS_V1)
    again, kind = plan_promotion(state, "1", "staging", MEMBERS_V1)
    assert kind == "unchanged" and again == state


@pytest.mark.parametrize("setup, version, to, message", [
    ([], "1", "production", "promote it to staging first"),
    ([("1", "staging"), ("1", "production")], "1", "staging", "is in production"),
    ([], "9", "staging", "has not been validated"),
    ([], "1", "archived", "cannot promote to 'archived'"),
])
def test_refused_transitions(setup, version, to, message):
    state = _validated("1")
    for v, stage in setup:
        state, _ = plan_promotion(state, v, stage, MEMBERS_V1)
    with pytest.raises(ReleaseRefused, match=message):
        plan_promotion(state, version, to, MEMBERS_V1)
