"""The Dagster instance settings: the platform's own, never a file under the platform home.

Those settings are code, not data: `python_logs.dagster_handler_config` goes to Python's
`logging.config.dictConfig`, whose `()` keys call any importable callable; `secrets` loaders put a
file's variables into the environment (the signing key's variable among them); every
`module`/`class` pair is imported and instantiated; storage settings can send `{env: ...}` values
to a host of their choosing. A file in the home is writable by the threat model's attacker
(README, "Security"). So:

* the CLI builds its instance from `PLATFORM_SETTINGS` (the repository's dagster.yaml; a test keeps
  the two equal), with storage in the home: the home's file is never read (`cli._instance`);
* `make ui` starts `dagster dev` (webserver, daemon, code server: each reads `$DAGSTER_HOME/dagster.yaml`
  itself) with DAGSTER_HOME a directory OUTSIDE the home, written just before by
  `python -m ensemble_platform.instance_settings ui DIR`: the platform's settings plus storage,
  artefact and compute-log directories naming the home's `dagster/` (`ui_settings`), so the UI
  shows the runs the CLI made and no process reads a settings file the attacker can write;
* `python -m ensemble_platform.instance_settings FILE` checks a file against the platform's settings,
  naming what differs (for an operator's review of a home's leftover file).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ensemble_platform.errors import PlatformError
from ensemble_platform.files import atomic_path
from ensemble_platform.settings import PlatformPaths

PLATFORM_SETTINGS = """\
# Dagster instance settings written by ensemble-platform (the same as the repository's dagster.yaml).
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 2
  pools:
    default_limit: 1
"""


class UnsafeInstanceSettings(PlatformError):
    """The instance settings file is not the platform's: it could make Dagster run code of its choosing."""


def platform_settings() -> dict[str, Any]:
    return yaml.safe_load(PLATFORM_SETTINGS)


def platform_settings_dir() -> tempfile.TemporaryDirectory:
    """A private directory (0700, outside the home) holding PLATFORM_SETTINGS as dagster.yaml, for
    Dagster's `InstanceRef.from_dir(config_dir=...)`; remove it once the instance is built."""
    directory = tempfile.TemporaryDirectory(prefix="ensemble-platform-dagster-settings-")
    (Path(directory.name) / "dagster.yaml").write_text(PLATFORM_SETTINGS)
    return directory


def problems(settings: Any) -> list[str]:
    """How these parsed settings differ from the platform's (empty when they are the same)."""
    expected = platform_settings()
    if not isinstance(settings, dict):
        return [f"expected a mapping of settings, found {type(settings).__name__}"]
    found = [f"{key}: not one of the platform's settings" for key in settings if key not in expected]
    found += [f"{key}: {settings[key]!r}, expected {expected[key]!r}" for key in expected
              if key in settings and settings[key] != expected[key]]
    found += [f"{key}: missing" for key in expected if key not in settings]
    return found


def check(path: Path) -> None:
    """UnsafeInstanceSettings naming `path` and each difference unless the file holds the platform's settings."""
    path = Path(path)
    try:
        settings = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UnsafeInstanceSettings(f"Dagster instance settings {path} cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise UnsafeInstanceSettings(f"Dagster instance settings {path} are not valid YAML: {exc}") from exc
    found = problems(settings)
    if found:
        raise UnsafeInstanceSettings(
            f"Dagster instance settings {path} refused: they are under the platform home and are not the platform's "
            "(settings can make Dagster run code): " + "; ".join(found)
            + ". Copy the repository's dagster.yaml over it, or use `make ui`, which keeps its settings outside the home")


def ui_settings(dagster_home: Path) -> str:
    """PLATFORM_SETTINGS with Dagster's sqlite storage, artefact and compute-log directories set to
    `dagster_home` (the home's `dagster/`), laid out as `InstanceRef.from_dir` lays out the CLI's
    instance there: a settings file kept elsewhere that opens the same storage."""
    base = str(Path(dagster_home).resolve())
    storage = {
        "storage": {"sqlite": {"base_dir": base}},
        "local_artifact_storage": {"module": "dagster._core.storage.root", "class": "LocalArtifactStorage",
                                   "config": {"base_dir": base}},
        "compute_logs": {"module": "dagster._core.storage.local_compute_log_manager",
                         "class": "LocalComputeLogManager", "config": {"base_dir": str(Path(base) / "storage")}},
    }
    return PLATFORM_SETTINGS + "# Storage in the platform home; these settings are kept outside it.\n" + yaml.safe_dump(
        storage, sort_keys=True)


def write_ui_instance(directory: Path, paths: PlatformPaths) -> Path:
    """`directory`/dagster.yaml = `ui_settings` of the home's Dagster directory, for DAGSTER_HOME of the
    Dagster processes `make ui` starts. A directory inside the home is refused: its file would be the
    attacker's to rewrite between this write and Dagster's read."""
    directory = Path(directory).resolve()
    if directory.is_relative_to(paths.home.resolve()):
        raise UnsafeInstanceSettings(f"the UI's Dagster directory {directory} is inside the platform home {paths.home}: "
                                     "keep it outside, where only the operator writes")
    directory.mkdir(parents=True, exist_ok=True)
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    target = directory / "dagster.yaml"
    with atomic_path(target) as temporary:
        temporary.write_text(ui_settings(paths.dagster_home))
    return target


USAGE = ("usage: python -m ensemble_platform.instance_settings ui DIR   (write the UI's settings in DIR)\n"
         "       python -m ensemble_platform.instance_settings PATH/dagster.yaml   (check a file)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2) or (len(args) == 2 and args[0] != "ui"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        if len(args) == 2:
            write_ui_instance(Path(args[1]), PlatformPaths.from_env())
        else:
            check(Path(args[0]))
    except UnsafeInstanceSettings as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
