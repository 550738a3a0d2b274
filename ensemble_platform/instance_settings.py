"""The Dagster instance settings under the platform home (`<home>/dagster/dagster.yaml`), checked
before an instance is created from them.

Those settings are code, not data: `python_logs.dagster_handler_config` goes to Python's
`logging.config.dictConfig`, whose `()` keys call any importable callable with the given
arguments, and every `module`/`class` pair is imported and instantiated. The file lives in the
home, which the threat model lets an attacker write (README, "Security"). So the CLI and `make ui`
refuse a settings file with a logging handler configuration or a class from outside Dagster and its
`dagster_*` libraries, naming the file, the key and the reason. Settings the platform ships or
documents (storage, run coordinator and launcher, concurrency, telemetry) pass.

`python -m ensemble_platform.instance_settings PATH` checks one file (exit 1 with the reasons).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ensemble_platform.errors import PlatformError

# Keys whose values Python's logging.config.dictConfig interprets (callables via "()").
_LOGGING_CONFIG_KEY = "dagster_handler_config"
# Top-level packages a `module:` entry may name: Dagster itself and its integration libraries.
_ALLOWED_PACKAGE = "dagster"


class UnsafeInstanceSettings(PlatformError):
    """The instance settings file asks Dagster to run code of its choosing."""


def _walk(node: Any, where: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path to the key, key, value) for every mapping entry in the YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            yield path, str(key), value
            yield from _walk(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}[{i}]")


def problems(settings: Any) -> list[str]:
    """Why these parsed settings could run code of the file's choosing (empty when they cannot)."""
    found = []
    for path, key, value in _walk(settings):
        if key == _LOGGING_CONFIG_KEY:
            found.append(f"{path}: a logging configuration, which calls whatever callables its '()' entries "
                         "name; not supported here (use python_logs.managed_python_loggers)")
        elif key == "module":
            package = str(value).split(".", 1)[0]
            if package != _ALLOWED_PACKAGE and not package.startswith(f"{_ALLOWED_PACKAGE}_"):
                found.append(f"{path}: module {value!r} is not Dagster's or a dagster_* library's, and the class it "
                             "names would be imported and run")
    return found


def check(path: Path) -> None:
    """UnsafeInstanceSettings naming `path` and each problem, if the file is unsafe (absent: fine)."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        settings = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UnsafeInstanceSettings(f"Dagster instance settings {path} are not valid YAML: {exc}") from exc
    found = problems(settings)
    if found:
        raise UnsafeInstanceSettings(
            f"Dagster instance settings {path} refused (the file is under the platform home, and these settings run "
            "code): " + "; ".join(found) + ". Copy the repository's dagster.yaml over it, or remove these keys")


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
