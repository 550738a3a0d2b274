"""Registration stays exactly-once when writers race (the rule; the real race of two processes on
the PostgreSQL stack is in test_stack_e2e): a writer that created a duplicate of a fingerprint
deletes it and returns the lowest version."""

import mlflow
from mlflow.entities import LifecycleStage

from ensemble_platform.governance.registry import Registry, member_model_name
from ensemble_platform.members.training import fit_member
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import FINGERPRINT_TAG


def test_a_racing_duplicate_is_deleted_and_the_lowest_version_returned(tmp_path, split):
    registry = Registry(PlatformPaths.from_env(tmp_path / "home"))
    fit = registry.register_member(fit_member("logistic_regression", split, seed=0), "d", split.lineage(),
                                   split.X_train())
    name = member_model_name("d", "logistic_regression")
    # A second writer that checked before the first registered: it logs and registers its own copy.
    with mlflow.start_run(experiment_id=registry.experiment_id("d")) as run:
        info = mlflow.sklearn.log_model(fit.pipeline, name="model", serialization_format="cloudpickle")
    returned = registry._register(info.model_uri, name, {FINGERPRINT_TAG: fit.fingerprint})
    assert returned == fit.version == "1"
    assert [str(v.version) for v in registry.client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert registry.client.get_run(run.info.run_id).info.lifecycle_stage == LifecycleStage.DELETED
    assert registry.client.get_run(fit.run_id).info.lifecycle_stage == LifecycleStage.ACTIVE
    # A different fingerprint is a new version, untouched by the rule.
    other = registry._register(info.model_uri, name, {FINGERPRINT_TAG: "another"})
    assert other == "3"  # version numbers are never reused: 2 was the deleted duplicate


def test_the_loser_of_a_race_returns_the_kept_versions_run(tmp_path, split, monkeypatch):
    """A writer whose lookup ran before the other's registration logs its own run, registers, finds the
    lower signed version and deletes its own: the fit it returns names the kept version's run (an
    ensemble later checks that the version still points at that run)."""
    registry = Registry(PlatformPaths.from_env(tmp_path / "home"))
    fit = fit_member("logistic_regression", split, seed=0)
    first = registry.register_member(fit, "d", split.lineage(), split.X_train())
    lookups = iter([None])  # the loser's first lookup: before the winner had registered
    original = registry.find_version
    monkeypatch.setattr(registry, "find_version", lambda *args, **kwargs: next(lookups, "later") and original(
        *args, **kwargs))
    second = registry.register_member(fit, "d", split.lineage(), split.X_train())
    name = member_model_name("d", "logistic_regression")
    assert second.version == first.version == "1"
    assert second.run_id == first.run_id == registry.client.get_model_version(name, "1").run_id
    assert [str(v.version) for v in registry.client.search_model_versions(f"name = '{name}'")] == ["1"]


def test_a_planted_version_with_the_fits_fingerprint_is_never_reused_nor_kept_over_the_fit(tmp_path, split):
    """Someone who can write the store registers a version carrying the fit's fingerprint (unsigned) before
    the platform registers the fit: the platform neither reuses it nor deletes its own new version in its
    favour; it returns its own signed version and run."""
    registry = Registry(PlatformPaths.from_env(tmp_path / "home"))
    fit = fit_member("logistic_regression", split, seed=0)
    name = member_model_name("d", "logistic_regression")
    with mlflow.start_run(experiment_id=registry.experiment_id("d")) as run:
        info = mlflow.sklearn.log_model(fit.pipeline, name="model", serialization_format="cloudpickle")
    planted = str(mlflow.register_model(info.model_uri, name, tags={FINGERPRINT_TAG: fit.fingerprint}).version)
    registered = registry.register_member(fit, "d", split.lineage(), split.X_train())
    assert planted == "1" and registered.version == "2" and registered.run_id != run.info.run_id
    assert sorted(str(v.version) for v in registry.client.search_model_versions(f"name = '{name}'")) == ["1", "2"]
    assert registry.client.get_model_version(name, "2").run_id == registered.run_id


def test_registering_from_outside_without_the_key_registers_nothing_and_makes_no_key(keyed_home, split):
    """A notebook that cannot find the signing key is refused before anything is logged; no new key is made
    (a fresh one would sign versions the platform then refuses as signed with another key)."""
    import pytest

    from ensemble_platform.governance.registry import register_outside_member
    from ensemble_platform.integrity import SigningKeyError, key_file_path

    registry = Registry(PlatformPaths.from_env(keyed_home))
    fit = fit_member("logistic_regression", split, seed=0)
    with pytest.raises(SigningKeyError, match="does not exist"):
        register_outside_member(fit.pipeline, "d.logistic_regression", split.train_hash)
    assert not key_file_path().exists()
    assert registry.client.search_model_versions("name = 'd.logistic_regression'") == []
