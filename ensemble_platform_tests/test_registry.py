"""The MLflow registry layer on a real sqlite store: idempotent versions, nothing half-written."""

import dataclasses

import numpy as np
import pytest
from mlflow.entities import RunStatus
from sklearn.exceptions import NotFittedError

from ensemble_platform.governance.registry import Registry, member_model_name, runtime_requirements
from ensemble_platform.members.catalogue import get_member_spec
from ensemble_platform.members.training import fit_member
from ensemble_platform.settings import PlatformPaths


@pytest.fixture
def registry(tmp_path):
    return Registry(PlatformPaths.from_env(tmp_path / "home"))


def _versions(registry: Registry, name: str) -> list[str]:
    return [str(v.version) for v in registry.client.search_model_versions(f"name = '{name}'")]


def test_same_fingerprint_reuses_the_version_and_a_new_one_registers(registry, split):
    fit = fit_member("logistic_regression", split, seed=0)
    first = registry.register_member(fit, "d", split.lineage(), split.X_train())
    again = registry.register_member(fit_member("logistic_regression", split, seed=0), "d", split.lineage(),
                                     split.X_train())
    assert (first.version, again.version) == ("1", "1") and first.run_id == again.run_id
    assert fit.version is None and fit.registered_model is None  # registration returns a new fit
    other_seed = registry.register_member(fit_member("logistic_regression", split, seed=1), "d", split.lineage(),
                                          split.X_train())
    assert other_seed.version == "2"
    version = registry.client.get_model_version(member_model_name("d", "logistic_regression"), "2")
    assert version.tags["ensemble_platform.fingerprint"] == other_seed.fingerprint
    assert version.tags["ensemble_platform.train_hash"] == split.train_hash
    # The measured predict cost is evidence on the version (never in the fingerprint: same seed, same version).
    assert float(version.tags["ensemble_platform.predict_seconds_per_row"]) == pytest.approx(
        other_seed.predict_seconds_per_row, rel=1e-5) and other_seed.predict_seconds_per_row > 0
    assert version.run_id == other_seed.run_id


def test_failed_registration_leaves_no_version_and_marks_the_run_failed(registry, split):
    fit = fit_member("logistic_regression", split, seed=0)
    # An unfitted pipeline fails while MLflow infers the signature, mid-run.
    fit = dataclasses.replace(fit, pipeline=get_member_spec("logistic_regression").build(split.schema, 0))
    with pytest.raises(NotFittedError):
        registry.register_member(fit, "d", split.lineage(), split.X_train())
    assert _versions(registry, member_model_name("d", "logistic_regression")) == []
    runs = registry.client.search_runs([registry.experiment_id("d")])
    assert [r.info.status for r in runs] == [RunStatus.to_string(RunStatus.FAILED)]


def test_registered_member_loads_and_declares_pinned_requirements(registry, split):
    import mlflow.pyfunc
    from mlflow.artifacts import download_artifacts

    fit = registry.register_member(fit_member("xgboost", split, seed=0), "d", split.lineage(), split.X_train())
    uri = f"models:/{fit.registered_model}/{fit.version}"
    loaded = mlflow.sklearn.load_model(uri)
    np.testing.assert_allclose(loaded.predict_proba(split.X_holdout())[:, 1], fit.holdout_proba)
    requirements = set(open(download_artifacts(f"{uri}/requirements.txt")).read().split())
    assert set(runtime_requirements()) <= requirements
    assert all("==" in r for r in runtime_requirements())
