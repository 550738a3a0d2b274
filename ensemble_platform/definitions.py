"""The Dagster code location: `defs` is what workspace.yaml and `dagster dev` load."""

from __future__ import annotations

import dagster as dg

from ensemble_platform.defs.lifecycle import lifecycle_definitions
from ensemble_platform.defs.retraining import retraining_job
from ensemble_platform.defs.schedules import retraining_schedules
from ensemble_platform.defs.sensors import SENSORS
from ensemble_platform.settings import PlatformPaths


def build_definitions(home: str | None = None, dataset_spec: str | None = None) -> dg.Definitions:
    automation = dg.Definitions(
        jobs=[retraining_job],
        sensors=SENSORS,
        schedules=retraining_schedules(PlatformPaths.from_env(home), dataset_spec),
    )
    return dg.Definitions.merge(lifecycle_definitions(home, dataset_spec), automation)


defs = build_definitions()
