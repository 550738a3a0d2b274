"""The whole asset graph on a real Dagster instance and a real MLflow sqlite store, in temp dirs."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ensemble_platform import cli
from ensemble_platform.definitions import build_definitions
from ensemble_platform.defs.runner import materialize_lifecycle
from ensemble_platform.ensemble.build import member_references
from ensemble_platform.ensemble.runtime import RegisteredMember
from ensemble_platform.integrity.keys import load_signing_key
from ensemble_platform.integrity.sealed_values import read_sealed
from ensemble_platform.members import catalogue
from ensemble_platform.members.catalogue import MEMBER_NAMES, MemberSpec
from ensemble_platform.settings import PlatformPaths
from ensemble_platform_tests.conftest import BAD_INPUTS, RunsCode, write_spec


def _registered(paths: PlatformPaths) -> dict[str, list[str]]:
    client = MlflowClient(paths.mlflow_tracking_uri, paths.mlflow_tracking_uri)
    return {
        # The SQL store returns versions as ints (MLflow 3.17); the registry API takes strings.
        m.name: sorted(str(v.version) for v in client.search_model_versions(f"name = '{m.name}'"))
        for m in client.search_registered_models()
    }


def test_registry_has_every_member_and_the_ensemble(lifecycle):
    paths, _ = lifecycle
    registered = _registered(paths)
    assert registered == {**{f"credit_slice.{m}": ["1"] for m in MEMBER_NAMES}, "credit_slice.ensemble": ["1"]}
    client = MlflowClient(paths.mlflow_tracking_uri, paths.mlflow_tracking_uri)
    member = client.get_model_version("credit_slice.xgboost", "1")
    for tag in ("ensemble_platform.data_hash", "ensemble_platform.dagster_run_id", "ensemble_platform.code_version",
                "ensemble_platform.fingerprint"):
        assert member.tags[tag], tag
    from ensemble_platform import blas_kernel
    from ensemble_platform.tags import BLAS_KERNEL_TAG

    # The kernel the fit ran on: the pinned one wherever the CPU runs it (conftest imports the package first).
    pinned = blas_kernel.cpu_runs_pinned_kernel()
    assert member.tags[BLAS_KERNEL_TAG] == (blas_kernel.PINNED_CORETYPE if pinned else blas_kernel.kernels())
    ensemble = client.get_model_version("credit_slice.ensemble", "1")
    assert ensemble.tags["ensemble_platform.semver"] == "1.0.0"


def test_registered_ensemble_holds_the_registered_member_artefacts_byte_for_byte(lifecycle):
    """The ensemble's runtime copies each served member's registered safe artefact (no second
    serialisation): the same bytes, so the same SHA-256 as the member version's tag."""
    import hashlib

    from mlflow.artifacts import download_artifacts

    from ensemble_platform.tags import MEMBER_SHA256_TAG

    paths, _ = lifecycle
    client = MlflowClient(paths.mlflow_tracking_uri, paths.mlflow_tracking_uri)
    model = Path(download_artifacts(artifact_uri="models:/credit_slice.ensemble/1",
                                    tracking_uri=paths.mlflow_tracking_uri))
    stored = sorted(model.rglob("members/*.skops"))
    assert stored
    for path in stored:
        tag = client.get_model_version(f"credit_slice.{path.stem}", "1").tags[MEMBER_SHA256_TAG]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == tag, path.stem


def test_a_forged_registered_member_artefact_is_refused_before_it_is_copied(lifecycle, tmp_path):
    """Attack: someone who can write under the platform home rewrites a member version's safe artefact
    in the MLflow artifact store. Registering an ensemble and exporting a bundle copy that artefact
    (`Registry.member_artefacts`): the copy checks it against the version's SHA-256 tag and refuses."""
    from ensemble_platform.ensemble.config import ConfigStore
    from ensemble_platform.errors import PlatformError
    from ensemble_platform.governance.registry import Registry
    from ensemble_platform.tags import MEMBER_ARTEFACT

    paths, _ = lifecycle
    config = ConfigStore(paths.configs_dir("credit_slice")).load("1.0.0")
    target = config.members[0]
    client = MlflowClient(paths.mlflow_tracking_uri, paths.mlflow_tracking_uri)
    run = client.get_run(client.get_model_version(target.registered_model, target.version).run_id)
    artefact = Path(run.info.artifact_uri.removeprefix("file://")) / MEMBER_ARTEFACT
    original = artefact.read_bytes()
    try:
        artefact.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped
        with pytest.raises(PlatformError, match="the artefact was changed"):
            Registry(paths).member_artefacts(config.members, tmp_path / "copy")
    finally:
        artefact.write_bytes(original)  # the session-wide lifecycle home is shared
    assert set(Registry(paths).member_artefacts(config.members, tmp_path / "again")) == {m.name for m in config.members}


def test_validation_report_schema_and_consistency(lifecycle):
    paths, _ = lifecycle
    report = json.loads((paths.version_reports_dir("credit_slice", "1.0.0") / "validation.json").read_text())
    assert report["ensemble_version"] == "1.0.0"
    assert set(report["members"]) == set(MEMBER_NAMES)
    assert report["chosen"] in report["strategies"]
    assert report["chosen"] == min(
        report["selection"]["out_of_fold"], key=lambda s: report["selection"]["out_of_fold"][s]["log_loss"]
    )
    for metrics in [report["ensemble"], *report["members"].values(), *report["strategies"].values()]:
        assert set(metrics) == {"roc_auc", "log_loss", "brier", "accuracy", "ece"}
    # Before its calibrator, the ensemble scored through the served runtime is the chosen strategy.
    assert report["ensemble_before_calibration"] == pytest.approx(report["strategies"][report["chosen"]])
    best = report["best_member"]
    assert report["lift_over_best_member"]["roc_auc"] == pytest.approx(
        report["ensemble"]["roc_auc"] - report["members"][best]["roc_auc"]
    )
    assert sum(report["agreement"]["distribution"].values()) == report["lineage"]["holdout_rows"]
    assert report["selection"]["evidence"] == "out_of_fold_cross_validation"


def test_prediction_matrices_written_as_parquet(lifecycle):
    paths, _ = lifecycle
    oof = pd.read_parquet(paths.predictions_dir("credit_slice") / "oof_predictions.parquet")
    holdout = pd.read_parquet(paths.predictions_dir("credit_slice") / "holdout_predictions.parquet")
    assert list(oof.columns) == ["fold", "y", *MEMBER_NAMES]
    assert list(holdout.columns) == ["y", *MEMBER_NAMES]
    assert oof[list(MEMBER_NAMES)].notna().all().all()
    assert sorted(oof["fold"].unique()) == [0, 1, 2]


def test_registered_ensemble_pyfunc_reproduces_validated_probabilities(lifecycle, credit_slice):
    import mlflow.pyfunc

    paths, _ = lifecycle
    model = mlflow.pyfunc.load_model("models:/credit_slice.ensemble/1")
    holdout = pd.read_parquet(paths.predictions_dir("credit_slice") / "holdout_predictions.parquet")
    # Re-derive the holdout rows from the spec's split to score them through the pyfunc.
    from ensemble_platform.data.loading import load_dataset
    from ensemble_platform.data.spec import load_spec
    from ensemble_platform.data.splitting import split_dataset

    spec = load_spec(lifecycle[1])
    split = split_dataset(load_dataset(spec), spec)
    # The signature types numeric features double: in Python they are sent as floats.
    numeric = [c.name for c in model.metadata.get_input_schema().inputs if c.type.name == "double"]
    scored = model.predict(split.holdout.astype({c: float for c in numeric}))
    report = json.loads((paths.version_reports_dir("credit_slice", "1.0.0") / "validation.json").read_text())
    from ensemble_platform.evaluation.metrics import binary_metrics

    assert binary_metrics(holdout["y"].to_numpy(), scored["probability"].to_numpy()) == pytest.approx(report["ensemble"])
    assert set(scored.columns) == {"probability", "decision", "agreement", "needs_review"}


def test_registered_ensemble_scores_raw_rows_and_names_bad_columns(lifecycle, credit_slice):
    """Rows as the typed signature takes them (numeric as floats): missing values, unseen categories,
    extra columns. Bad rows get an error naming the column."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model("models:/credit_slice.ensemble/1")
    rows = credit_slice.head(6).copy()
    assert rows["Seniority"].dtype.kind == "i"
    with pytest.raises(MlflowException, match="column Seniority.*int64 to float64"):
        model.predict(rows)  # MLflow's rule for a double column; over HTTP the parser casts it
    numeric = [c.name for c in model.metadata.get_input_schema().inputs if c.type.name == "double"]
    rows = rows.astype({c: float for c in numeric}).assign(extra="ignored")
    rows.loc[rows.index[0], "Income"] = np.nan
    rows.loc[rows.index[1], "Home"] = "houseboat"
    scored = model.predict(rows)
    assert scored["probability"].between(0, 1).all() and len(scored) == 6
    with pytest.raises(MlflowException, match="Price"):
        model.predict(rows.drop(columns=["Price"]))
    with pytest.raises(MlflowException, match="column Amount"):
        model.predict(rows.assign(Amount=rows["Amount"].astype(object).where(rows.index != rows.index[2], "lots")))


def test_rerun_on_unchanged_inputs_keeps_version_and_registry(lifecycle):
    paths, spec_path = lifecycle
    before = _registered(paths)
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    run = materialize_lifecycle(build_definitions(str(paths.home), str(spec_path)), instance, echo=lambda _: None)
    assert run.validation["ensemble_version"] == "1.0.0"
    assert _registered(paths) == before


def test_retraining_one_member_bumps_minor(tmp_path, credit_slice, monkeypatch):
    spec_path = write_spec(tmp_path / "dataset", credit_slice)
    home = tmp_path / "home"
    defs = build_definitions(str(home), str(spec_path))
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_lifecycle(defs, instance, echo=lambda _: None).validation
    # A changed member definition: only that partition is retrained, as a new registry version.
    original = catalogue.CATALOGUE["logistic_regression"]

    def stronger_regularisation(schema, seed):
        pipeline = original.build(schema, seed)
        pipeline.set_params(model__C=0.05)
        return pipeline

    monkeypatch.setitem(catalogue.CATALOGUE, "logistic_regression",
                        MemberSpec("logistic_regression", original.family, stronger_regularisation))
    defs.resolve_job_def("members_job").execute_in_process(instance=instance, partition_key="logistic_regression")
    second = defs.resolve_job_def("ensemble_job").execute_in_process(instance=instance).output_for_node(
        "ensemble_validation"
    )
    paths = PlatformPaths.from_env(home)
    assert _registered(paths)["credit_slice.logistic_regression"] == ["1", "2"]
    assert _registered(paths)["credit_slice.xgboost"] == ["1"]
    expected = "1.1.0" if second["chosen"] == first["chosen"] else "2.0.0"
    assert second["ensemble_version"] == expected
    assert _registered(paths)["credit_slice.ensemble"] == ["1", "2"]


@pytest.mark.parametrize("mutate, overrides, error, fragments", BAD_INPUTS)
def test_bad_input_stops_the_graph_before_anything_is_written(tmp_path, credit_slice, mutate, overrides, error,
                                                              fragments):
    spec_path = write_spec(tmp_path / "dataset", mutate(credit_slice) if mutate else credit_slice, **overrides)
    home = tmp_path / "home"
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(error) as info:
        materialize_lifecycle(build_definitions(str(home), str(spec_path)), instance, echo=lambda _: None)
    assert all(fragment in str(info.value) for fragment in fragments)
    paths = PlatformPaths.from_env(home)
    for written in ("reports", "configs", "predictions"):
        assert not (home / written).exists(), written
    assert not paths.mlflow_dir.joinpath("mlflow.db").exists() or _registered(paths) == {}
    for asset in ("raw_dataset", "train_holdout_split", "member_model"):
        assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is None, asset


def test_cli_reports_bad_spec_as_one_line(tmp_path, credit_slice, capsys):
    spec_path = write_spec(tmp_path / "dataset", credit_slice, positive_label="default")
    assert cli.main(["--home", str(tmp_path / "home"), "demo", "--dataset", str(spec_path)]) == 2
    err = capsys.readouterr().err
    assert "positive_label" in err and "default" in err


def test_blocking_expectations_stop_the_split(tmp_path, credit_slice):
    # Loads fine (parseable, two classes) but Income is nearly empty (beyond columns.max_missing_share,
    # 0.95; a merely sparse column trains): the GX check must block.
    broken = credit_slice.copy()
    broken.loc[: int(len(broken) * 0.98), "Income"] = np.nan
    spec_path = write_spec(tmp_path / "dataset", broken)
    defs = build_definitions(str(tmp_path / "home"), str(spec_path))
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("data_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    checks = [e for e in result.get_asset_check_evaluations() if e.check_name == "raw_dataset_expectations"]
    assert len(checks) == 1 and not checks[0].passed
    assert "Income" in json.dumps(checks[0].metadata["result"].value)
    assert instance.get_latest_materialization_event(dg.AssetKey("train_holdout_split")) is None


def _stored(paths: PlatformPaths, relative: str):
    """An asset value of the credit_slice run, read as the platform reads it (seal checked)."""
    return read_sealed(paths.asset_storage("credit_slice") / relative, load_signing_key(paths),
                       f"credit_slice/{relative}")


def test_asset_values_are_documents_not_fitted_models(lifecycle):
    """Fitted members are registry artefacts: the stored asset values carry predictions, records and
    the combiner, never a fitted member (issue 18: each copy cost 1.8 GB at 320k rows)."""
    paths, _ = lifecycle
    storage = paths.asset_storage("credit_slice")
    for name in MEMBER_NAMES:
        record = _stored(paths, f"member_model/{name}")
        assert record.pipeline is None and record.key_params is not None and record.version == "1", name
    predictions = _stored(paths, "oof_predictions")
    assert all(fit.pipeline is None for fit in predictions.fits.values())
    build = _stored(paths, "ensemble_config")
    # The stored runtime names its served members, in order, as registry references only.
    assert build.runtime.members == member_references(build.config.members) and build.config.members
    assert all(type(m) is RegisteredMember for m in build.runtime.members.values())
    # Small: one float per row and member, not trees (the forests alone pickle to megabytes).
    assert max((storage / "member_model" / name).stat().st_size for name in MEMBER_NAMES) < 200_000



@pytest.mark.parametrize("attack", ["plain pickle", "sealed value of another asset", "one byte flipped"])
def test_a_planted_asset_value_is_refused_before_it_is_unpickled(lifecycle, tmp_path, attack):
    """Threat model: write access to the platform home. An asset value replaced by a pickle that runs
    code, by another asset's genuine sealed value, or edited, stops the next run at that input; the
    planted code never runs and nothing downstream is written."""
    import pickle

    paths, spec_path = lifecycle
    target = paths.asset_storage("credit_slice") / "member_model" / "random_forest"
    original = target.read_bytes()
    marker = tmp_path / "planted-code-ran"
    planted = {
        "plain pickle": pickle.dumps(RunsCode(marker)),
        "sealed value of another asset": (target.parent / "xgboost").read_bytes(),
        "one byte flipped": original[:-40] + bytes([original[-40] ^ 1]) + original[-39:],
    }[attack]
    config = paths.configs_dir("credit_slice")
    configs_before = sorted(p.name for p in config.iterdir())
    target.write_bytes(planted)
    try:
        instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
        job = build_definitions(str(paths.home), str(spec_path)).resolve_job_def("ensemble_job")
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    finally:
        target.write_bytes(original)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "oof_predictions"
    message = str(failure.event_specific_data.error)
    assert str(target) in message and "materialize its asset again" in message, message
    assert not marker.exists()
    assert sorted(p.name for p in config.iterdir()) == configs_before
