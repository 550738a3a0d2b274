"""The Dagster instance settings (`instance_settings`): attack tests. The settings file is code to
Dagster (logging handlers built by dictConfig, secrets loaders, classes imported by module name);
someone who can write the home must not get one of theirs used by the CLI or `make ui`."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ensemble_platform import cli
from ensemble_platform.errors import PlatformError
from ensemble_platform.instance_settings import UnsafeInstanceSettings, check, problems
from ensemble_platform.settings import DAGSTER_INSTANCE_ENV, TRUST_PICKLED_MEMBERS_ENV, PlatformPaths

REPO = Path(__file__).resolve().parents[1]


def _planted_logging(marker: Path) -> dict:
    """python_logs settings whose handler factory is `subprocess.call(["touch", marker])`."""
    return {"python_logs": {"dagster_handler_config": {
        "handlers": {"planted": {"()": "subprocess.call", "args": ["touch", str(marker)]}}}}}


def test_the_repositorys_settings_are_the_platforms():
    assert problems(yaml.safe_load((REPO / "dagster.yaml").read_text())) == []


def test_settings_other_than_the_platforms_are_refused():
    found = problems({**yaml.safe_load((REPO / "dagster.yaml").read_text()),
                      "secrets": {"custom": {"module": "dagster._core.secrets.env_file", "class": "EnvFileLoader",
                                             "config": {"base_dir": "/home/x"}}},
                      "telemetry": {"enabled": True},
                      "python_logs": {"dagster_handler_config": {"handlers": {}}}})
    assert sorted(f.split(":")[0] for f in found) == ["python_logs", "secrets", "telemetry"]
    assert problems(None) and problems(["a"])


def _plant(home: Path, marker: Path) -> Path:
    """A home whose dagster.yaml runs a command through a logging handler and loads a `.env` (setting
    the variable that would make the platform trust pickled members) through a secrets loader."""
    settings = home / "dagster" / "dagster.yaml"
    settings.parent.mkdir(parents=True)
    (home / "dagster" / ".env").write_text(f"{TRUST_PICKLED_MEMBERS_ENV}=1\n")
    settings.write_text(yaml.safe_dump({
        **yaml.safe_load((REPO / "dagster.yaml").read_text()), **_planted_logging(marker),
        "secrets": {"custom": {"module": "dagster._core.secrets.env_file", "class": "EnvFileLoader",
                               "config": {"base_dir": str(home / "dagster")}}},
    }))
    return settings


@dg.op
def _noop() -> None:
    return None


@dg.job
def _one_op():
    _noop()


def test_the_cli_never_reads_the_homes_settings(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_PICKLED_MEMBERS_ENV, raising=False)
    home, marker = tmp_path / "home", tmp_path / "planted-handler-ran"
    settings = _plant(home, marker)
    instance = cli._instance(PlatformPaths.from_env(home))
    assert _one_op.execute_in_process(instance=instance).success
    assert instance.get_settings("telemetry") == {"enabled": False}
    assert not marker.exists() and TRUST_PICKLED_MEMBERS_ENV not in os.environ
    assert len(instance.get_runs()) == 1 and (home / "dagster" / "history" / "runs.db").is_file()  # storage: the home

    # The control: Dagster reading the same file calls the planted factory as soon as a run sets up its
    # loggers (the factory's result is no handler, so the run then fails; the command has run by then).
    with pytest.raises(ValueError, match="Unable to configure handler 'planted'"):
        _one_op.execute_in_process(instance=dg.DagsterInstance.from_config(str(settings.parent)))
    assert marker.exists()


def test_a_settings_file_is_checked_naming_each_difference(tmp_path):
    settings = _plant(tmp_path / "home", tmp_path / "marker")
    with pytest.raises(UnsafeInstanceSettings, match="python_logs") as refused:
        check(settings)
    assert str(settings) in str(refused.value) and "secrets" in str(refused.value)
    done = subprocess.run([sys.executable, "-m", "ensemble_platform.instance_settings", str(settings)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "python_logs" in done.stderr and "Traceback" not in done.stderr
    settings.write_text((REPO / "dagster.yaml").read_text())
    check(settings)
    with pytest.raises(UnsafeInstanceSettings, match="cannot be read"):
        check(tmp_path / "absent.yaml")


def test_make_ui_reads_settings_kept_outside_the_home_on_the_homes_storage(tmp_path, monkeypatch):
    """`make ui` writes its Dagster settings outside the home and starts `dagster dev` with DAGSTER_HOME
    there: a planted home dagster.yaml (a command-running handler, a `.env` loader) is read by no process,
    while the UI's instance opens the storage the CLI writes. Checked with Dagster's own command line,
    which reads DAGSTER_HOME as `dagster dev`'s processes do."""
    monkeypatch.delenv(TRUST_PICKLED_MEMBERS_ENV, raising=False)
    home, marker, ui = tmp_path / "home", tmp_path / "planted-handler-ran", tmp_path / "ui"
    _plant(home, marker)
    monkeypatch.setenv("ENSEMBLE_PLATFORM_HOME", str(home))
    done = subprocess.run([sys.executable, "-m", "ensemble_platform.instance_settings", "ui", str(ui)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert problems({k: v for k, v in yaml.safe_load((ui / "dagster.yaml").read_text()).items()
                     if k not in ("storage", "local_artifact_storage", "compute_logs")}) == []
    cli_run = _one_op.execute_in_process(instance=cli._instance(PlatformPaths.from_env(home)))
    ui_instance = dg.DagsterInstance.from_config(str(ui))
    ui_run = _one_op.execute_in_process(instance=ui_instance)
    assert {cli_run.run_id, ui_run.run_id} <= {r.run_id for r in ui_instance.get_runs()}
    assert len(cli._instance(PlatformPaths.from_env(home)).get_runs()) == 2  # one storage: the home's
    info = subprocess.run([str(Path(sys.executable).parent / "dagster"), "instance", "info"], capture_output=True,
                          text=True, env={**os.environ, "DAGSTER_HOME": str(ui)})
    assert info.returncode == 0, info.stderr
    assert str(home / "dagster") in info.stdout and "python_logs" not in info.stdout and "secrets" not in info.stdout
    assert not marker.exists() and TRUST_PICKLED_MEMBERS_ENV not in os.environ

    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("\nui:"):makefile.index("\nmlflow-ui:")]
    write, start = recipe.index("instance_settings ui $(UI_INSTANCE)"), recipe.index("DAGSTER_HOME=$(UI_INSTANCE)")
    assert write < start and "$(BIN)/dagster dev" in recipe[start:]
    assert "UI_INSTANCE ?= $(CURDIR)/.dagster-ui" in makefile  # beside the checkout, not in the home


def test_the_ui_settings_are_refused_inside_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_PLATFORM_HOME", str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-m", "ensemble_platform.instance_settings", "ui",
                           str(tmp_path / "home" / "ui")], capture_output=True, text=True)
    assert done.returncode == 1 and "inside the platform home" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "ui").exists()
    assert subprocess.run([sys.executable, "-m", "ensemble_platform.instance_settings"],
                          capture_output=True, text=True).returncode == 2


def test_an_operators_instance_outside_the_home_is_used_and_one_inside_is_refused(tmp_path, monkeypatch):
    """ENSEMBLE_PLATFORM_DAGSTER_INSTANCE (the stack's PostgreSQL instance): a directory outside the home
    is the operator's and is used as it is; one inside the home could be rewritten by the attacker."""
    home = tmp_path / "home"
    outside = tmp_path / "operator-dagster"
    outside.mkdir()
    (outside / "dagster.yaml").write_text("telemetry:\n  enabled: false\nconcurrency:\n  runs:\n"
                                          "    max_concurrent_runs: 7\n")
    monkeypatch.setenv(DAGSTER_INSTANCE_ENV, str(outside))
    instance = cli._instance(PlatformPaths.from_env(home))
    assert instance.root_directory == str(outside.resolve())
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 7
    monkeypatch.setenv(DAGSTER_INSTANCE_ENV, str(home / "dagster"))
    with pytest.raises(PlatformError, match="inside the platform home"):
        cli._instance(PlatformPaths.from_env(home))
