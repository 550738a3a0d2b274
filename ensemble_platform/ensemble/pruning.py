"""Pruning: the served ensemble holds only the members its combiner uses.

A member a fitted combiner gives no say (weight 0 in a weighted average, never picked by greedy
selection, every member but the chosen one under model selection) is *evaluated but pruned*: it is
not in the runtime or the bundle, not loaded, not called, not counted in agreement or
`min_members`. The config lists it with the reason; the registry keeps its version.

The restricted combiner gives the same probabilities on the used columns as the full one on all
columns (dropped terms were exactly zero), and what is validated is the pruned runtime itself.
"""

from __future__ import annotations

import copy

import numpy as np

from ensemble_platform.ensemble.strategies import Combiner, GreedySelection, SingleMember, WeightedAverage


def used_columns(combiner: Combiner) -> list[int]:
    """The member columns the fitted combiner's output depends on, in order."""
    if isinstance(combiner, SingleMember):
        return [combiner.member_index_]
    if isinstance(combiner, WeightedAverage):  # GreedySelection included
        return [int(j) for j in np.flatnonzero(np.asarray(combiner.weights_) > 0)]
    return list(range(int(combiner.n_members_)))


def prune_reason(combiner: Combiner, strategy: str) -> str:
    """Why a column `used_columns` leaves out is not served."""
    if isinstance(combiner, SingleMember):
        return f"not the selected member ({strategy}: model selection serves the best member alone)"
    if isinstance(combiner, GreedySelection):
        return f"never picked by {strategy}"
    return f"weight 0 in {strategy}"


def restricted(combiner: Combiner, columns: list[int]) -> Combiner:
    """An equivalent fitted combiner whose input is only `columns` of the original matrix."""
    if columns == list(range(int(combiner.n_members_))):
        return combiner
    pruned = copy.deepcopy(combiner)
    if isinstance(pruned, SingleMember):
        pruned.member_index_ = columns.index(combiner.member_index_)
    elif isinstance(pruned, WeightedAverage):
        pruned.weights_ = np.asarray(combiner.weights_, dtype=float)[columns]
    else:
        raise ValueError(f"{type(combiner).__name__} uses every member; it cannot be restricted to {columns}")
    pruned.n_members_ = len(columns)
    return pruned
