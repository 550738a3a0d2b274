"""The Dagster instance settings under the home (`instance_settings`): attack tests. The file is
code to Dagster (logging handlers built by dictConfig, classes imported by module name); someone who
can write the home must not get one of theirs run by the CLI or `make ui`."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ensemble_platform import cli
from ensemble_platform.instance_settings import UnsafeInstanceSettings, check, problems
from ensemble_platform_tests.conftest import write_spec

REPO = Path(__file__).resolve().parents[1]


def _planted_logging(marker: Path) -> dict:
    """python_logs settings whose handler factory is `subprocess.call(["touch", marker])`."""
    return {"python_logs": {"dagster_handler_config": {
        "handlers": {"planted": {"()": "subprocess.call", "args": ["touch", str(marker)]}}}}}


@pytest.mark.parametrize("shipped", ["dagster.yaml", "docker/dagster.yaml"])
def test_the_settings_the_platform_ships_pass(shipped):
    assert problems(yaml.safe_load((REPO / shipped).read_text())) == []


def test_settings_that_name_code_are_refused():
    found = problems({"run_launcher": {"module": "os", "class": "system"},
                      "storage": {"sqlite": {"base_dir": "x"}},
                      "compute_logs": {"module": "dagster_evil_but_named_like_a_library.x", "class": "Y"},
                      "python_logs": {"dagster_handler_config": {"handlers": {}}}})
    assert len(found) == 2
    assert any(f.startswith("run_launcher.module: module 'os'") for f in found)
    assert any(f.startswith("python_logs.dagster_handler_config") for f in found)


def test_a_planted_logging_handler_never_runs_from_the_cli(tmp_path, credit_slice, capsys):
    home = tmp_path / "home"
    marker = tmp_path / "planted-handler-ran"
    settings = home / "dagster" / "dagster.yaml"
    settings.parent.mkdir(parents=True)
    settings.write_text(yaml.safe_dump({**yaml.safe_load((REPO / "dagster.yaml").read_text()),
                                        **_planted_logging(marker)}))
    spec = write_spec(tmp_path / "dataset", credit_slice)
    assert cli.main(["--home", str(home), "demo", "--dataset", str(spec)]) == 2
    err = capsys.readouterr().err
    assert str(settings) in err and "python_logs.dagster_handler_config" in err and "refused" in err
    assert not marker.exists()
    assert not (home / "mlflow" / "mlflow.db").exists()  # refused before anything ran

    # The control: Dagster itself calls the planted factory as soon as a run sets up its loggers (the
    # factory's result is no handler, so the run then fails; the command has run by then).
    @dg.op
    def noop() -> None:
        return None

    @dg.job
    def one_op():
        noop()

    with pytest.raises(ValueError, match="Unable to configure handler 'planted'"):
        one_op.execute_in_process(instance=dg.DagsterInstance.from_config(str(settings.parent)))
    assert marker.exists()


def test_make_ui_checks_the_settings_first(tmp_path):
    settings = tmp_path / "dagster.yaml"
    settings.write_text(yaml.safe_dump({"run_launcher": {"module": "os", "class": "system"}}))
    with pytest.raises(UnsafeInstanceSettings, match="module 'os'"):
        check(settings)
    done = subprocess.run([sys.executable, "-m", "ensemble_platform.instance_settings", str(settings)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "module 'os'" in done.stderr and "Traceback" not in done.stderr
    assert "instance_settings $(DAGSTER_HOME)/dagster.yaml" in (REPO / "Makefile").read_text()
    check(tmp_path / "absent.yaml")  # no file: Dagster's defaults
