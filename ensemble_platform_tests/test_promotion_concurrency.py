"""Promotion is atomic under concurrency: two real processes run `ensemble-platform promote` on the same
home at the same instant (imports done first, then both call the CLI together). Exactly one promotion
takes effect per target, the other process is a clean no-op; the registry aliases, the promotions log and
the bundle agree, and nothing is left half-written (no pending intent, nothing for recovery to do)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ensemble_platform import cli
from ensemble_platform.governance.intents import Intents
from ensemble_platform.governance.registry import ensemble_model_name
from ensemble_platform.governance.release import Release
from ensemble_platform.integrity import CHECKPOINT_DIR_ENV, KEY_ENV, KEY_FILE_ENV
from ensemble_platform.settings import MLFLOW_URI_ENV
from ensemble_platform_tests.conftest import approved_demo

REPO = Path(__file__).resolve().parents[1]
VERSION = "1.0.0"
RACER = textwrap.dedent("""
    import sys, time
    from ensemble_platform import cli
    start_at = float(sys.argv[1])
    time.sleep(max(0.0, start_at - time.time()))  # both processes call the CLI at the same instant
    sys.exit(cli.main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def approved(tmp_path_factory, credit_slice):
    """A demo home whose 1.0.0 is approved (failing gates waived) and in no stage yet."""
    root = tmp_path_factory.mktemp("promotion-race")
    with pytest.MonkeyPatch.context() as patch:
        for variable in (KEY_ENV, KEY_FILE_ENV, CHECKPOINT_DIR_ENV, MLFLOW_URI_ENV):
            patch.delenv(variable, raising=False)
        patch.setenv("XDG_CONFIG_HOME", str(root / "config"))
        release, dataset, _ = approved_demo(root, credit_slice)
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        yield release, dataset, env


def _race(release: Release, dataset: str, env: dict[str, str], to: str) -> list[str]:
    """Two processes promote 1.0.0 to `to` at once; their outputs (both must exit 0)."""
    start_at = time.time() + 8  # after both have imported the platform (a loaded machine is slow)
    argv = ["--home", str(release.paths.home), "promote", "--dataset", dataset, "--version", VERSION, "--to", to]
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(start_at), *argv], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [racer.communicate(timeout=300)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], [out[-2000:] for out in outputs]
    return outputs


def _promotions(release: Release, dataset: str) -> list[dict]:
    return [e for e in release.promotions_log(dataset).verify() if e.get("version") == VERSION]


@pytest.mark.parametrize("to", ["staging", "production"])
def test_two_processes_promoting_at_once_promote_once(approved, to):
    release, dataset, env = approved
    before = len(_promotions(release, dataset))
    outputs = _race(release, dataset, env, to)
    took_effect = [out for out in outputs if f"-> {to}" in out]
    no_op = [out for out in outputs if f"is already in {to}; nothing changed" in out]
    assert (len(took_effect), len(no_op)) == (1, 1), outputs
    # The promotions log (verified) has exactly one new record, for this target, and it agrees with the registry.
    added = _promotions(release, dataset)[before:]
    assert [(e["to"], e["version"]) for e in added] == [(to, VERSION)]
    client = MlflowClient(release.paths.mlflow_tracking_uri, release.paths.mlflow_tracking_uri)
    aliases = client.get_registered_model(ensemble_model_name(dataset)).aliases
    assert str(aliases.get(to)) == added[0]["registered_version"]
    assert release.registry.stage_state(dataset).stage_of(added[0]["registered_version"]) == to
    # Nothing half-written: no pending intent, and recovery finds nothing to finish or undo.
    assert Intents(release.paths, dataset).read() is None
    fresh = Release(release.paths)
    fresh.status(dataset)
    assert fresh.recovered == []
    if to == "production":  # one bundle, the one the record names, and it verifies
        bundle = added[0]["bundle"]
        assert cli.main(["verify-bundle", bundle["path"], "--manifest-sha256", bundle["manifest_sha256"]]) == 0
