"""What both command lines (`ensemble-platform` and `python -m ensemble_platform.service`) do with their
arguments before dispatching: `--home` accepted before or after the subcommand, and a `--dataset` name the
home's catalogue does not know refused before anything is read or created."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.errors import DatasetSpecError, PlatformError
from ensemble_platform.settings import HOME_ENV, PlatformPaths

HOME_HELP = f"platform home (default ${HOME_ENV} or ./.ensemble_platform)"
# Commands whose --dataset is a spec file to build, not a dataset this home already knows.
BUILDS_FROM_SPEC = frozenset({"demo"})
# Commands that work on what a home already holds: on a home that does not exist (a mistyped --home)
# they would create an empty one and report on it ("verified 0 entries", exit 0).
NEEDS_A_HOME = frozenset({"approve", "promote", "export", "retrain", "status", "audit", "decisions", "reviews",
                          "outcomes", "shadow"})


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below `parser` (subcommands, their subcommands, ...), depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from subparsers(child)


def accept_home_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let `--home` follow the subcommand too (`status --home H` as well as `--home H status`); given in
    neither place it stays the main parser's default."""
    for child in subparsers(parser):
        if not any("--home" in action.option_strings for action in child._actions):
            child.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)


def is_spec_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml"))


def refuse_unknown_dataset(args: argparse.Namespace) -> None:
    """A `--dataset` given by name must be in the home's catalogue (a typo would otherwise show an empty
    table, or create its audit directory); a spec file is read where it is used. A command that reads a
    home needs one that exists."""
    if getattr(args, "command", None) in NEEDS_A_HOME:
        home = PlatformPaths.from_env(getattr(args, "home", None)).home
        if not home.is_dir() or not any(home.iterdir()):
            raise PlatformError(f"no platform home at {home} (nothing has run there); give the home with --home "
                                f"or ${HOME_ENV}, or build one (demo --dataset SPEC)")
    value = getattr(args, "dataset", None)
    if not value or is_spec_file(value) or getattr(args, "command", None) in BUILDS_FROM_SPEC:
        return
    paths = PlatformPaths.from_env(getattr(args, "home", None))
    catalog = DatasetCatalog(paths)
    known = sorted(catalog.entries())
    if value not in known:
        raise DatasetSpecError(
            f"--dataset {value!r}: no such dataset in the catalogue of {paths.home} ({paths.datasets_dir}); "
            f"known: {', '.join(known) if known else 'none yet'}. Give one of these names, or the spec YAML "
            f"of a dataset after running its graph once (demo --dataset SPEC.yaml){catalog.problems_text()}")
