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
        if _read_entry(path) != entry:
            write_json(entry, path)

    def entries(self) -> dict[str, Path]:
        """Dataset name -> spec path, in name order. Files that are not an entry are left out
        (`problems` names them): one bad file under the home must not hide every dataset from the
        sensors, schedules and commands."""
        return self._scan()[0]

    def problems(self) -> dict[Path, str]:
        """Catalogue files that are not an entry -> why."""
        return self._scan()[1]

    def spec(self, name: str) -> DatasetSpec:
        entries, problems = self._scan()
        if name not in entries:
            unreadable = "".join(f"; {path} is not a catalogue entry ({why})" for path, why in problems.items())
            raise DatasetSpecError(f"dataset {name!r} is not in the catalogue {self.directory} "
                                   f"(known: {sorted(entries) or 'none'}); run its graph once first{unreadable}")
        return load_spec(entries[name])

    def _scan(self) -> tuple[dict[str, Path], dict[Path, str]]:
        entries: dict[str, Path] = {}
        problems: dict[Path, str] = {}
        if not self.directory.is_dir():
            return entries, problems
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = _read_entry(path)
            except DatasetSpecError as exc:
                problems[path] = str(exc)
                continue
            if entry is not None:
                entries.setdefault(entry["name"], Path(entry["spec_path"]))
        return dict(sorted(entries.items())), problems


def _read_entry(path: Path) -> dict[str, str] | None:
    """The entry in `path` ({"name", "spec_path"}, both text), None when there is no file; raises
    `DatasetSpecError` saying what is wrong with one that is not an entry."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DatasetSpecError(f"unreadable: {exc}") from exc
    if (not isinstance(entry, dict) or set(entry) != {"name", "spec_path"}
            or not all(isinstance(v, str) and v for v in entry.values())):
        raise DatasetSpecError('expected {"name": "<dataset>", "spec_path": "<spec file>"}')
    return entry
