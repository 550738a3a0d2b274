"""Resources: where the platform home is, which dataset a run works on, and where asset values
are stored.

One code location serves every dataset: a run tagged `ensemble_platform/dataset_spec` (set by
sensors and schedules, or by hand at launch) works on that spec; an untagged run uses the
configured spec. Asset values are stored per dataset, so datasets never overwrite each other.
"""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr
from upath import UPath

from ensemble_platform.data.spec import DatasetSpec, load_spec, peek_dataset_name
from ensemble_platform.governance.registry import Registry
from ensemble_platform.integrity.keys import SigningKey, load_signing_key
from ensemble_platform.integrity.sealed_values import read_sealed, write_sealed
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


class SealedValueIOManager(dg.UPathIOManager):
    """Asset values as sealed pickles (`integrity.sealed_values`): Dagster's FilesystemIOManager
    unpickles whatever file it finds under the platform home, so a file dropped there would run
    code in the next run; this one unpickles only values whose MAC, keyed with the signing key
    (kept outside the home), verifies for that asset and dataset. Writes are atomic."""

    extension: str = ""

    def __init__(self, base_dir: Path, dataset: str, key: SigningKey):
        self.base_dir, self.dataset, self.key = Path(base_dir), dataset, key
        super().__init__(base_path=UPath(base_dir))

    def _label(self, path: UPath) -> str:
        """Where the value belongs: its dataset and its path under the dataset's storage."""
        return f"{self.dataset}/{Path(str(path)).relative_to(self.base_dir).as_posix()}"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        write_sealed(Path(str(path)), obj, self.key, self._label(path))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        return read_sealed(Path(str(path)), self.key, self._label(path))


class DatasetStorage(dg.ConfigurableIOManagerFactory):
    """Sealed asset values under `<home>/dagster/storage/<dataset>/` for the run's dataset."""

    home: str | None = None
    dataset_spec: str | None = None

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        dataset = peek_dataset_name(_run_spec_path(context, self.dataset_spec))
        paths = PlatformPaths.from_env(self.home)
        return SealedValueIOManager(paths.asset_storage(dataset), dataset, load_signing_key(paths))
