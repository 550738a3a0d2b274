"""EnsembleRuntime: members + combiner + schema, the one object that turns rows into scores.

Validation scores the holdout through this object and the registered pyfunc wraps the same
object, so what was validated is what is served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from ensemble_platform.data.schema import FeatureSchema, as_model_input
from ensemble_platform.ensemble.agreement import vote_agreement
from ensemble_platform.ensemble.strategies import Combiner
from ensemble_platform.errors import DataError
from ensemble_platform.members.training import positive_proba


@dataclass
class EnsembleRuntime:
    dataset: str
    version: str
    schema: FeatureSchema
    members: dict[str, Pipeline]  # ordered as the combiner's columns
    combiner: Combiner
    agreement_threshold: float

    def member_matrix(self, X: pd.DataFrame) -> np.ndarray:
        return np.column_stack([positive_proba(model, X) for model in self.members.values()])

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        """Probability, decision, agreement and review flag per input row."""
        missing = [c for c in self.schema.features if c not in table.columns]
        if missing:
            raise DataError(f"input is missing feature column(s) {missing}; expected {self.schema.features}")
        X = as_model_input(table, self.schema)
        P = self.member_matrix(X)
        proba = self.combiner.positive_proba(P, X if self.combiner.needs_features else None)
        agreement = vote_agreement(P, proba)
        return pd.DataFrame(
            {
                "probability": proba,
                "decision": (proba >= 0.5).astype(int),
                "agreement": agreement,
                "needs_review": agreement < self.agreement_threshold,
            },
            index=table.index,
        )
