"""The parity set of an ensemble version: the holdout rows exactly as an operator would send them
and the scores validation gave them. Whatever serves the version (the registered pyfunc, an
exported bundle) must reproduce these probabilities to the bit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble_platform.errors import PlatformError
from ensemble_platform.files import atomic_path

ROWS_FILE = "holdout_rows.parquet"
SCORES_FILE = "holdout_scores.parquet"


@dataclass(frozen=True)
class ParitySet:
    rows: pd.DataFrame  # feature columns, raw values
    scores: pd.DataFrame  # probability, decision, agreement, needs_review as validated

    def write(self, directory: Path) -> dict[str, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = {"rows": directory / ROWS_FILE, "scores": directory / SCORES_FILE}
        for key, frame in (("rows", self.rows), ("scores", self.scores)):
            with atomic_path(paths[key]) as tmp:
                frame.reset_index(drop=True).to_parquet(tmp, index=False)
        return paths

    @classmethod
    def read(cls, directory: Path) -> ParitySet:
        missing = [name for name in (ROWS_FILE, SCORES_FILE) if not (directory / name).is_file()]
        if missing:
            raise PlatformError(
                f"parity set {directory} lacks {missing}; re-run ensemble_job to validate the version"
            )
        return cls(pd.read_parquet(directory / ROWS_FILE), pd.read_parquet(directory / SCORES_FILE))

    def mismatches(self, score: Callable[[pd.DataFrame], pd.DataFrame]) -> list[str]:
        """What `score` gets wrong on the parity rows (empty when it reproduces them exactly)."""
        served = score(self.rows)
        problems = []
        for column in self.scores.columns:
            if column not in served.columns:
                problems.append(f"output column {column!r} is missing")
                continue
            expected, got = self.scores[column].to_numpy(), served[column].to_numpy()
            differ = int((expected != got).sum())
            if differ:
                worst = float(np.max(np.abs(expected.astype(float) - got.astype(float))))
                problems.append(f"{column}: {differ} of {len(expected)} rows differ (max |diff| {worst:.3g})")
        return problems
