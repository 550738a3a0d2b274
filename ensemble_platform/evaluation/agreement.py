"""How much the members agree with the ensemble's decision, row by row.

For decisions: the share of members voting for the ensemble's winning class. For scores: the
coefficient of variation of the member probabilities. Rows whose agreement falls below the
config's threshold go to human review.
"""

from __future__ import annotations

import numpy as np


def vote_agreement(P: np.ndarray, ensemble_proba: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Share of members whose own decision equals the ensemble's decision, per row."""
    member_votes = np.asarray(P) >= threshold
    ensemble_votes = (np.asarray(ensemble_proba) >= threshold)[:, None]
    return (member_votes == ensemble_votes).mean(axis=1)


def probability_dispersion(P: np.ndarray) -> np.ndarray:
    """Coefficient of variation (std / mean) of member probabilities, per row."""
    P = np.asarray(P, dtype=float)
    mean = P.mean(axis=1)
    return np.divide(P.std(axis=1), mean, out=np.zeros_like(mean), where=mean > 0)


def agreement_summary(
    P: np.ndarray, ensemble_proba: np.ndarray, review_threshold: float, decision_threshold: float = 0.5
) -> dict[str, object]:
    """Distribution of vote agreement and the share of rows routed to review."""
    agreement = vote_agreement(P, ensemble_proba, decision_threshold)
    m = P.shape[1]
    # Possible agreement values are k/m for k >= ceil(m/2) (ties aside): count each exactly.
    levels, counts = np.unique(np.round(agreement, 6), return_counts=True)
    return {
        "members": m,
        "review_threshold": review_threshold,
        "mean_agreement": float(agreement.mean()),
        "unanimous_share": float(np.isclose(agreement, 1.0).mean()),
        "review_share": float((agreement < review_threshold).mean()),
        "distribution": {f"{level:.3f}": int(c) for level, c in zip(levels, counts)},
        "mean_probability_cv": float(probability_dispersion(P).mean()),
    }
