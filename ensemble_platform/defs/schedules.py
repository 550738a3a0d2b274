"""One retraining schedule per dataset the platform knows (its spec's `automation.retrain_cron`,
default weekly), each running `retraining_job` for that dataset."""

import re

import dagster as dg

from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.data.spec import DatasetSpec, load_spec
from ensemble_platform.defs.retraining import retraining_job
from ensemble_platform.errors import DatasetSpecError
from ensemble_platform.settings import DATASET_TAG, TRIGGER_TAG, PlatformPaths, automation_enabled


def _known_specs(paths: PlatformPaths, configured: str | None) -> list[DatasetSpec]:
    specs: dict[str, DatasetSpec] = {}
    for source in [configured, *map(str, DatasetCatalog(paths).entries().values())]:
        try:
            spec = load_spec(source)
        except DatasetSpecError:
            continue  # a broken spec fails loudly when its graph runs, not when the UI loads
        specs.setdefault(spec.name, spec)
    return [specs[name] for name in sorted(specs)]


def retraining_schedules(paths: PlatformPaths, configured: str | None) -> list[dg.ScheduleDefinition]:
    status = dg.DefaultScheduleStatus.RUNNING if automation_enabled() else dg.DefaultScheduleStatus.STOPPED
    return [
        dg.ScheduleDefinition(
            name="retrain_" + re.sub(r"[^A-Za-z0-9_]", "_", spec.name),
            cron_schedule=spec.automation.retrain_cron,
            execution_timezone=spec.automation.timezone,
            job=retraining_job,
            run_config={"ops": {"retrain": {"config": {"reason": f"schedule {spec.automation.retrain_cron}"}}}},
            tags={TRIGGER_TAG: "schedule", **({DATASET_TAG: str(spec.spec_path)} if spec.spec_path else {})},
            default_status=status,
            description=f"Retrain {spec.name} end to end ({spec.automation.retrain_cron}, {spec.automation.timezone}); "
                        "ends with a new candidate.",
        )
        for spec in _known_specs(paths, configured) if spec.automation.retrain_cron
    ]
