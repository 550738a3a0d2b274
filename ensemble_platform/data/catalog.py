"""The datasets the platform knows: every dataset whose graph has run in this platform home,
by name, with the spec file it was built from. Sensors and schedules iterate over it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ensemble_platform.data.spec import DatasetSpec, load_spec
from ensemble_platform.errors import DatasetSpecError
from ensemble_platform.files import write_json
from ensemble_platform.integrity.documents import sign_document, verify_document
from ensemble_platform.integrity.keys import SigningKey, load_signing_key
from ensemble_platform.settings import PlatformPaths

_PURPOSE = b"ensemble_platform.catalogue.v1"
MAC = "mac"


class DatasetCatalog:
    """Entries are signed (HMAC under the signing key, kept outside the home): the catalogue names the spec
    whose policies (gates' thresholds, shadow requirement) governance reads, and the home is writable by
    people who hold no key. An entry that does not verify, or whose file name is not its dataset's, is
    left out and named (`problems`)."""

    def __init__(self, paths: PlatformPaths):
        self.directory = paths.datasets_dir
        self._paths = paths

    @functools.cached_property
    def _key(self) -> SigningKey:
        return load_signing_key(self._paths)

    def register(self, spec: DatasetSpec) -> None:
        """Record (or update) where the spec of `spec.name` lives; specs built in code are not
        recorded (there is no file to launch runs from)."""
        if spec.spec_path is None:
            return
        path = self.directory / f"{spec.name}.json"
        entry = {"name": spec.name, "spec_path": str(spec.spec_path)}
        signed = {**entry, MAC: sign_document(self._key, _PURPOSE, entry)}
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = None
        if current != signed:
            write_json(signed, path)

    def entries(self) -> dict[str, Path]:
        """Dataset name -> spec path, in name order. Files that are not an entry are left out
        (`problems` names them): one bad file under the home must not hide every dataset from the
        sensors, schedules and commands."""
        return self._scan()[0]

    def problems(self) -> dict[Path, str]:
        """Catalogue files that are not an entry -> why."""
        return self._scan()[1]

    def problems_text(self) -> str:
        """The problems as a suffix for a "not in the catalogue" message ('' when there are none)."""
        return "".join(f"; {path} is not a catalogue entry ({why})" for path, why in self.problems().items())

    def spec(self, name: str) -> DatasetSpec:
        entries = self.entries()
        if name not in entries:
            raise DatasetSpecError(f"dataset {name!r} is not in the catalogue {self.directory} "
                                   f"(known: {sorted(entries) or 'none'}); run its graph once first"
                                   f"{self.problems_text()}")
        return load_spec(entries[name])

    def _scan(self) -> tuple[dict[str, Path], dict[Path, str]]:
        entries: dict[str, Path] = {}
        problems: dict[Path, str] = {}
        if not self.directory.is_dir():
            return entries, problems
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = self._read_entry(path)
            except DatasetSpecError as exc:
                problems[path] = str(exc)
                continue
            if entry is not None:
                entries[entry["name"]] = Path(entry["spec_path"])
        return dict(sorted(entries.items())), problems

    def _read_entry(self, path: Path) -> dict[str, str] | None:
        """The entry in `path` ({"name", "spec_path"}, both text), None when there is no file; raises
        `DatasetSpecError` saying what is wrong with one that is not a signed entry of its dataset."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DatasetSpecError(f"unreadable: {exc}") from exc
        if (not isinstance(document, dict) or set(document) != {"name", "spec_path", MAC}
                or not all(isinstance(v, str) and v for v in document.values())):
            raise DatasetSpecError('expected {"name": "<dataset>", "spec_path": "<spec file>", "mac": "<hex>"}; '
                                   "run the dataset's graph (demo --dataset SPEC) to register it again")
        entry = {"name": document["name"], "spec_path": document["spec_path"]}
        if entry["name"] != path.stem:
            raise DatasetSpecError(f"names dataset {entry['name']!r}, not {path.stem!r} as its file name says")
        if not verify_document(self._key, _PURPOSE, entry, document[MAC]):
            raise DatasetSpecError("not signed with the platform's signing key (edited, or written before catalogue "
                                   "entries were signed); run the dataset's graph (demo --dataset SPEC) to register "
                                   "it again")
        return entry
