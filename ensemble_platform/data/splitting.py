"""Stratified, seeded train/holdout split and the shared out-of-fold folds.

The holdout is set aside here and is read again only by validation; the folds are computed once
so that every member's out-of-fold predictions line up row by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from ensemble_platform.data.loading import binary_target, content_hash
from ensemble_platform.data.schema import FeatureSchema, as_model_input, infer_schema
from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.errors import DataError


@dataclass(frozen=True)
class TrainHoldoutSplit:
    """The training and holdout tables with their labels, shared folds and content hashes."""

    dataset: str
    schema: FeatureSchema
    train: pd.DataFrame  # prepared table rows (features, sensitive, target)
    holdout: pd.DataFrame
    y_train: np.ndarray
    y_holdout: np.ndarray
    fold_of_row: np.ndarray  # fold index in [0, folds) for each training row
    data_hash: str
    train_hash: str
    holdout_hash: str

    @property
    def n_folds(self) -> int:
        return int(self.fold_of_row.max()) + 1

    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(fit rows, predict rows) per fold, positions into the training table."""
        rows = np.arange(len(self.train))
        return [(rows[self.fold_of_row != k], rows[self.fold_of_row == k]) for k in range(self.n_folds)]

    def X_train(self) -> pd.DataFrame:
        return as_model_input(self.train, self.schema)

    def X_holdout(self) -> pd.DataFrame:
        return as_model_input(self.holdout, self.schema)

    def lineage(self) -> dict[str, object]:
        return {
            "data_hash": self.data_hash,
            "train_hash": self.train_hash,
            "holdout_hash": self.holdout_hash,
            "train_rows": len(self.train),
            "holdout_rows": len(self.holdout),
            "folds": self.n_folds,
        }


def split_dataset(table: pd.DataFrame, spec: DatasetSpec) -> TrainHoldoutSplit:
    y = binary_target(table, spec)
    minority = int(min(y.sum(), len(y) - y.sum()))
    if minority < spec.folds * 2:
        raise DataError(
            f"target column {spec.target!r} has only {minority} rows of its rarer class; stratified "
            f"{spec.folds}-fold out-of-fold training needs at least {spec.folds * 2}"
        )
    positions = np.arange(len(table))
    train_pos, holdout_pos = train_test_split(
        positions, test_size=spec.holdout_fraction, stratify=y, random_state=spec.seed
    )
    # Keep original row order inside each part: the split is then independent of sort quirks.
    train_pos, holdout_pos = np.sort(train_pos), np.sort(holdout_pos)
    train = table.iloc[train_pos].reset_index(drop=True)
    holdout = table.iloc[holdout_pos].reset_index(drop=True)
    y_train = y[train_pos]
    fold_of_row = np.empty(len(train), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=spec.folds, shuffle=True, random_state=spec.seed)
    for k, (_, predict_rows) in enumerate(splitter.split(np.zeros(len(train)), y_train)):
        fold_of_row[predict_rows] = k
    return TrainHoldoutSplit(
        dataset=spec.name,
        # The schema is inferred on training rows only: categories seen only in the holdout
        # must look unseen to members, as they would in production.
        schema=infer_schema(train, spec),
        train=train,
        holdout=holdout,
        y_train=y_train,
        y_holdout=y[holdout_pos],
        fold_of_row=fold_of_row,
        data_hash=content_hash(table),
        train_hash=content_hash(train),
        holdout_hash=content_hash(holdout),
    )
