"""The Dagster code location: `defs` is what workspace.yaml and `dagster dev` load."""

from __future__ import annotations

import dagster as dg

from ensemble_platform.defs.assets import data, ensemble, members, monitoring, reports
from ensemble_platform.defs.jobs import JOBS
from ensemble_platform.defs.release import RELEASE_JOBS
from ensemble_platform.defs.retraining import retraining_job
from ensemble_platform.defs.resources import DatasetStorage, PlatformResource
from ensemble_platform.defs.schedules import retraining_schedules
from ensemble_platform.defs.sensors import SENSORS
from ensemble_platform.settings import PlatformPaths


def build_definitions(home: str | None = None, dataset_spec: str | None = None) -> dg.Definitions:
    paths = PlatformPaths.from_env(home)
    return dg.Definitions(
        assets=dg.load_assets_from_modules([data, members, ensemble, reports, monitoring]),
        asset_checks=dg.load_asset_checks_from_modules([data, monitoring]),
        jobs=[*JOBS, *RELEASE_JOBS, retraining_job],
        sensors=SENSORS,
        schedules=retraining_schedules(paths, dataset_spec),
        resources={
            "platform": PlatformResource(home=str(paths.home), dataset_spec=dataset_spec),
            # Asset values live under the platform home, one folder per dataset.
            "io_manager": DatasetStorage(home=str(paths.home), dataset_spec=dataset_spec),
        },
    )


defs = build_definitions()
