"""Resources: where the platform home is, which dataset a run works on, and where asset values
are stored.

One code location serves every dataset: a run tagged `ensemble_platform/dataset_spec` (set by
sensors and schedules, or by hand at launch) works on that spec; an untagged run uses the
configured spec. Asset values are stored per dataset, so datasets never overwrite each other.
"""

import dagster as dg
from pydantic import PrivateAttr

from ensemble_platform.data.spec import DatasetSpec, load_spec, peek_dataset_name
from ensemble_platform.governance.registry import Registry
from ensemble_platform.settings import DATASET_TAG, PlatformPaths


def _run_spec_path(context: dg.InitResourceContext, configured: str | None) -> str | None:
    run = context.dagster_run
    return (run.tags.get(DATASET_TAG) if run is not None else None) or configured


class PlatformResource(dg.ConfigurableResource):
    """`home`: platform home (default `$ENSEMBLE_PLATFORM_HOME` or `./.ensemble_platform`).
    `dataset_spec`: path of the dataset spec YAML (default `$ENSEMBLE_PLATFORM_DATASET` or the
    bundled credit_data spec); a run's `ensemble_platform/dataset_spec` tag takes precedence."""

    home: str | None = None
    dataset_spec: str | None = None
    _run_spec: str | None = PrivateAttr(default=None)
    _registry: Registry | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_spec = _run_spec_path(context, self.dataset_spec)

    @property
    def paths(self) -> PlatformPaths:
        return PlatformPaths.from_env(self.home)

    def spec(self) -> DatasetSpec:
        return load_spec(self._run_spec or self.dataset_spec)

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.paths)
        return self._registry


class DatasetStorage(dg.ConfigurableIOManagerFactory):
    """Pickled asset values under `<home>/dagster/storage/<dataset>/` for the run's dataset."""

    home: str | None = None
    dataset_spec: str | None = None

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        dataset = peek_dataset_name(_run_spec_path(context, self.dataset_spec))
        base = PlatformPaths.from_env(self.home).asset_storage(dataset)
        return dg.FilesystemIOManager(base_dir=str(base)).create_io_manager(context)
