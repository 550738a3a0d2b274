"""Batches, drift and retraining on a real Dagster instance and a real MLflow store: batch files
in the inbox become partitions, a malformed batch is quarantined with nothing downstream, a
drifted batch yields a retraining request and a calm one does not, labelled batches are scored
over time, the requested retraining ends with a new candidate that includes the labelled rows,
and the schedule asks for the same job. Production never moves."""

import json

import dagster as dg
import pytest

from ensemble_platform import cli
from ensemble_platform.data.batches import BatchStore
from ensemble_platform.data.loading import read_source
from ensemble_platform.data.spec import load_spec
from ensemble_platform.definitions import build_definitions
from ensemble_platform.ensemble.config import ConfigStore, bump_kind
from ensemble_platform.governance.release import Release
from ensemble_platform.settings import DATASET_TAG, TRIGGER_TAG
from ensemble_platform_tests.conftest import home_in_production

DATASET = "credit_slice"
INFLATED = ["Income", "Expenses", "Amount", "Price", "Assets"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, credit_slice):
    """A home with 1.0.0 in production and three batch files of rows the slice does not hold."""
    root = tmp_path_factory.mktemp("monitoring")
    paths, spec_path, _, _ = home_in_production(root, credit_slice)
    full = read_source(load_spec())
    unseen = full[~full["rownames"].isin(credit_slice["rownames"])].sample(300, random_state=1)
    files = {"calm": root / "calm.csv", "inflated": root / "inflated.parquet", "broken": root / "broken.csv",
             "emptied": root / "emptied.csv"}
    unseen.iloc[:150].to_csv(files["calm"], index=False)  # labelled, same distribution
    inflated = unseen.iloc[150:].drop(columns=["Status"]).copy()  # unlabelled, prices and incomes up 60%
    inflated[INFLATED] = inflated[INFLATED] * 1.6
    inflated.to_parquet(files["inflated"], index=False)
    unseen.iloc[:40].drop(columns=["Price"]).to_csv(files["broken"], index=False)  # a feature column missing
    # Income 60% empty where the training rows had it nearly always: beyond the missingness tolerance.
    emptied = unseen.iloc[40:80].copy()
    emptied.loc[emptied.index[:24], "Income"] = None
    emptied.to_csv(files["emptied"], index=False)
    defs = build_definitions(str(paths.home), str(spec_path))
    return paths, spec_path, defs, dg.DagsterInstance.from_config(str(paths.dagster_home)), files


def _tick(defs, instance, name, cursor=None):
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor,
                                      definitions=defs, resources=defs.resources)
    return defs.resolve_sensor_def(name).evaluate_tick(context)


def test_batches_drift_quarantine_performance_and_retraining(world, capsys):
    paths, spec_path, defs, instance, files = world
    store = BatchStore(paths)
    assert cli.main(["--home", str(paths.home), "register-batch", str(files["calm"]), "--dataset", DATASET]) == 0
    for name in ("inflated", "broken", "emptied"):
        store.register(DATASET, files[name])

    inbox = _tick(defs, instance, "batch_inbox_sensor")
    keys = {r.partition_key.split("__")[1].split("-")[0]: r.partition_key for r in inbox.run_requests}
    assert set(keys) == {"calm", "inflated", "broken", "emptied"}
    assert {r.tags[DATASET_TAG] for r in inbox.run_requests} == {str(spec_path.resolve())}
    assert set(inbox.dynamic_partitions_requests[0].partition_keys) == set(keys.values())
    assert _tick(defs, instance, "batch_inbox_sensor", inbox.cursor).run_requests == []  # asked once
    for request in inbox.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    results = {name: defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance, partition_key=key, tags={DATASET_TAG: str(spec_path)}, raise_on_error=False)
        for name, key in keys.items()}
    assert store.pending(DATASET) == []

    # The broken batch: the blocking check fails, the batch is quarantined with the reason, nothing downstream.
    assert not results["broken"].success
    check = [e for e in results["broken"].get_asset_check_evaluations() if e.check_name == "data_batch_expectations"]
    assert len(check) == 1 and not check[0].passed
    batch_id = keys["broken"].split("__")[1]
    reason = json.loads((store.quarantine_dir(DATASET, batch_id) / "reason.json").read_text())
    assert "Price" in reason["reason"] and not store.batch_dir(DATASET, batch_id).exists()
    for asset in ("batch_drift_report", "batch_performance"):
        assert not results["broken"].asset_materializations_for_node(asset)
    # A batch whose missingness departs from the training baseline: quarantined naming the column.
    assert not results["emptied"].success
    emptied_id = keys["emptied"].split("__")[1]
    reason = json.loads((store.quarantine_dir(DATASET, emptied_id) / "reason.json").read_text())["reason"]
    assert reason.startswith("expect_column_proportion_of_non_null_values_to_be_between(Income): observed 0.")
    assert "expected a non-null share between" in reason and "training rows: 0.9" in reason

    # The calm batch drifts too little to act on; the inflated one triggers a retraining request.
    calm, inflated = (results[n].output_for_node("batch_drift_report") for n in ("calm", "inflated"))
    assert results["calm"].success and not calm["retrain"] and calm["scored_by"] == "production 1.0.0 (serving bundle)"
    assert results["inflated"].success and inflated["retrain"]
    assert set(INFLATED) <= set(inflated["drifted_columns"]) and inflated["target"] is None
    assert (paths.monitoring_dir(DATASET) / "drift" / keys["inflated"].split("__")[1] / "data_drift.html").is_file()
    drift = _tick(defs, instance, "drift_retraining_sensor")
    assert [r.run_key for r in drift.run_requests] == [f"drift:{keys['inflated']}"]
    request = drift.run_requests[0]
    assert request.tags[TRIGGER_TAG] == "drift" and "feature columns drifted" in \
        request.run_config["ops"]["retrain"]["config"]["reason"]
    assert _tick(defs, instance, "drift_retraining_sensor", drift.cursor).run_requests == []

    # Labelled batches are scored against their labels: a point per batch the UI plots.
    performance = results["calm"].asset_materializations_for_node("batch_performance")[0].metadata
    assert 0.5 < performance["ensemble_accuracy"].value <= 1 and "accuracy_xgboost" in performance
    assert results["inflated"].output_for_node("batch_performance") == {"labelled": False}
    assert (paths.monitoring_dir(DATASET) / "performance.html").is_file()

    # The requested retraining: the whole graph with the labelled batch, a new candidate, production unchanged.
    before = ConfigStore(paths.configs_dir(DATASET)).latest()
    result = defs.resolve_job_def("retraining_job").execute_in_process(
        instance=instance, run_config=request.run_config, tags=request.tags)
    assert result.success
    summary = result.output_for_node("retrain")
    after = ConfigStore(paths.configs_dir(DATASET)).latest()
    assert summary["changed"] and summary["ensemble_version"] == after.version != before.version
    assert bump_kind(before, after) in ("minor", "major")  # new member versions (new data), maybe a new strategy
    lineage = json.loads((paths.version_reports_dir(DATASET, after.version) / "validation.json").read_text())["lineage"]
    assert lineage["train_rows"] + lineage["holdout_rows"] == 600 + 150  # the slice plus the calm batch's rows
    registry = Release(paths).registry
    assert registry.stage_state(DATASET).stage_of(after.registered_version) == "candidate"
    assert registry.aliases(f"{DATASET}.ensemble")["production"] == before.registered_version


def test_the_retraining_schedule_requests_the_retraining_job(world):
    _, spec_path, defs, instance, _ = world
    schedule = defs.resolve_schedule_def(f"retrain_{DATASET}")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == "retraining_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # automation is off in tests
    tick = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert len(tick.run_requests) == 1
    assert tick.run_requests[0].tags[DATASET_TAG] == str(spec_path.resolve())
    assert tick.run_requests[0].tags[TRIGGER_TAG] == "schedule"
    for sensor in defs.sensors:
        assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_cli_takes_a_batch_in_at_once_and_retrains(world, credit_slice, tmp_path, capsys):
    paths, _, _, _, _ = world
    full = read_source(load_spec())
    week = full[~full["rownames"].isin(credit_slice["rownames"])].sample(120, random_state=7)
    week.to_csv(tmp_path / "week.csv", index=False)
    home = ["--home", str(paths.home)]
    assert cli.main([*home, "register-batch", str(tmp_path / "week.csv"), "--dataset", DATASET, "--process"]) == 0
    out = capsys.readouterr().out
    assert "accepted; scored by production 1.0.0" in out and "labelled rows: 120" in out
    before = ConfigStore(paths.configs_dir(DATASET)).latest().version
    assert cli.main([*home, "retrain", "--dataset", DATASET]) == 0
    after = ConfigStore(paths.configs_dir(DATASET)).latest().version
    assert after != before and f"new candidate {after}" in capsys.readouterr().out
    broken = week.drop(columns=["Income"])
    broken.to_csv(tmp_path / "broken_week.csv", index=False)
    assert cli.main([*home, "register-batch", str(tmp_path / "broken_week.csv"), "--dataset", DATASET,
                     "--process"]) == 2
    assert "quarantined" in capsys.readouterr().out
