"""The one resource every asset uses: where the platform home is and which dataset it serves."""

from __future__ import annotations


import dagster as dg
from pydantic import PrivateAttr

from ensemble_platform.data.spec import DatasetSpec, load_spec
from ensemble_platform.governance.registry import Registry
from ensemble_platform.settings import PlatformPaths


class PlatformResource(dg.ConfigurableResource):
    """`home`: platform home (default `$ENSEMBLE_PLATFORM_HOME` or `./.ensemble_platform`).
    `dataset_spec`: path of the dataset spec YAML (default `$ENSEMBLE_PLATFORM_DATASET` or the
    bundled credit_data spec)."""

    home: str | None = None
    dataset_spec: str | None = None
    _registry: Registry | None = PrivateAttr(default=None)

    @property
    def paths(self) -> PlatformPaths:
        return PlatformPaths.from_env(self.home)

    def spec(self) -> DatasetSpec:
        return load_spec(self.dataset_spec)

    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.paths)
        return self._registry
