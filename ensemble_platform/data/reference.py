"""The training reference of a dataset: the rows and feature schema of its latest training split,
kept in the platform home so new batches are validated and compared against what the members
were trained on, without loading Dagster's stored asset values."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.errors import DataError
from ensemble_platform.files import atomic_path, write_json
from ensemble_platform.settings import PlatformPaths

ROWS = "training_rows.parquet"
SCHEMA = "schema.json"


@dataclass(frozen=True)
class TrainingReference:
    rows: pd.DataFrame  # the training split's prepared rows (features, sensitive, target)
    schema: FeatureSchema
    train_hash: str

    @staticmethod
    def write(paths: PlatformPaths, split: TrainHoldoutSplit) -> None:
        directory = paths.reference_dir(split.dataset)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / ROWS) as tmp:
            split.train.to_parquet(tmp, index=False)
        write_json({"schema": split.schema.to_dict(), "train_hash": split.train_hash}, directory / SCHEMA)

    @classmethod
    def read(cls, paths: PlatformPaths, dataset: str) -> TrainingReference:
        directory = paths.reference_dir(dataset)
        if not (directory / SCHEMA).is_file() or not (directory / ROWS).is_file():
            raise DataError(f"{dataset} has no training reference in {directory}; run its data_job first")
        meta = json.loads((directory / SCHEMA).read_text())
        return cls(pd.read_parquet(directory / ROWS), FeatureSchema.from_dict(meta["schema"]), meta["train_hash"])

    @staticmethod
    def datetime_columns(paths: PlatformPaths, dataset: str) -> tuple[str, ...]:
        """The date/time columns whose numeric parts the members use (none without a reference):
        a batch carries the dates, the parts are derived from them as at training."""
        path = paths.reference_dir(dataset) / SCHEMA
        if not path.is_file():
            return ()
        return tuple(json.loads(path.read_text())["schema"].get("datetime", ()))
