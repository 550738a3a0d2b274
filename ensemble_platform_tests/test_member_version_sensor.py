"""The member-version sensor on a real MLflow registry and a real Dagster instance: a member
version registered from outside yields exactly one re-validation request, the requested run
produces a MINOR-bumped candidate and leaves production alone, and versions without the lineage
the ensemble needs are skipped with a reason that names them."""

import json

import dagster as dg
import mlflow
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from ensemble_platform.data.loading import load_dataset
from ensemble_platform.data.spec import load_spec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.definitions import build_definitions
from ensemble_platform.ensemble.config import ConfigStore
from ensemble_platform.governance.registry import Registry, register_outside_member
from ensemble_platform.governance.release import Release
from ensemble_platform.members.catalogue import get_member_spec, one_hot_scaled
from ensemble_platform.settings import DATASET_TAG, TRUST_PICKLED_MEMBERS_ENV
from ensemble_platform_tests.conftest import RunsCode, home_in_production

DATASET = "credit_slice"


def _notebook_experiment(paths, member: str) -> str:
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    mlflow.set_registry_uri(paths.mlflow_tracking_uri)
    # Its own experiment, artifacts under the temp home (MLflow's default experiment would write ./mlruns).
    experiment = mlflow.create_experiment(f"notebook-{member}-{len(mlflow.search_experiments())}",
                                          artifact_location=(paths.home / "notebook").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    return experiment


def _register_from_notebook(paths, member: str, model, tags: dict[str, str]) -> str:
    """What a data scientist does outside the platform: log a model and register it by hand, as
    MLflow's cloudpickle only (no safe artefact: the platform unpickles it only when trusted to)."""
    experiment = _notebook_experiment(paths, member)
    with mlflow.start_run(experiment_id=experiment):
        # Requirements given: MLflow would otherwise load the model in a subprocess to infer them.
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle",
                                        pip_requirements=["scikit-learn"])
    return str(mlflow.register_model(info.model_uri, f"{DATASET}.{member}", tags=tags).version)


def _register_with_safe_artefact(paths, member: str, model, train_hash: str) -> str:
    """The documented way from a notebook: `register_outside_member` logs the safe artefact too."""
    _notebook_experiment(paths, member)
    return register_outside_member(model, f"{DATASET}.{member}", train_hash)



def _tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("member_version_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
    return sensor.evaluate_tick(context)


@pytest.fixture(scope="module")
def in_production(tmp_path_factory, credit_slice):
    paths, spec_path, _, _ = home_in_production(tmp_path_factory.mktemp("sensor"), credit_slice)
    spec = load_spec(spec_path)
    return paths, spec_path, split_dataset(load_dataset(spec), spec)


def test_a_new_member_version_is_revalidated_once_into_a_minor_candidate(in_production):
    paths, spec_path, split = in_production
    defs = build_definitions(str(paths.home), str(spec_path))
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    quiet = _tick(defs, instance)
    assert quiet.run_requests == [] and "no member version newer" in quiet.skip_message

    notebook_model = get_member_spec("logistic_regression").build(split.schema, 0).set_params(model__C=0.05)
    notebook_model.fit(split.X_train(), split.y_train)
    version = _register_with_safe_artefact(paths, "logistic_regression", notebook_model, split.train_hash)
    assert version == "2"

    first = _tick(defs, instance, quiet.cursor)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    members = request.run_config["ops"]["oof_predictions"]["config"]["member_versions"]
    assert members["logistic_regression"] == "2" and members["xgboost"] == "1"
    assert request.tags[DATASET_TAG] == str(spec_path.resolve())
    assert request.run_key == f"member-versions:{DATASET}:" + ",".join(f"{m}={v}" for m, v in sorted(members.items()))
    assert _tick(defs, instance, first.cursor).run_requests == []  # the next tick: nothing new
    # A lost cursor asks again, but under the same run key: the daemon launches a run key once.
    assert [r.run_key for r in _tick(defs, instance, None).run_requests] == [request.run_key]

    result = defs.resolve_job_def("revalidation_job").execute_in_process(
        instance=instance, run_config=request.run_config, tags=request.tags)
    assert result.success
    store = ConfigStore(paths.configs_dir(DATASET))
    old, new = store.load("1.0.0"), store.latest()
    # Seeded data: the strategy holds, so a changed member version is exactly a MINOR bump.
    assert (new.strategy, new.version) == (old.strategy, "1.1.0")
    assert new.member_versions() == {**old.member_versions(), "logistic_regression": "2"}
    release = Release(paths)
    assert release.registry.stage_state(DATASET).stage_of(new.registered_version) == "candidate"
    assert release.registry.aliases(f"{DATASET}.ensemble")["production"] == old.registered_version
    assert release.state(DATASET, new.version).gates is not None  # validated, gated, carded
    assert (paths.version_reports_dir(DATASET, new.version) / "model_card.html").is_file()
    assert _tick(defs, instance, first.cursor).run_requests == []  # the new config uses version 2


def test_versions_without_lineage_are_skipped_with_the_reason(in_production, monkeypatch):
    paths, spec_path, split = in_production
    monkeypatch.setenv(TRUST_PICKLED_MEMBERS_ENV, "1")  # MLflow's pickles from the notebook, trusted here
    defs = build_definitions(str(paths.home), str(spec_path))
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    cursor = _tick(defs, instance).cursor
    untagged = get_member_spec("xgboost").build(split.schema, 1).fit(split.X_train(), split.y_train)
    no_lineage = _register_from_notebook(paths, "xgboost", untagged, {})
    no_proba = make_pipeline(one_hot_scaled(split.schema), LinearSVC()).fit(split.X_train(), split.y_train)
    svc = _register_from_notebook(paths, "k_nearest_neighbours", no_proba,
                                  {"ensemble_platform.train_hash": split.train_hash})
    tick = _tick(defs, instance, cursor)
    assert tick.run_requests == []
    assert f"version {no_lineage} of {DATASET}.xgboost" in tick.skip_message
    assert "no ensemble_platform.train_hash tag" in tick.skip_message
    assert f"version {svc} of {DATASET}.k_nearest_neighbours" in tick.skip_message
    assert "cannot predict probabilities" in tick.skip_message
    again = _tick(defs, instance, tick.cursor)  # reported once, then remembered
    assert again.run_requests == [] and "no member version newer" in again.skip_message
    assert json.loads(again.cursor)[DATASET]["xgboost"] == int(no_lineage)


def test_a_pickled_member_version_is_not_unpickled_unless_trusted(in_production, tmp_path, monkeypatch):
    """Threat model: write access to the home, where the MLflow store lives. A version registered as
    MLflow's pickle only, whose file runs code when unpickled, is skipped by the sensor naming the
    version and the setting; its code never runs. The control: trusted, it does run."""
    paths, spec_path, split = in_production
    monkeypatch.delenv(TRUST_PICKLED_MEMBERS_ENV, raising=False)
    defs = build_definitions(str(paths.home), str(spec_path))
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    cursor = _tick(defs, instance).cursor
    marker = tmp_path / "planted-model-ran"
    version = _register_from_notebook(paths, "hist_gradient_boosting", RunsCode(marker),
                                      {"ensemble_platform.train_hash": split.train_hash})
    assert not marker.exists(), "logged and registered without being loaded"
    tick = _tick(defs, instance, cursor)
    assert tick.run_requests == [] and not marker.exists()
    assert f"version {version} of {DATASET}.hist_gradient_boosting" in tick.skip_message
    assert f"{TRUST_PICKLED_MEMBERS_ENV}=1" in tick.skip_message and "refused" in tick.skip_message
    monkeypatch.setenv(TRUST_PICKLED_MEMBERS_ENV, "1")
    Registry(paths).load_member(f"{DATASET}.hist_gradient_boosting", version)  # the control: trusted, it runs
    assert marker.exists()


def test_a_platform_member_loads_from_its_safe_artefact_even_with_its_pickle_replaced(in_production, tmp_path,
                                                                                     monkeypatch):
    """Every version the platform registers carries a safe artefact: loading it never unpickles, so
    a planted `model.pkl` in its MLflow model does not run, even where pickles are trusted."""
    import pickle

    paths, _, split = in_production
    monkeypatch.setenv(TRUST_PICKLED_MEMBERS_ENV, "1")
    registry = Registry(paths)
    name = f"{DATASET}.xgboost"
    logged_model = registry.client.get_model_version(name, "1").source.rsplit("/", 1)[-1]  # models:/m-...
    stored = list(paths.home.rglob(f"{logged_model}/artifacts/model.pkl"))
    assert len(stored) == 1, "the registered member's MLflow pickle, under the home"
    marker = tmp_path / "planted-pickle-ran"
    stored[0].write_bytes(pickle.dumps(RunsCode(marker)))
    model, entry = registry.load_member(name, "1")
    assert not marker.exists() and str(entry.version) == "1"
    assert model.predict_proba(split.X_holdout().head(3)).shape == (3, 2)
    mlflow.sklearn.load_model(f"models:/{name}/1")  # the control: MLflow's own loader unpickles the planted file
    assert marker.exists()


def test_a_version_whose_safe_artefact_is_gone_is_skipped_with_the_reason(in_production):
    """A missing artefact (deleted, or garbage-collected) is a reason to skip that version, not an
    error that stops every tick of the sensor."""
    paths, spec_path, split = in_production
    defs = build_definitions(str(paths.home), str(spec_path))
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    cursor = _tick(defs, instance).cursor
    model = get_member_spec("logistic_regression").build(split.schema, 0).set_params(model__C=0.2)
    version = _register_with_safe_artefact(paths, "xgboost", model.fit(split.X_train(), split.y_train),
                                           split.train_hash)
    run_id = Registry(paths).client.get_model_version(f"{DATASET}.xgboost", version).run_id
    (artefact,) = [p for p in paths.home.rglob("member.skops") if run_id in str(p)]
    artefact.unlink()
    tick = _tick(defs, instance, cursor)
    assert tick.run_requests == []
    assert f"version {version} of {DATASET}.xgboost" in tick.skip_message and "cannot be loaded" in tick.skip_message


def test_a_self_consistent_version_registered_without_the_key_is_not_adopted(in_production):
    """Someone who can write the MLflow store (but holds no key) registers a valid model with its safe
    artefact and a matching SHA-256 tag, everything `register_outside_member` writes but the MAC. The sensor
    skips it naming the reason and requests no run; the same model registered with the key is adopted."""
    import hashlib

    from ensemble_platform import safe_format
    from ensemble_platform.governance.registry import _log_safe_artefact
    from ensemble_platform.tags import MEMBER_SHA256_TAG

    paths, spec_path, split = in_production
    defs = build_definitions(str(paths.home), str(spec_path))
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    cursor = _tick(defs, instance).cursor
    model = get_member_spec("logistic_regression").build(split.schema, 0).set_params(model__C=0.3)
    model.fit(split.X_train(), split.y_train)
    safe = safe_format.dumps(model)
    with mlflow.start_run(experiment_id=_notebook_experiment(paths, "xgboost")):
        _log_safe_artefact(safe)
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle",
                                        pip_requirements=["scikit-learn"])
    tags = {"ensemble_platform.train_hash": split.train_hash, MEMBER_SHA256_TAG: hashlib.sha256(safe).hexdigest()}
    version = str(mlflow.register_model(info.model_uri, f"{DATASET}.xgboost", tags=tags).version)
    tick = _tick(defs, instance, cursor)
    assert tick.run_requests == []
    assert f"version {version} of {DATASET}.xgboost" in tick.skip_message and "is not signed" in tick.skip_message
    signed = _register_with_safe_artefact(paths, "xgboost", model, split.train_hash)  # the control
    adopted = _tick(defs, instance, tick.cursor)
    assert len(adopted.run_requests) == 1, adopted.skip_message
    assert signed in json.dumps(adopted.run_requests[0].run_config)
