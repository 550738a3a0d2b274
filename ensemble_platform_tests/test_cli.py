"""The command lines as a first user meets them: every argument explained, `--home` before or after the
subcommand, an unknown dataset name refused before anything is created, and a Dagster home prepared
like `make demo` prepares it. No graph runs here: a catalogue entry is all a home needs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import yaml

from ensemble_platform import cli
from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.data.spec import load_spec
from ensemble_platform.service import cli as service_cli
from ensemble_platform.service.arguments import subparsers
from ensemble_platform.settings import PlatformPaths
from ensemble_platform_tests.conftest import write_spec

REPO = Path(__file__).resolve().parents[1]


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for each in [parser, *subparsers(parser)]:
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{each.prog} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help:
                missing.append(f"{each.prog} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("build", [cli.build_parser, service_cli.build_parser], ids=["platform", "service"])
def test_every_argument_and_subcommand_has_help(build):
    parser = build()
    assert len(list(subparsers(parser))) > 20  # the walk reaches nested subcommands (reviews list, ...)
    assert _undocumented(parser) == []


def test_home_is_accepted_before_and_after_the_subcommand():
    parser = cli.build_parser()
    assert parser.parse_args(["--home", "/h", "status"]).home == "/h"
    assert parser.parse_args(["status", "--home", "/h"]).home == "/h"
    assert parser.parse_args(["reviews", "list", "--home", "/h"]).home == "/h"
    assert parser.parse_args(["status"]).home is None
    assert service_cli.build_parser().parse_args(["decisions", "verify", "--home", "/h"]).home == "/h"


@pytest.fixture
def known_home(tmp_path, credit_slice) -> Path:
    """A home whose catalogue knows one dataset (credit_slice)."""
    home = tmp_path / "home"
    DatasetCatalog(PlatformPaths.from_env(home)).register(load_spec(write_spec(tmp_path / "dataset", credit_slice)))
    return home


@pytest.mark.parametrize("argv", [
    ["status", "--dataset", "credit_slcie"],
    ["audit", "--dataset", "credit_slcie"],
    ["approve", "--dataset", "credit_slcie", "--version", "1.0.0", "--reviewer", "bob", "--decision", "approve",
     "--note", "ok"],
    ["promote", "--dataset", "credit_slcie", "--version", "1.0.0", "--to", "staging"],
    ["export", "--dataset", "credit_slcie", "--version", "1.0.0"],
    ["retrain", "--dataset", "credit_slcie"],
    ["reviews", "sla", "--dataset", "credit_slcie"],
    ["outcomes", "report", "--dataset", "credit_slcie"],
    ["shadow", "report", "--dataset", "credit_slcie"],
    ["serve", "--dataset", "credit_slcie"],
], ids=lambda argv: argv[0] + ("_" + argv[1] if not argv[1].startswith("-") else ""))
def test_an_unknown_dataset_name_is_refused_naming_the_known_ones(known_home, argv, capsys):
    before = sorted(p.relative_to(known_home) for p in known_home.rglob("*"))
    assert cli.main([*argv, "--home", str(known_home)]) == 2
    err = capsys.readouterr().err
    assert "'credit_slcie'" in err and "known: credit_slice" in err and "Traceback" not in err
    assert sorted(p.relative_to(known_home) for p in known_home.rglob("*")) == before  # nothing created
    assert not (known_home / "audit").exists()


def test_the_service_command_line_refuses_an_unknown_dataset_too(known_home, capsys):
    assert service_cli.main(["--home", str(known_home), "reviews", "list", "--dataset", "nope"]) == 2
    assert "known: credit_slice" in capsys.readouterr().err


def test_a_file_in_the_catalogue_that_is_not_an_entry_hides_nothing_else(known_home, capsys):
    """Files dropped in the home's catalogue folder (not JSON, an empty object, a name that is not text):
    each is left out and named, the known dataset still works everywhere, and asking for a dataset whose
    file is broken is refused naming that file. Before, one such file made every command, the sensors
    and schedules, and the code location itself fail with a traceback."""
    from ensemble_platform.defs.schedules import _known_specs

    paths = PlatformPaths.from_env(known_home)
    folder = paths.datasets_dir
    (folder / "aa.json").write_text("not json")
    (folder / "bb.json").write_text("{}")
    (folder / "cc.json").write_text('{"name": 3, "spec_path": "x"}')
    catalog = DatasetCatalog(paths)
    assert list(catalog.entries()) == ["credit_slice"]
    assert sorted(p.name for p in catalog.problems()) == ["aa.json", "bb.json", "cc.json"]
    assert "credit_slice" in [spec.name for spec in _known_specs(paths, None)]
    assert cli.main(["status", "--dataset", "credit_slice", "--home", str(known_home)]) == 0
    assert service_cli.main(["--home", str(known_home), "outcomes", "report", "--dataset", "bb"]) == 2
    err = capsys.readouterr().err
    assert "known: credit_slice" in err and "bb.json is not a catalogue entry" in err and "Traceback" not in err
    # Entries are signed: one claiming another dataset's name, or an unsigned one repointing a dataset at
    # another spec (its gates' thresholds, its shadow policy), is left out and named.
    signed = (folder / "credit_slice.json").read_text()
    (folder / "a_first.json").write_text(json.dumps({"name": "credit_slice", "spec_path": "/tmp/other.yaml",
                                                     "mac": json.loads(signed)["mac"]}))
    assert catalog.entries()["credit_slice"] != Path("/tmp/other.yaml")
    assert "names dataset 'credit_slice', not 'a_first'" in catalog.problems()[folder / "a_first.json"]
    (folder / "credit_slice.json").write_text(json.dumps({"name": "credit_slice", "spec_path": "/tmp/other.yaml"}))
    assert "credit_slice" not in catalog.entries()
    (folder / "credit_slice.json").write_text(json.dumps({**json.loads(signed), "spec_path": "/tmp/other.yaml"}))
    assert "not signed" in catalog.problems()[folder / "credit_slice.json"]


def test_a_known_dataset_name_passes_the_check(known_home, capsys):
    assert cli.main(["status", "--dataset", "credit_slice", "--home", str(known_home)]) == 0
    assert "dataset credit_slice" in capsys.readouterr().out


def test_parsing_a_command_does_not_import_the_http_service():
    # Every command builds the whole parser (the service's sub-commands included); the service
    # package exports its app lazily, so `--help` or `demo` do not pay for FastAPI and the decider.
    import subprocess

    code = ("import sys; from ensemble_platform import cli; cli.build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'sklearn', 'ensemble_platform.service.app') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    from ensemble_platform import service

    assert {name: getattr(service, name).__name__ for name in ("create_app", "ServerThread")} == {
        "create_app": "create_app", "ServerThread": "ServerThread"}
    assert sorted(service.__all__) == sorted(service._EXPORTS)


def test_the_console_script_exits_with_the_commands_code_and_all_its_output(known_home, capsys):
    # `cli.entry` skips the interpreter's teardown after the command: the exit code and every
    # line printed must still come through, through a pipe as on a terminal.
    import subprocess

    script = str(Path(sys.executable).with_name("ensemble-platform"))
    assert cli.main(["status", "--dataset", "credit_slice", "--home", str(known_home)]) == 0
    expected = capsys.readouterr().out
    done = subprocess.run([script, "status", "--dataset", "credit_slice", "--home", str(known_home)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, expected)
    refused = subprocess.run([script, "status", "--dataset", "credit_slcie", "--home", str(known_home)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "known: credit_slice" in refused.stderr and "Traceback" not in refused.stderr


def test_the_cli_prepares_a_dagster_home_like_make_demo(tmp_path):
    paths = PlatformPaths.from_env(tmp_path / "home")
    config = cli.prepare_dagster_home(paths)
    assert config == paths.dagster_home / "dagster.yaml"
    assert yaml.safe_load(config.read_text()) == yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert yaml.safe_load(config.read_text())["telemetry"] == {"enabled": False}
    config.write_text("telemetry:\n  enabled: false\n")  # kept (`make ui` replaces and checks it; the CLI never reads it)
    cli.prepare_dagster_home(paths)
    assert config.read_text() == "telemetry:\n  enabled: false\n"


def test_the_cli_instance_starts_without_dagsters_missing_config_warning(tmp_path):
    """Outside `make` (no dagster.yaml in the home yet) the CLI's instance is the prepared one: no warning."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    code = ("from ensemble_platform.cli import _instance; from ensemble_platform.settings import PlatformPaths; "
            f"print(_instance(PlatformPaths.from_env({str(home)!r})).run_launcher is not None)")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=str(REPO))
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert "No dagster instance configuration file" not in done.stderr
    assert (home / "dagster" / "dagster.yaml").is_file()


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, "dagster"])
def test_an_interrupted_command_is_one_line_and_exit_130(known_home, monkeypatch, capsys, interruption):
    """Ctrl-C surfaces as KeyboardInterrupt, or inside a step as Dagster's DagsterExecutionInterruptedError (a
    BaseException): one line, the traceback in the home's log, exit 130 (it ended in Dagster's and Python's
    tracebacks and exit 1; found by review). Raised in the command itself: a real SIGINT lands wherever the
    process happens to be, and Dagster sometimes swallows one that arrives inside a step (see the note)."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    error = DagsterExecutionInterruptedError if interruption == "dagster" else interruption

    def interrupted(args):
        raise error()

    monkeypatch.setattr(cli, "cmd_status", interrupted)
    assert cli.main(["--home", str(known_home), "status"]) == 130
    err = capsys.readouterr().err
    assert err.strip().startswith("interrupted: run the command again to resume") and "Traceback" not in err


@pytest.mark.parametrize("argv", [["status"], ["audit"], ["decisions", "verify"], ["reviews", "list"],
                                  ["outcomes", "report", "--dataset", "credit_data"]])
def test_a_mistyped_home_is_refused_and_nothing_is_created(tmp_path, argv, capsys):
    """A command that reads a home, given one that does not exist, created it and reported on the empty
    home ("verified 0 entries", exit 0; found by review)."""
    home = tmp_path / "nohome"
    assert cli.main(["--home", str(home), *argv]) == 2
    assert f"no platform home at {home}" in capsys.readouterr().err
    assert not home.exists()
