"""The datasets the platform knows: every dataset whose graph has run in this platform home,
by name, with the spec file it was built from. Sensors and schedules iterate over it."""

from __future__ import annotations

import json
from pathlib import Path

from ensemble_platform.data.spec import DatasetSpec, load_spec
from ensemble_platform.errors import DatasetSpecError
from ensemble_platform.files import write_json
from ensemble_platform.settings import PlatformPaths


class DatasetCatalog:
    def __init__(self, paths: PlatformPaths):
        self.directory = paths.datasets_dir

    def register(self, spec: DatasetSpec) -> None:
        """Record (or update) where the spec of `spec.name` lives; specs built in code are not
        recorded (there is no file to launch runs from)."""
        if spec.spec_path is None:
            return
        path = self.directory / f"{spec.name}.json"
        entry = {"name": spec.name, "spec_path": str(spec.spec_path)}
        if not path.is_file() or json.loads(path.read_text()) != entry:
            write_json(entry, path)

    def entries(self) -> dict[str, Path]:
        """Dataset name -> spec path, in name order."""
        if not self.directory.is_dir():
            return {}
        entries = (json.loads(p.read_text()) for p in sorted(self.directory.glob("*.json")))
        return {e["name"]: Path(e["spec_path"]) for e in entries}

    def spec(self, name: str) -> DatasetSpec:
        entries = self.entries()
        if name not in entries:
            raise DatasetSpecError(f"dataset {name!r} is not in the catalogue {self.directory} "
                                   f"(known: {sorted(entries) or 'none'}); run its graph once first")
        return load_spec(entries[name])
