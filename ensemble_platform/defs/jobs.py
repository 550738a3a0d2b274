"""Jobs by stage. Members are partitioned, so a full refresh runs data, each member, ensemble,
then governance."""

import dagster as dg

data_job = dg.define_asset_job(
    "data_job", selection=dg.AssetSelection.groups("data"), description="Load, validate and split the dataset."
)
members_job = dg.define_asset_job(
    "members_job", selection=dg.AssetSelection.groups("members"),
    description="Train one member (a partition) and register a new MLflow version.",
)
ensemble_job = dg.define_asset_job(
    "ensemble_job", selection=dg.AssetSelection.groups("ensemble"),
    description="Combine members, choose a strategy on out-of-fold evidence, version and validate it.",
)
governance_job = dg.define_asset_job(
    "governance_job", selection=dg.AssetSelection.groups("governance"),
    description="Calibration, fairness and agreement reports and the model card of the current version.",
)
revalidation_job = dg.define_asset_job(
    "revalidation_job", selection=dg.AssetSelection.groups("ensemble", "governance"),
    description="Re-combine, re-validate and re-report with the members' stored fits or the registered "
                "versions named in ops.oof_predictions.config.member_versions (what the member-version "
                "sensor requests); ends with a new candidate.",
)
# The batch-partitioned assets only: the monitoring group also holds the decision-log assets (partitioned
# by day and dataset) and production performance, which a batch does not run.
BATCH_ASSETS = ("data_batch", "batch_drift_report", "batch_performance")
batch_job = dg.define_asset_job(
    "batch_job", selection=dg.AssetSelection.assets(*BATCH_ASSETS),
    description="Take in one data batch (a partition): validate it (quarantine on failure), report its drift, "
                "score it when it carries labels.",
)
JOBS = [data_job, members_job, ensemble_job, governance_job, revalidation_job, batch_job]
