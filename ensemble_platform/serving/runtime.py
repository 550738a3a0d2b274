"""EnsembleRuntime: members + combiner + calibrator + schema, the one object that turns rows
into scores.

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
from ensemble_platform.evaluation.calibration import ProbabilityCalibrator
from ensemble_platform.governance.policy import UnseenCategoryPolicy
from ensemble_platform.members.training import positive_proba


@dataclass
class EnsembleRuntime:
    dataset: str
    version: str
    schema: FeatureSchema
    members: dict[str, Pipeline]  # ordered as the combiner's columns
    combiner: Combiner
    calibrator: ProbabilityCalibrator
    agreement_threshold: float
    decision_threshold: float = 0.5
    unseen_category: UnseenCategoryPolicy = "review"

    def member_matrix(self, X: pd.DataFrame) -> np.ndarray:
        return np.column_stack([positive_proba(model, X) for model in self.members.values()])

    def model_input(self, table: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.schema.features if c not in table.columns]
        if missing:
            raise DataError(f"input is missing feature column(s) {missing}; expected {self.schema.features}")
        return as_model_input(table, self.schema)

    def unseen_categories(self, X: pd.DataFrame) -> np.ndarray:
        """Rows holding a categorical value no member saw in training, judged by the policy:
        'error' refuses them naming column and values, 'review' flags them, 'ignore' scores them."""
        unseen = np.zeros(len(X), dtype=bool)
        for column in self.schema.categorical:
            known = set(self.schema.categories.get(column, ()))
            values = X[column]
            new = (values.notna() & ~values.isin(known)).to_numpy()
            if new.any() and self.unseen_category == "error":
                raise DataError(
                    f"column {column!r} has value(s) never seen in training "
                    f"{sorted(set(values[new]))[:5]} in {int(new.sum())} row(s); allowed: {sorted(known)} "
                    "(unseen_category policy 'error')"
                )
            unseen |= new
        return unseen if self.unseen_category == "review" else np.zeros(len(X), dtype=bool)

    def combined_proba(self, P: np.ndarray, X: pd.DataFrame) -> np.ndarray:
        """The combiner's probability before post-hoc calibration."""
        return self.combiner.positive_proba(P, X if self.combiner.needs_features else None)

    def proba_from_members(self, P: np.ndarray, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(before, after calibration) for member probabilities already computed (reports reuse
        the members' validated holdout predictions instead of predicting again)."""
        combined = self.combined_proba(P, X)
        return combined, self.calibrator.transform(combined)

    def member_and_ensemble_proba(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(members' probabilities, the calibrated ensemble probability) for monitoring: no review
        routing and no unseen-category policy, which are decisions, not measurements."""
        X = self.model_input(table)
        P = self.member_matrix(X)
        return P, self.proba_from_members(P, X)[1]

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        """Probability (calibrated), decision, agreement and review flag per input row."""
        X = self.model_input(table)
        unseen = self.unseen_categories(X)
        P = self.member_matrix(X)
        _, proba = self.proba_from_members(P, X)
        # Agreement compares each member's own vote with the ensemble's decision at one threshold.
        agreement = vote_agreement(P, proba, self.decision_threshold)
        return pd.DataFrame(
            {
                "probability": proba,
                "decision": (proba >= self.decision_threshold).astype(int),
                "agreement": agreement,
                "needs_review": (agreement < self.agreement_threshold) | unseen,
            },
            index=table.index,
        )
