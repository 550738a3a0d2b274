"""Sensor tick benchmark: how long the member-version sensor takes per tick with many datasets.

A fresh temporary platform home gets N datasets (default 20), each with a catalogue entry, an
ensemble config using version 1 of 6 member models, and a validation report; the MLflow sqlite
registry gets the 6 x N registered member models (version entries with lineage tags, no model
files: a quiet tick only reads the registry). Then, through Dagster (`build_sensor_context` +
`evaluate_tick`, the daemon's own entry point):

- quiet ticks with N datasets (median of `--repeats`): what every minute costs;
- quiet ticks with 1 dataset: the baseline the ratio is taken against (same run, same machine);
- one registry query of every model version (`search_model_versions("")`): the floor;
- a tick that finds one new member version (a real, loadable scikit-learn model registered with
  the right lineage): the cost of examining a new version (load + lineage checks);
- the batch-inbox and drift sensors' quiet ticks with N datasets.

Usage: .venv/bin/python bench/bench_sensors.py [--datasets 20] [--repeats 10] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lifecycle import _cpu_model, _median, _versions

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sensors.json"
MEMBERS = ("logistic_regression", "random_forest", "extra_trees", "hist_gradient_boosting", "xgboost",
           "k_nearest_neighbours")
TRAIN_HASH = "ab" * 32
TARGET_SECONDS = 2.0


def populate(home: Path, datasets: int) -> list[str]:
    """Catalogue entries, configs, validation reports and registry entries for `datasets` datasets."""
    import yaml

    from ensemble_platform.data.catalog import DatasetCatalog
    from ensemble_platform.data.spec import load_spec
    from ensemble_platform.ensemble.config import ConfigStore, EnsembleConfig, MemberRef
    from ensemble_platform.files import write_json
    from ensemble_platform.governance.registry import Registry
    from ensemble_platform.settings import PlatformPaths

    paths = PlatformPaths.from_env(home).ensure()
    registry = Registry(paths)
    names = [f"bench_{i:02d}" for i in range(datasets)]
    for name in names:
        spec_path = home / "specs" / f"{name}.yaml"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(yaml.safe_dump({"name": name, "source": "data.csv", "target": "y", "positive_label": "1"}))
        DatasetCatalog(paths).register(load_spec(spec_path))
        refs = []
        for member in MEMBERS:
            model = f"{name}.{member}"
            registry.client.create_registered_model(model)
            registry.client.create_model_version(model, source=f"file:///nowhere/{model}",
                                                 tags={"ensemble_platform.train_hash": TRAIN_HASH})
            refs.append(MemberRef(name=member, family="f", registered_model=model, version="1", run_id="r"))
        config = EnsembleConfig(dataset=name, version="1.0.0", strategy="weighted_average", members=tuple(refs))
        ConfigStore(paths.configs_dir(name)).save(config)
        write_json({"config_hash": config.config_hash, "lineage": {"train_hash": TRAIN_HASH}},
                   paths.version_reports_dir(name, "1.0.0") / "validation.json")
    return names


def register_real_member(home: Path, dataset: str) -> None:
    """A loadable model as version 2 of one member, with the lineage the sensor requires."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from ensemble_platform.settings import PlatformPaths

    paths = PlatformPaths.from_env(home)
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    mlflow.set_registry_uri(paths.mlflow_tracking_uri)
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))
    experiment = mlflow.create_experiment("bench", artifact_location=(home / "bench_artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle")
    mlflow.register_model(info.model_uri, f"{dataset}.logistic_regression",
                          tags={"ensemble_platform.train_hash": TRAIN_HASH})


def time_ticks(home: Path, sensor: str, repeats: int, expect_requests: int = 0) -> list[float]:
    import dagster as dg

    from ensemble_platform.definitions import build_definitions

    defs = build_definitions(str(home), None)
    instance = dg.DagsterInstance.ephemeral()
    definition = defs.resolve_sensor_def(sensor)
    seconds, cursor = [], None
    for _ in range(repeats):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
        started = time.perf_counter()
        result = definition.evaluate_tick(context)
        seconds.append(time.perf_counter() - started)
        # A tick that asked for nothing it should (or missed what it should ask) measures nothing.
        assert len(result.run_requests) == (expect_requests if cursor is None else 0), result.skip_message
        cursor = result.cursor
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    os.environ["ENSEMBLE_PLATFORM_AUTOMATION"] = "off"
    os.environ.pop("ENSEMBLE_PLATFORM_DATASET", None)
    root = Path(tempfile.mkdtemp(prefix="ep_bench_sensors_"))
    try:
        many, one = root / "many", root / "one"
        started = time.perf_counter()
        names = populate(many, args.datasets)
        populate(one, 1)
        setup = time.perf_counter() - started
        quiet_many = time_ticks(many, "member_version_sensor", args.repeats)
        quiet_one = time_ticks(one, "member_version_sensor", args.repeats)
        from ensemble_platform.governance.registry import Registry
        from ensemble_platform.settings import PlatformPaths

        registry = Registry(PlatformPaths.from_env(many))
        floor = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            registry.client.search_model_versions("")
            floor.append(time.perf_counter() - t)
        inbox = time_ticks(many, "batch_inbox_sensor", args.repeats)
        drift = time_ticks(many, "drift_retraining_sensor", args.repeats)
        register_real_member(many, names[0])
        new_version = time_ticks(many, "member_version_sensor", 1, expect_requests=1)[0]
        doc = {
            "date": _dt.date.today().isoformat(), "cpu": _cpu_model(), "cores": os.cpu_count(), "versions": _versions(),
            "datasets": args.datasets, "members_per_dataset": len(MEMBERS), "repeats": args.repeats,
            "setup_seconds": setup,
            "member_sensor_quiet_tick_seconds": _median(quiet_many),
            "member_sensor_quiet_tick_seconds_max": max(quiet_many),
            "member_sensor_quiet_tick_one_dataset_seconds": _median(quiet_one),
            "registry_query_all_versions_seconds": _median(floor),
            "member_sensor_tick_with_one_new_version_seconds": new_version,
            "batch_inbox_sensor_quiet_tick_seconds": _median(inbox),
            "drift_sensor_quiet_tick_seconds": _median(drift),
            "ratio_many_over_one_dataset": _median(quiet_many) / _median(quiet_one),
            "target_seconds": TARGET_SECONDS,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        n = args.datasets
        print(f"| tick (median of {args.repeats}, through Dagster's evaluate_tick) | seconds |")
        print("|---|---:|")
        print(f"| member-version sensor, {n} datasets x 6 members, nothing new | {doc['member_sensor_quiet_tick_seconds']:.3f} "
              f"(max {doc['member_sensor_quiet_tick_seconds_max']:.3f}) |")
        print(f"| member-version sensor, 1 dataset x 6 members, nothing new (baseline) | "
              f"{doc['member_sensor_quiet_tick_one_dataset_seconds']:.3f} |")
        print(f"| one registry query of all {n * 6} model versions (floor) | {doc['registry_query_all_versions_seconds']:.3f} |")
        print(f"| member-version sensor, {n} datasets, one new version examined (load + lineage) | {new_version:.3f} |")
        print(f"| batch-inbox sensor, {n} datasets, empty inboxes | {doc['batch_inbox_sensor_quiet_tick_seconds']:.3f} |")
        print(f"| drift sensor, no new drift reports | {doc['drift_sensor_quiet_tick_seconds']:.3f} |")
        print(f"\n{n} datasets / 1 dataset: {doc['ratio_many_over_one_dataset']:.2f}x; target: under {TARGET_SECONDS:.0f} s; "
              f"written {out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
