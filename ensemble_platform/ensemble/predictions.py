"""The members' out-of-fold and holdout probability matrices, checked for shared lineage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.ensemble.config import MemberRef
from ensemble_platform.errors import LineageError
from ensemble_platform.files import atomic_path
from ensemble_platform.members.training import MemberFit, predict_cost_per_row


@dataclass
class MemberPredictions:
    members: list[MemberRef]
    oof: pd.DataFrame  # training rows x members
    holdout: pd.DataFrame  # holdout rows x members
    fold_of_row: np.ndarray
    fits: dict[str, MemberFit] = field(default_factory=dict)  # the member versions these came from

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


def collect_member_predictions(
    fits: dict[str, MemberFit], split: TrainHoldoutSplit, expected: list[str]
) -> MemberPredictions:
    """Assemble the matrices, refusing members fitted on another split or missing ones."""
    missing = [name for name in expected if name not in fits]
    if missing:
        raise LineageError(f"member(s) {missing} have no fit; materialize member_model for those partitions")
    stale = [name for name in expected if fits[name].train_hash != split.train_hash]
    if stale:
        raise LineageError(
            f"member(s) {stale} were trained on another training split than the current one "
            f"({split.train_hash[:12]}); re-materialize member_model for those partitions"
        )
    unregistered = [name for name in expected if fits[name].version is None]
    if unregistered:
        raise LineageError(f"member(s) {unregistered} have no registered MLflow model version")
    ordered = [fits[name] for name in expected]
    refs = [
        MemberRef(name=f.name, family=f.family, registered_model=f.registered_model or "",
                  version=f.version or "", run_id=f.run_id or "")
        for f in ordered
    ]
    oof = pd.DataFrame({f.name: f.oof_proba for f in ordered})
    if oof.isna().any().any():
        raise LineageError("out-of-fold matrix has missing predictions; every training row needs one per member")
    oof.insert(0, "fold", split.fold_of_row)
    oof.insert(1, "y", split.y_train)
    holdout = pd.DataFrame({f.name: f.holdout_proba for f in ordered})
    holdout.insert(0, "y", split.y_holdout)
    return MemberPredictions(refs, oof, holdout, split.fold_of_row, {f.name: f for f in ordered})


def matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    return frame[names].to_numpy(dtype=float)


def write_parquet(predictions: MemberPredictions, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"oof": directory / "oof_predictions.parquet", "holdout": directory / "holdout_predictions.parquet"}
    for key, frame in (("oof", predictions.oof), ("holdout", predictions.holdout)):
        with atomic_path(paths[key]) as tmp:
            frame.to_parquet(tmp, index=False)
    return paths


def member_costs(predictions: MemberPredictions, X_train: pd.DataFrame) -> np.ndarray:
    """Each member's predict seconds per row, in column order: as measured at fit, or measured now
    on the training rows for a member without a measurement (one adopted from the registry)."""
    return np.array([
        fit.predict_seconds_per_row if fit.predict_seconds_per_row > 0 else predict_cost_per_row(fit.fitted(), X_train)
        for fit in (predictions.fits[name] for name in predictions.names)
    ])
