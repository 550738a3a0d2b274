"""Sensors: re-validate when a member model gets a new version; take in data batches from the
inboxes; retrain when a batch drifts past the dataset's thresholds; alert (and re-validate) when the
decision log's agreement drops below the validated baseline. What they decide is decided by the core
(`automation.member_watch`, `data.batches`, `evaluation.drift`, `automation.decision_alerts`); they only ask."""

import json
import warnings
from datetime import UTC, datetime

import dagster as dg

from ensemble_platform.automation.decision_alerts import DecisionAlerts, read_cursor
from ensemble_platform.automation.member_watch import MemberWatch
from ensemble_platform.data.batches import BatchStore, split_partition_key
from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.defs.assets.decision_log import dataset_partitions, decision_log_job, partition_key
from ensemble_platform.defs.assets.monitoring import batch_drift_report, batch_partitions
from ensemble_platform.defs.jobs import batch_job, revalidation_job
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.defs.retraining import retraining_job
from ensemble_platform.settings import DATASET_TAG, TRIGGER_TAG, automation_enabled

# Dagster 1.13's sensor decorator passes its beta `owners` parameter itself: not ours to act on.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)


def automation_status() -> dg.DefaultSensorStatus:
    """Running (the daemon of `make ui` evaluates them) unless ENSEMBLE_PLATFORM_AUTOMATION=off."""
    return dg.DefaultSensorStatus.RUNNING if automation_enabled() else dg.DefaultSensorStatus.STOPPED


@dg.sensor(job=revalidation_job, minimum_interval_seconds=60, default_status=automation_status(),
           description="A member model got a version the dataset's current ensemble config does not use: "
                       "re-validate with it (new MINOR candidate). Never touches production.")
def member_version_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
    result = MemberWatch(platform.paths, platform.registry()).tick(json.loads(context.cursor or "{}"))
    for reason in result.skipped:
        context.log.warning(reason)
    requests = [
        dg.RunRequest(
            run_key=request.run_key,
            run_config={"ops": {"oof_predictions": {"config": {"member_versions": request.member_versions}}}},
            tags={DATASET_TAG: request.spec_path, TRIGGER_TAG: "member_version",
                  "ensemble_platform/new_member_versions": json.dumps(request.new_versions, sort_keys=True)},
        )
        for request in result.requests
    ]
    skip = None if requests else ("; ".join(result.skipped) or "no member version newer than the current configs")
    return dg.SensorResult(run_requests=requests, skip_reason=skip, cursor=json.dumps(result.cursor, sort_keys=True))


@dg.sensor(job=batch_job, minimum_interval_seconds=30, default_status=automation_status(),
           description="A batch file landed in inbox/<dataset>/: add it as a data_batch partition and take it in.")
def batch_inbox_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
    requested = set(json.loads(context.cursor or "[]"))
    store, catalog = BatchStore(platform.paths), DatasetCatalog(platform.paths).entries()
    for dataset in catalog:
        for folder in store.reject_unusable(dataset):
            context.log.warning(f"{dataset}: an inbox file that can never be a batch was quarantined: {folder}")
    arrivals = [a for dataset in catalog for a in store.pending(dataset)]
    new = [a for a in arrivals if a.key not in requested]
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    unknown = sorted({a.key for a in new} - known)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=a.key, run_key=f"batch:{a.key}",
                                    tags={DATASET_TAG: str(catalog[a.dataset]), TRIGGER_TAG: "batch"}) for a in new],
        dynamic_partitions_requests=[batch_partitions.build_add_request(unknown)] if unknown else [],
        # Remember only what still waits in an inbox: the cursor does not grow with history.
        cursor=json.dumps(sorted({a.key for a in arrivals})),
        skip_reason=None if new else "no new batch files in the inboxes",
    )


@dg.sensor(job=retraining_job, minimum_interval_seconds=60, default_status=automation_status(),
           description="A batch's drift crossed its dataset's automation.drift thresholds: retrain that dataset.")
def drift_retraining_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
    # Every drift report since the cursor, not only the latest (an asset sensor sees just the
    # newest event per tick, and a calm batch after a drifted one would hide it).
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=batch_drift_report.key, after_storage_id=after), limit=1000, ascending=True,
    ).records
    catalog = DatasetCatalog(platform.paths).entries()
    requests, calm = [], []
    for record in records:
        materialization = record.asset_materialization
        partition, metadata = materialization.partition, materialization.metadata
        reasons = metadata["reasons"].value if "reasons" in metadata else ""
        if not metadata["retrain"].value:
            calm.append(f"batch {partition}: {reasons}")
            continue
        dataset, batch_id = split_partition_key(partition)
        requests.append(dg.RunRequest(
            run_key=f"drift:{partition}",
            run_config={"ops": {"retrain": {"config": {"reason": f"drift in batch {batch_id}: {reasons}"}}}},
            tags={DATASET_TAG: str(catalog[dataset]), TRIGGER_TAG: "drift", "ensemble_platform/batch": batch_id},
        ))
    cursor = str(records[-1].storage_id) if records else context.cursor
    skip = None if requests else ("; ".join(calm) or "no new drift reports")
    return dg.SensorResult(run_requests=requests, cursor=cursor, skip_reason=skip)


@dg.sensor(jobs=[revalidation_job, decision_log_job], minimum_interval_seconds=600, default_status=automation_status(),
           description="A day of the decision log crossed its dataset's operations policy (mean agreement below "
                       "the validated baseline by more than agreement_drop, fallback rate, refusal rate, review-SLA "
                       "breaches): refresh that day's decision_log_daily so its check fails; on an agreement drop, "
                       "fallback or SLA breach also re-validate the dataset. Once per breach. Also materialises each "
                       "completed day once.")
def agreement_drop_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
    tick = DecisionAlerts(platform.paths).tick(read_cursor(context.cursor), datetime.now(UTC))
    for reason in tick.skipped:
        context.log.warning(reason)
    for breach in tick.breaches:
        context.log.warning(f"{breach.dataset} {breach.day}: {breach.alert.message}")
    requests = [
        dg.RunRequest(job_name=revalidation_job.name, run_key=request.run_key,
                      tags={DATASET_TAG: request.spec_path, TRIGGER_TAG: "decision_alert",
                            "ensemble_platform/decision_alerts": ",".join(f"{b.day}:{b.alert.key}"
                                                                          for b in request.breaches)})
        for request in tick.revalidations
    ] + [
        dg.RunRequest(job_name=decision_log_job.name, partition_key=partition_key(day.dataset, day.day),
                      run_key=day.run_key,
                      tags={DATASET_TAG: day.spec_path, TRIGGER_TAG: "decision_alert" if day.breaches else "daily"})
        for day in tick.days
    ]
    known = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    unknown = sorted(set(tick.datasets) - known)
    skip = None if requests else ("; ".join(tick.skipped) or "no new breach and no completed day to report")
    return dg.SensorResult(
        run_requests=requests, skip_reason=skip, cursor=json.dumps(tick.cursor, sort_keys=True),
        dynamic_partitions_requests=[dataset_partitions.build_add_request(unknown)] if unknown else [],
    )


SENSORS = [member_version_sensor, batch_inbox_sensor, drift_retraining_sensor, agreement_drop_sensor]
