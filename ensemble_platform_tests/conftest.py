"""Shared fixtures: small real data (a slice of the default dataset) and temp platform homes."""

from __future__ import annotations

import os
from pathlib import Path

# Sensors and schedules are defined stopped in tests: nothing may act on its own (tests evaluate
# them explicitly). Set before the code location is imported, which reads it.
os.environ["ENSEMBLE_PLATFORM_AUTOMATION"] = "off"
# The signing key of the keyed logs lives outside every platform home (as in production): one per
# test session, in its own temp folder, so no test touches the user's ~/.config key. Checkpoints
# default to a folder per platform home beside it.
import tempfile

os.environ.setdefault("ENSEMBLE_PLATFORM_KEY_FILE",
                      str(Path(tempfile.mkdtemp(prefix="ensemble-platform-keys-")) / "signing.key"))

# The package before numpy: importing it pins OpenBLAS's kernel (blas_kernel.py), so the tests' fits
# run on the kernel the platform's own processes use, on any CPU.
import ensemble_platform  # noqa: F401, I001
import numpy as np
import pandas as pd
import pytest
import yaml

from ensemble_platform.data.loading import load_dataset, read_source
from ensemble_platform.data.spec import DatasetSpec, load_spec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.errors import DataError, DatasetSpecError

SLICE_ROWS = 600


@pytest.fixture(scope="session")
def credit_slice() -> pd.DataFrame:
    return slice_table()


def slice_table() -> pd.DataFrame:
    """A stratified, seeded slice of modeldata::credit_data (the default dataset); also the benchmarks' data."""
    raw = read_source(load_spec())
    rng = np.random.default_rng(0)
    parts = [
        group.iloc[rng.permutation(len(group))[: int(round(SLICE_ROWS * len(group) / len(raw)))]]
        for _, group in raw.groupby("Status", sort=True)
    ]
    return pd.concat(parts).sort_values("rownames").reset_index(drop=True)


def write_spec(directory: Path, table: pd.DataFrame, **overrides) -> Path:
    """Write `table` as CSV and a spec describing it; returns the spec path."""
    directory.mkdir(parents=True, exist_ok=True)
    data_path = directory / "data.csv"
    table.to_csv(data_path, index=False)
    spec = {
        "name": "credit_slice",
        "source": "data.csv",
        "target": "Status",
        "positive_label": "bad",
        "sensitive": ["Age", "Marital"],
        "drop": ["rownames"],
        "holdout_fraction": 0.25,
        "folds": 3,
        "seed": 0,
    }
    spec.update(overrides)
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# Every way a spec or its data can fail to work: (change to the table, spec overrides, error type,
# fragments the message must contain). Used by the core tests and by the Dagster runs.
BAD_INPUTS = [
    pytest.param(None, {"source": "missing.csv"}, DatasetSpecError, ["missing.csv", "does not exist"],
                 id="missing-file"),
    pytest.param(None, {"target": "Outcome"}, DatasetSpecError, ["'target'", "Outcome"], id="target-absent"),
    pytest.param(lambda t: t.assign(Status="good"), {}, DataError, ["Status", "single class"], id="one-class"),
    pytest.param(None, {"positive_label": "default"}, DatasetSpecError, ["positive_label", "default"],
                 id="positive-label-absent"),
    pytest.param(None, {"sensitive": ["Gender"]}, DatasetSpecError, ["'sensitive'", "Gender"],
                 id="sensitive-absent"),
    pytest.param(lambda t: t.iloc[0:0], {}, DataError, ["empty"], id="empty-table"),
    pytest.param(lambda t: t.assign(Income=t["Income"].astype(object).where(t.index != 3, "1.2k")), {},
                 DataError, ["Income", "unparseable", "1.2k"], id="unparseable"),
    pytest.param(lambda t: t.assign(Status=t["Status"].where(t.index != 5, None)), {}, DataError,
                 ["Status", "missing"], id="missing-target"),
    pytest.param(None, {"colour": "blue"}, DatasetSpecError, ["colour"], id="unknown-field"),
    pytest.param(None, {"folds": 1}, DatasetSpecError, ["folds"], id="bad-folds"),
    # '__' separates the dataset from the batch id in partition keys: 'credit__v2' could never take a batch in.
    pytest.param(None, {"name": "credit__v2"}, DatasetSpecError, ["name", "'__'"], id="name-with-partition-separator"),
    pytest.param(None, {"governance": {"fairness": {"min_group_size": 0}}}, DatasetSpecError,
                 ["governance", "min_group_size"], id="bad-governance-threshold"),
    pytest.param(None, {"governance": {"fairness": {"demographic_parity_difference": {"warn": 0.3, "fail": 0.1}}}},
                 DatasetSpecError, ["governance", "fail"], id="governance-fail-below-warn"),
]


@pytest.fixture(scope="session")
def split(tmp_path_factory, credit_slice):
    """The slice's train/holdout split and shared folds (frozen: tests derive variants with
    dataclasses.replace, never mutate it)."""
    spec = load_spec(write_spec(tmp_path_factory.mktemp("split"), credit_slice))
    return split_dataset(load_dataset(spec), spec)


@pytest.fixture
def slice_spec_path(tmp_path, credit_slice) -> Path:
    return write_spec(tmp_path / "dataset", credit_slice)


@pytest.fixture
def slice_spec(slice_spec_path) -> DatasetSpec:
    return load_spec(slice_spec_path)


@pytest.fixture(scope="session")
def lifecycle(tmp_path_factory, credit_slice):
    """One full run through the CLI (`demo`) into a temp home with a temp DAGSTER_HOME, shared by
    the lifecycle and governance tests (it is the slowest fixture)."""
    from ensemble_platform import cli
    from ensemble_platform.settings import PlatformPaths

    root = tmp_path_factory.mktemp("e2e")
    spec_path = write_spec(root / "dataset", credit_slice)
    home = root / "home"
    assert cli.main(["--home", str(home), "demo", "--dataset", str(spec_path)]) == 0
    return PlatformPaths.from_env(home), spec_path


@pytest.fixture
def keyed_home(tmp_path, monkeypatch) -> Path:
    """A platform home, with the key file and checkpoints under a config dir outside it, and no key,
    checkpoint or decision-store setting inherited from the environment."""
    from ensemble_platform.integrity import CHECKPOINT_DIR_ENV, KEY_ENV, KEY_FILE_ENV
    from ensemble_platform.settings import DECISION_STORE_ENV

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ENSEMBLE_PLATFORM_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in (KEY_ENV, KEY_FILE_ENV, CHECKPOINT_DIR_ENV, DECISION_STORE_ENV):
        monkeypatch.delenv(variable, raising=False)
    return home


def decision_record(i: int, **extra) -> dict:
    """A minimal decision-log record number `i`."""
    return {"id": f"d-{i}", "kind": "decision", "created_at": f"2026-01-01T00:00:{i % 60:02d}Z",
            "score": i / 7, **extra}


def approved_demo(root: Path, table: pd.DataFrame, reason: str = "reviewed", **spec_overrides):
    """The demo run into `root/home` on `table`, then 1.0.0 approved by bob (its failing gates waived),
    in no stage yet. Returns (Release, dataset name, spec path)."""
    from ensemble_platform import cli
    from ensemble_platform.governance.release import Release
    from ensemble_platform.settings import PlatformPaths

    spec_path = write_spec(root / "dataset", table, **spec_overrides)
    home = root / "home"
    assert cli.main(["--home", str(home), "demo", "--dataset", str(spec_path)]) == 0
    release = Release(PlatformPaths.from_env(home))
    dataset = load_spec(spec_path).name
    release.approve(dataset, "1.0.0", "bob", "approve", reason, release.state(dataset, "1.0.0").gates.failing)
    return release, dataset, spec_path


def home_in_production(root: Path, table: pd.DataFrame, **spec_overrides):
    """`approved_demo`, then 1.0.0 staged and promoted to production. Returns (paths, spec path,
    Release, production result)."""
    release, dataset, spec_path = approved_demo(root, table, "reviewed; gaps documented", **spec_overrides)
    release.promote(dataset, "1.0.0", "staging")
    return release.paths, spec_path, release, release.promote(dataset, "1.0.0", "production")


class RunsCode:
    """Unpickling this creates `marker`: what a planted pickle would do instead (attack tests check
    the marker never appears, and their controls that it does when the file is unpickled unchecked)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))
