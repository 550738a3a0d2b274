"""Holdout validation of an ensemble version: every member and every strategy on rows no fit
and no choice has seen, the agreement distribution and the lift over the best member."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.ensemble.selection import SELECTION_RULE, CandidateSet
from ensemble_platform.errors import PlatformError, first_line
from ensemble_platform.evaluation.agreement import agreement_summary
from ensemble_platform.evaluation.metrics import LOWER_IS_BETTER, METRIC_NAMES, binary_metrics

SCHEMA_VERSION = 1
VALIDATION_FILE = "validation.json"

Metrics = dict[str, float]


class SelectionEvidence(BaseModel):
    """How the strategy was chosen: out-of-fold metrics of every candidate, member and the served ensemble."""

    model_config = ConfigDict(frozen=True)

    criterion: str
    rule: str  # the choice rule (one-standard-error on paired fold differences)
    best_out_of_fold: str  # the candidate with the lowest mean fold loss (chosen only when beyond noise)
    order_of_simplicity: list[str]  # candidates, simplest first: ties within noise go to the first
    noise: dict[str, dict[str, float | bool]]  # each candidate against the best: mean difference, SE, within noise
    evidence: str
    folds: int
    out_of_fold: dict[str, Metrics]
    members_out_of_fold: dict[str, Metrics]
    ensemble_out_of_fold: Metrics
    # Accuracy-cost frontier (`CandidateSet.frontier_table`): per candidate, out-of-fold log loss and
    # AUC against expected predict seconds per row, its ratio to the cheapest member, eligible, chosen.
    frontier: dict[str, dict[str, Any]] = Field(default_factory=dict)
    max_cost_ratio: float | None = None  # the spec's selection budget (None: no budget)


class ValidationReport(BaseModel):
    """validation.json: holdout metrics of the ensemble, every member and every strategy, the lift
    over the best member, the agreement distribution, the selection evidence and the lineage."""

    model_config = ConfigDict(frozen=True)

    schema_version: int
    dataset: str
    ensemble_version: str
    config_hash: str
    chosen: str
    ensemble: Metrics
    # The chosen strategy's output before the post-hoc calibrator (equals strategies[chosen]).
    ensemble_before_calibration: Metrics
    calibration: str
    members: dict[str, Metrics]
    strategies: dict[str, Metrics]
    best_member: str
    lift_over_best_member: Metrics
    agreement: dict[str, Any]  # over the served members
    served_members: list[str]
    pruned_members: dict[str, str]  # evaluated but given no say: name -> reason
    model_selection: bool  # one member served: no combination beat it beyond fold noise
    selection: SelectionEvidence
    lineage: dict[str, Any]

    def document(self) -> dict[str, Any]:
        """The JSON document (the same keys and values validation.json has always held)."""
        return self.model_dump()

    @classmethod
    def read(cls, path: Path) -> ValidationReport:
        """The report in `path`; one that cannot be read (edited, damaged) is refused naming the file."""
        try:
            return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # pydantic's ValidationError and UnicodeDecodeError are ValueErrors
            raise PlatformError(f"validation report {path} is unreadable ({first_line(exc)}); rerun the version's ensemble "
                                "job to write it again") from exc


def validation_report(
    config: EnsembleConfig,
    candidates: CandidateSet,
    member_holdout: dict[str, np.ndarray],
    ensemble_holdout: np.ndarray,
    ensemble_uncalibrated: np.ndarray,
    y_holdout: np.ndarray,
    X_holdout: pd.DataFrame,
    lineage: dict[str, object],
    members_oof: dict[str, dict[str, float]],
    ensemble_oof: dict[str, float],
) -> ValidationReport:
    """The validation.json report (schema documented in README; `.document()` is what is written).

    `members_oof` and `ensemble_oof` are out-of-fold metrics of the training rows (the served
    ensemble's: chosen strategy and calibrator, cross-validated): the evidence the release gates
    compare, beside the holdout."""
    H = np.column_stack(list(member_holdout.values()))
    served = np.column_stack([member_holdout[m.name] for m in config.members])  # pruned members have no say
    members = {name: binary_metrics(y_holdout, p) for name, p in member_holdout.items()}
    strategies = {
        name: binary_metrics(
            y_holdout, ev.combiner.positive_proba(H, X_holdout if ev.combiner.needs_features else None)
        )
        for name, ev in candidates.candidates.items()
    }
    ensemble = binary_metrics(y_holdout, ensemble_holdout)
    best_member = min(members, key=lambda n: members[n]["log_loss"])
    lift = {
        metric: (members[best_member][metric] - ensemble[metric]) if metric in LOWER_IS_BETTER
        else (ensemble[metric] - members[best_member][metric])
        for metric in METRIC_NAMES
    }
    return ValidationReport(
        schema_version=SCHEMA_VERSION,
        dataset=config.dataset,
        ensemble_version=config.version,
        config_hash=config.config_hash,
        chosen=config.strategy,
        ensemble=ensemble,
        ensemble_before_calibration=binary_metrics(y_holdout, ensemble_uncalibrated),
        calibration=str(config.calibration.get("method", "none")),
        members=members,
        strategies=strategies,
        best_member=best_member,
        lift_over_best_member=lift,
        agreement=agreement_summary(served, ensemble_holdout, config.agreement_threshold, config.decision_threshold),
        served_members=[m.name for m in config.members],
        pruned_members={m.name: m.reason for m in config.pruned},
        model_selection=config.model_selection,
        selection=SelectionEvidence(
            criterion=candidates.criterion,
            rule=SELECTION_RULE,
            best_out_of_fold=candidates.best,
            order_of_simplicity=[name for name in candidates.candidates if candidates.is_eligible(name)],
            noise=candidates.noise_table(),
            evidence="out_of_fold_cross_validation",
            folds=int(str(lineage.get("folds", 0))),
            out_of_fold=candidates.evidence_table(),
            members_out_of_fold=members_oof,
            ensemble_out_of_fold=ensemble_oof,
            frontier=candidates.frontier_table(),
            max_cost_ratio=candidates.selection.max_cost_ratio if candidates.selection is not None else None,
        ),
        lineage=lineage,
    )


# Rows of the holdout re-scored through the runtime (members included) to check the scores
# validation derived from the stored member predictions; the bundle export re-scores all of them.
PARITY_SAMPLE_ROWS = 256


def parity_sample(n_rows: int, seed: int, size: int = PARITY_SAMPLE_ROWS) -> np.ndarray:
    """Sorted positions of a seeded sample of `size` rows (all rows when fewer)."""
    if n_rows <= size:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))


def sampled_parity_problems(
    score: Callable[[pd.DataFrame], pd.DataFrame], rows: pd.DataFrame, expected: pd.DataFrame, seed: int,
    size: int = PARITY_SAMPLE_ROWS,
) -> list[str]:
    """Where scoring a seeded sample of `rows` through `score` (the runtime with its members)
    differs from `expected` (the scores derived from the stored member predictions); empty when
    every column matches bit for bit. Scoring is batch-invariant, so a sample must match."""
    positions = parity_sample(len(rows), seed, size)
    got = score(rows.iloc[positions])
    want = expected.iloc[positions]
    problems = []
    for column in want.columns:
        if column not in got.columns:
            problems.append(f"column {column!r} is missing from the runtime's scores")
            continue
        differ = int((want[column].to_numpy() != got[column].to_numpy()).sum())
        if differ:
            problems.append(f"column {column!r} differs on {differ} of {len(positions)} sampled holdout rows")
    return problems
