"""The decision log in Dagster: one `decision_log_daily` partition per UTC day and dataset, summarising
that day of the dataset's decisions (`decisions.daily`) into `reports/<dataset>/monitoring/decisions/<day>/`
(HTML, JSON, Markdown), with numeric metadata the UI plots across partitions, and the `decision_alerts`
check, failing when the day crosses the dataset's `operations:` policy. The day in progress is a partition
too (refreshed by the agreement-drop sensor). Dataset partitions are added by the sensor for every dataset
in the catalogue (or by hand in the UI)."""

import warnings
from datetime import UTC, date, datetime

import dagster as dg

from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.defs.owners import owners
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.governance.decision_report import publish_decision_report
from ensemble_platform.governance.rendering import md_table

GROUP = "monitoring"
START_DATE = "2025-01-01"
DATE, DATASET = "date", "dataset"
CHECK = "decision_alerts"
dataset_partitions = dg.DynamicPartitionsDefinition(name="decision_log_dataset")
decision_log_partitions = dg.MultiPartitionsDefinition({
    # end_offset=1: today's partition exists while the day is in progress (its summary says so).
    DATE: dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC", end_offset=1),
    DATASET: dataset_partitions,
})
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def partition_key(dataset: str, day: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({DATE: day, DATASET: dataset})


@dg.asset(
    group_name=GROUP, owners=owners(GROUP), partitions_def=decision_log_partitions, kinds={"sqlite"},
    check_specs=[dg.AssetCheckSpec(CHECK, asset="decision_log_daily",
                                   description="The day is within the dataset's operations policy: agreement not "
                                               "below the validated baseline by more than agreement_drop, fallback "
                                               "and refusal rates and review-SLA breaches within their limits")],
)
def decision_log_daily(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    """One day of one dataset's decision log: volume, agreement against the validated baseline, review rate
    and SLA, degraded / fallback / refusal rates, member error rates, segments most sent to review."""
    keys = context.partition_key.keys_by_dimension
    dataset, day = keys[DATASET], date.fromisoformat(keys[DATE])
    spec = DatasetCatalog(platform.paths).spec(dataset)
    summary, paths = publish_decision_report(platform.paths, dataset, day, spec.operations, datetime.now(UTC))
    for alert in summary.alerts:
        context.log.warning(f"{dataset} {day}: {alert.message}")
    metadata = {
        **{name: (dg.MetadataValue.int(value) if isinstance(value, int) else dg.MetadataValue.float(float(value)))
           for name, value in summary.headline().items()},
        **{f"agreement_mean_{v.ensemble_version}": dg.MetadataValue.float(v.mean)
           for v in summary.agreement if v.mean is not None},
        "complete_day": summary.complete,
        "judged": summary.judged,
        "versions": ", ".join(v.ensemble_version for v in summary.agreement) or "none",
        "top_segments": dg.MetadataValue.md(md_table(
            ["segment", "review items", "review rate"],
            [[s.segment, s.review_items, s.review_rate] for s in summary.top_segments])),
        "report": dg.MetadataValue.path(str(paths["html"])),
        "summary_path": dg.MetadataValue.path(str(paths["json"])),
    }
    check = dg.AssetCheckResult(
        check_name=CHECK, passed=not summary.alerts,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(a.message for a in summary.alerts) or (
            "within policy" if summary.judged else "not judged: fewer decisions than min_daily_decisions"),
        metadata={"alerts": len(summary.alerts), "kinds": ", ".join(a.key for a in summary.alerts) or "none"},
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


decision_log_job = dg.define_asset_job(
    "decision_log_job", selection=dg.AssetSelection.assets(decision_log_daily),
    partitions_def=decision_log_partitions,
    description="Summarise one day of one dataset's decision log (a date|dataset partition) and check it "
                "against the dataset's operations policy.",
)
