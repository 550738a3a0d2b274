"""The Dagster instance settings: the platform's own, never a file under the platform home.

Those settings are code, not data: `python_logs.dagster_handler_config` goes to Python's
`logging.config.dictConfig`, whose `()` keys call any importable callable; `secrets` loaders put a
file's variables into the environment (the signing key's variable among them); every
`module`/`class` pair is imported and instantiated; storage settings can send `{env: ...}` values
to a host of their choosing. A file in the home is writable by the threat model's attacker
(README, "Security"). So:

* the CLI builds its instance from `PLATFORM_SETTINGS` (the repository's dagster.yaml; a test keeps
  the two equal), with storage in the home: the home's file is never read (`cli._instance`);
* `make ui` (`dagster dev`, which reads `$DAGSTER_HOME/dagster.yaml`) copies the repository's file
  into the home, then `python -m ensemble_platform.instance_settings FILE` refuses it unless it is
  the platform's settings exactly, naming what differs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ensemble_platform.errors import PlatformError

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
            + ". Copy the repository's dagster.yaml over it (`make ui` does)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ensemble_platform.instance_settings PATH/dagster.yaml", file=sys.stderr)
        return 2
    try:
        check(Path(args[0]))
    except UnsafeInstanceSettings as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
