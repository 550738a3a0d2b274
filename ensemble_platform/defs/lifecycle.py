"""The lifecycle's definitions: every asset and check, the stage and release jobs, and the
resources. The code location adds automation on top (`definitions.py`); the retraining op runs
the stage jobs from these same definitions without importing the code location."""

from __future__ import annotations

import dagster as dg

from ensemble_platform.defs.assets import (
    data,
    decision_log,
    ensemble,
    members,
    monitoring,
    production_performance,
    reports,
)
from ensemble_platform.defs.jobs import JOBS
from ensemble_platform.defs.release import RELEASE_JOBS
from ensemble_platform.defs.resources import DatasetStorage, PlatformResource
from ensemble_platform.settings import PlatformPaths


def lifecycle_definitions(home: str | None = None, dataset_spec: str | None = None) -> dg.Definitions:
    paths = PlatformPaths.from_env(home)
    return dg.Definitions(
        assets=dg.load_assets_from_modules([data, members, ensemble, reports, monitoring, production_performance,
                                            decision_log]),
        asset_checks=dg.load_asset_checks_from_modules([data, monitoring]),
        jobs=[*JOBS, *RELEASE_JOBS],
        resources={
            "platform": PlatformResource(home=str(paths.home), dataset_spec=dataset_spec),
            # Asset values live under the platform home, one folder per dataset.
            "io_manager": DatasetStorage(home=str(paths.home), dataset_spec=dataset_spec),
        },
    )
