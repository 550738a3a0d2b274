"""Monitoring stage: each new data batch is a partition (`<dataset>__<batch id>`) of `data_batch`,
validated by the training suite (a failing batch is quarantined with the reason and nothing
downstream runs), compared with the training reference for drift, and, when it carries labels,
scored against them."""

import json
import warnings

import dagster as dg
import numpy as np
import pandas as pd

from ensemble_platform.data.batches import ACCEPTED, BatchStore, read_batch, split_partition_key
from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.data.labels import label_text
from ensemble_platform.data.reference import TrainingReference
from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.data.validation import validate_table
from ensemble_platform.defs.owners import owners
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.errors import DataError
from ensemble_platform.evaluation.batch_performance import batch_performance as performance_of
from ensemble_platform.evaluation.drift import DriftInputs, drift_report, retraining_decision
from ensemble_platform.files import write_json
from ensemble_platform.governance.approvals import utc_now
from ensemble_platform.governance.monitoring import PerformanceHistory
from ensemble_platform.governance.release import Release
from ensemble_platform.governance.rendering import md_table
from ensemble_platform.serving.parity import ParitySet

GROUP = "monitoring"
batch_partitions = dg.DynamicPartitionsDefinition(name="data_batch")
# Partitioned asset checks are a Dagster preview; they are what makes the check per batch.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def _batch(partition: str, platform: PlatformResource) -> tuple[DatasetSpec, str]:
    dataset, batch_id = split_partition_key(partition)
    return DatasetCatalog(platform.paths).spec(dataset), batch_id


def _labelled(table: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    return table[table[spec.target].notna()] if spec.target in table.columns else table.iloc[0:0]


@dg.asset(group_name=GROUP, owners=owners(GROUP), partitions_def=batch_partitions, kinds={"pandas"})
def data_batch(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.Output[pd.DataFrame]:
    """The batch file, moved from the dataset's inbox into its batch folder."""
    spec, batch_id = _batch(context.partition_key, platform)
    store = BatchStore(platform.paths)
    source = store.receive(spec.name, batch_id)
    try:
        table = read_batch(source, TrainingReference.datetime_columns(platform.paths, spec.name))
    except DataError as exc:
        store.quarantine(spec.name, batch_id, {"batch_id": batch_id, "reason": str(exc), "quarantined_at": utc_now()})
        raise
    labelled = len(_labelled(table, spec))
    context.log.info(f"batch {batch_id} of {spec.name}: {len(table)} rows, {labelled} labelled")
    return dg.Output(table, metadata={"dataset": spec.name, "batch_id": batch_id, "rows": len(table),
                                      "labelled_rows": labelled, "source": dg.MetadataValue.path(str(source))})


@dg.asset_check(asset=data_batch, blocking=True, partitions_def=batch_partitions,
                description="The training suite (Great Expectations) on the batch; a failing batch is quarantined")
def data_batch_expectations(
    context: dg.AssetCheckExecutionContext, data_batch: pd.DataFrame, platform: PlatformResource
) -> dg.AssetCheckResult:
    spec, batch_id = _batch(context.partition_key, platform)
    reference = TrainingReference.read(platform.paths, spec.name)
    labels = sorted({str(label_text(v)) for v in reference.rows[spec.target].unique()})
    result = validate_table(data_batch, spec, reference.schema, suite_name=f"{spec.name}_batch", labels=labels)
    store = BatchStore(platform.paths)
    facts = {"batch_id": batch_id, "rows": len(data_batch), "labelled_rows": len(_labelled(data_batch, spec)),
             "validation": result.to_dict()}
    if result.success:
        where = store.accept(spec.name, batch_id, {**facts, "received_at": utc_now()})
    else:
        where = store.quarantine(spec.name, batch_id, {**facts, "reason": result.failure_summary(),
                                                       "quarantined_at": utc_now()})
        context.log.warning(f"batch {batch_id} of {spec.name} quarantined: {result.failure_summary()}")
    return dg.AssetCheckResult(
        passed=result.success,
        description=None if result.success else f"quarantined: {result.failure_summary()}",
        metadata={"evaluated_expectations": result.evaluated, "successful_expectations": result.successful,
                  "verdict": "accepted" if result.success else "quarantined",
                  "record": dg.MetadataValue.path(str(where))},
    )


@dg.asset(group_name=GROUP, owners=owners(GROUP), partitions_def=batch_partitions, kinds={"evidently"})
def batch_drift_report(
    context: dg.AssetExecutionContext, data_batch: pd.DataFrame, platform: PlatformResource
) -> dg.Output[dict]:
    """Evidently drift of the batch against the training reference (every feature column, and the
    labels when the batch has them) and of the serving ensemble's probabilities against those it
    gave its validation holdout; whether it is drift enough to retrain under the spec's
    `automation.drift` policy."""
    spec, batch_id = _batch(context.partition_key, platform)
    reference = TrainingReference.read(platform.paths, spec.name)
    runtime, scored_by = Release(platform.paths, platform.registry()).serving_runtime(spec.name)
    validated = ParitySet.read(platform.paths.parity_dir(spec.name, runtime.version)).scores["probability"]
    snapshots, summary = drift_report(DriftInputs(
        reference.rows, data_batch, reference.schema, spec.target, reference_prediction=validated,
        current_prediction=pd.Series(runtime.member_and_ensemble_proba(data_batch)[1]),
    ), spec.automation.drift)
    retrain, reasons = retraining_decision(summary, spec.automation.drift)
    summary |= {"dataset": spec.name, "batch_id": batch_id, "scored_by": scored_by, "retrain": retrain,
                "reasons": reasons}
    directory = platform.paths.monitoring_dir(spec.name) / "drift" / batch_id
    directory.mkdir(parents=True, exist_ok=True)
    for name, snapshot in snapshots.items():
        snapshot.save_html(str(directory / f"{name}_drift.html"))
        snapshot.save_json(str(directory / f"{name}_drift.json"))
    write_json(summary, directory / "summary.json")
    context.log.info(f"batch {batch_id}: {'retrain' if retrain else 'no retraining'}: {'; '.join(reasons)}")
    columns = md_table(["column", "method", "score", "threshold", "drifted"],
                       [[c, v["method"], v["score"], v["threshold"], v["drifted"]] for c, v in summary["columns"].items()])
    return dg.Output(summary, metadata={
        "retrain": retrain, "reasons": "; ".join(reasons), "scored_by": scored_by,
        "drifted_share": float(summary["drifted_share"]), "drifted_columns": summary["drifted_count"],
        "prediction_drift_score": float(summary["prediction"]["score"]) if summary["prediction"] else None,
        "target_drifted": bool(summary["target"]["drifted"]) if summary["target"] else False,
        "columns": dg.MetadataValue.md(columns),
        **{f"{name}_drift_report": dg.MetadataValue.path(str(directory / f"{name}_drift.html")) for name in snapshots},
        "summary_path": dg.MetadataValue.path(str(directory / "summary.json")),
    })


@dg.asset(group_name=GROUP, owners=owners(GROUP), partitions_def=batch_partitions, kinds={"pandas"})
def batch_performance(
    context: dg.AssetExecutionContext, data_batch: pd.DataFrame, platform: PlatformResource
) -> dg.Output[dict]:
    """Accuracy, AUC, log loss and Brier of the serving ensemble and each member on the batch's
    labelled rows, one point per batch: the UI plots these numbers across batches, and
    `reports/<dataset>/monitoring/performance.html` draws the history."""
    spec, batch_id = _batch(context.partition_key, platform)
    rows = _labelled(data_batch, spec)
    if rows.empty:
        return dg.Output({"labelled": False}, metadata={"labelled": False})
    runtime, scored_by = Release(platform.paths, platform.registry()).serving_runtime(spec.name)
    P, ensemble = runtime.member_and_ensemble_proba(rows)
    y = (rows[spec.target].map(label_text) == spec.positive_label).to_numpy(dtype=int)
    performance = performance_of(y, ensemble, {n: P[:, j] for j, n in enumerate(runtime.members)},
                                 runtime.decision_threshold)
    history = PerformanceHistory(platform.paths, spec.name)
    accepted = BatchStore(platform.paths).batch_dir(spec.name, batch_id) / ACCEPTED
    received = json.loads(accepted.read_text())["received_at"] if accepted.is_file() else utc_now()
    history.record({"batch_id": batch_id, "received_at": received, "scored_by": scored_by,
                    "performance": performance})
    paths = history.publish()
    ensemble_metrics = performance["ensemble"]
    return dg.Output({"labelled": True, "scored_by": scored_by, "performance": performance}, metadata={
        "labelled": True, "rows": ensemble_metrics["rows"], "scored_by": scored_by,
        **{f"ensemble_{k}": float(v) for k, v in ensemble_metrics.items() if k != "rows" and v is not None},
        **{f"accuracy_{name}": float(m["accuracy"]) for name, m in performance.items() if name != "ensemble"},
        "history": dg.MetadataValue.path(str(paths["html"])),
        "best_member_accuracy": float(np.max([m["accuracy"] for n, m in performance.items() if n != "ensemble"])),
    })
