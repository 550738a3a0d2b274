"""Release jobs: a reviewer's decision and a promotion, as Dagster jobs with run config (the same
operations as `ensemble-platform approve` / `promote`)."""

import dagster as dg

from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.governance.release import Release


class ApprovalConfig(dg.Config):
    """`dataset` defaults to the platform resource's dataset spec."""

    version: str
    reviewer: str
    decision: str  # approve | reject
    note: str
    waive: list[str] = []
    config_hash: str | None = None
    dataset: str | None = None


class PromotionConfig(dg.Config):
    version: str
    to: str  # staging | production
    requested_by: str | None = None
    dataset: str | None = None


def _release(platform: PlatformResource) -> Release:
    return Release(platform.paths, platform.registry())


@dg.op(description="Record a reviewer's approve/reject decision on an ensemble version")
def record_decision(context: dg.OpExecutionContext, config: ApprovalConfig, platform: PlatformResource) -> dict:
    dataset = config.dataset or platform.spec().name
    record = _release(platform).approve(dataset, config.version, config.reviewer, config.decision,  # type: ignore[arg-type]
                                        config.note, config.waive, config.config_hash)
    context.log.info(f"{dataset} {config.version}: {record.summary()}")
    context.add_output_metadata({"decision": record.decision, "reviewer": record.reviewer,
                                 "config_hash": record.config_hash, "waived": ", ".join(record.waived) or "none",
                                 "record_sha256": record.sha256 or ""})
    return record.model_dump(mode="json")


@dg.op(description="Promote an ensemble version to staging or production (exports the bundle)")
def promote_version(context: dg.OpExecutionContext, config: PromotionConfig, platform: PlatformResource) -> dict:
    dataset = config.dataset or platform.spec().name
    result = _release(platform).promote(dataset, config.version, config.to, config.requested_by)
    record = result.record
    context.log.info(f"{dataset} {config.version}: " + (f"{record.kind} to {config.to}" if record
                                                        else f"already in {config.to}, nothing changed"))
    context.add_output_metadata({"changed": result.changed, "stage": config.to,
                                 **({"bundle": dg.MetadataValue.path(result.bundle.path),
                                     "bundle_sha256": result.bundle.archive_sha256} if result.bundle else {})})
    return record.document(chain=True) if record else {}


@dg.job(description="Record a reviewer's decision (run config: ops.record_decision.config)")
def approval_job():
    record_decision()


@dg.job(description="Promote a version to staging or production (run config: ops.promote_version.config)")
def promotion_job():
    promote_version()


RELEASE_JOBS = [approval_job, promotion_job]
