"""Shared fixtures: small real data (a slice of the default dataset) and temp platform homes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ensemble_platform.data.loading import read_source
from ensemble_platform.data.spec import DatasetSpec, load_spec

SLICE_ROWS = 600


@pytest.fixture(scope="session")
def credit_slice() -> pd.DataFrame:
    """A stratified, seeded slice of modeldata::credit_data (the default dataset)."""
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


@pytest.fixture
def slice_spec_path(tmp_path, credit_slice) -> Path:
    return write_spec(tmp_path / "dataset", credit_slice)


@pytest.fixture
def slice_spec(slice_spec_path) -> DatasetSpec:
    return load_spec(slice_spec_path)
