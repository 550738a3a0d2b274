"""Shadow comparison: what a staging candidate scored beside production (`serve --shadow VERSION`), read
back from the decision log, per (production version, candidate version) pair.

For a pair: how many production decisions were shadowed and over which period, how many the candidate
could not score (and why), the flip rate (share of scored decisions whose class the candidate decides
differently), the probability differences (candidate minus production: mean, mean / p95 / max of the
absolute difference), both versions' mean member agreement, and, for decisions with a known outcome,
both versions' ROC AUC, log loss and accuracy on those very decisions. An `outcome` record's label is
the outcome; a reviewer's resolution (`review_resolve`, its `decision`) stands in for a decision without
one. `shadow_gate` judges the evidence against the spec's `operations.shadow` policy.

Pure functions over entries (`compare`, `compare_all`), and readers of a platform home's log
(`read_evidence`, `read_all_evidence`) that open the keyed store read-only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from ensemble_platform.decisions.log import decision_log_exists, open_decision_store
from ensemble_platform.decisions.outcomes import decision_labels
from ensemble_platform.decisions.production_performance import model_performance
from ensemble_platform.decisions.records import (
    AGREEMENT,
    CANDIDATE_VERSION,
    CONFIG_HASH,
    CREATED_AT,
    DATASET,
    DECISION,
    DECISION_ID,
    ERROR,
    ERROR_KIND,
    KIND,
    KIND_OUTCOME,
    KIND_REVIEW_RESOLVE,
    KIND_SHADOW,
    LABEL_SOURCE_REGISTERED,
    LABEL_SOURCE_REVIEWER,
    LAG_MS,
    MANIFEST_SHA256,
    PROBABILITY,
    PRODUCTION_AGREEMENT,
    PRODUCTION_DECISION,
    PRODUCTION_PROBABILITY,
    PRODUCTION_VERSION,
)
from ensemble_platform.policy import ShadowGatePolicy
from ensemble_platform.settings import PlatformPaths

SHADOW_KINDS = (KIND_SHADOW, KIND_OUTCOME, KIND_REVIEW_RESOLVE)
SECONDS_PER_DAY = 86_400.0


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProbabilityDifference(_Frozen):
    """Candidate minus production probability over the scored decisions."""

    mean: float
    mean_abs: float
    p95_abs: float
    max_abs: float


class VersionMetrics(_Frozen):
    """One version's metrics on the labelled shadowed decisions (`roc_auc` None with one class only)."""

    roc_auc: float | None
    log_loss: float
    accuracy: float


class OutcomeComparison(_Frozen):
    """Both versions on the same labelled decisions."""

    labelled: int
    from_outcomes: int
    from_reviews: int
    positives: int
    production: VersionMetrics
    candidate: VersionMetrics


class ShadowEvidence(_Frozen):
    """Everything the decision log says about one candidate shadowing one production version."""

    dataset: str
    production_version: str
    candidate_version: str
    candidate_config_hashes: list[str]
    candidate_manifests: list[str]
    shadowed: int  # production decisions with a shadow record of this pair
    scored: int  # ... that the candidate scored
    failed: int  # ... that the candidate could not score
    errors_by_kind: dict[str, int]
    error_rate: float | None
    first_at: str | None
    last_at: str | None
    days: float
    flips: int
    flips_to_positive: int  # production 0, candidate 1
    flips_to_negative: int  # production 1, candidate 0
    flip_rate: float | None
    decision_agreement: float | None  # 1 - flip rate
    probability_difference: ProbabilityDifference | None
    production_agreement_mean: float | None
    candidate_agreement_mean: float | None
    lag_ms_p50: float | None
    lag_ms_max: float | None
    outcomes: OutcomeComparison | None

    def summary(self) -> str:
        flip = "–" if self.flip_rate is None else f"{self.flip_rate:.4f}"
        diff = self.probability_difference
        parts = [f"{self.candidate_version} shadowing {self.production_version}: {self.shadowed} decision(s) over "
                 f"{self.days:.2f} day(s), {self.scored} scored, {self.failed} failed; flip rate {flip}"]
        if diff is not None:
            parts.append(f"|probability difference| mean {diff.mean_abs:.4f}, p95 {diff.p95_abs:.4f}, "
                         f"max {diff.max_abs:.4f}")
        if self.outcomes is not None:
            o = self.outcomes
            parts.append(f"{o.labelled} labelled: log loss {o.production.log_loss:.4f} (production) vs "
                         f"{o.candidate.log_loss:.4f} (candidate), accuracy {o.production.accuracy:.4f} vs "
                         f"{o.candidate.accuracy:.4f}")
        return "; ".join(parts)


# --- from entries ---------------------------------------------------------------------------------

def _labels(entries: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, str]]:
    """decision id -> (label, source), by the outcomes' rule: a registered outcome wins over a reviewer's."""
    registered, reviewer = decision_labels(entries)
    labels = {d: (label, LABEL_SOURCE_REVIEWER) for d, label in reviewer.items()}
    labels.update({d: (label, LABEL_SOURCE_REGISTERED) for d, label in registered.items()})
    return labels


def _pair(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(entry.get(DATASET)), str(entry.get(PRODUCTION_VERSION)), str(entry.get(CANDIDATE_VERSION))


def _metrics(labels: np.ndarray, probability: np.ndarray, decision: np.ndarray) -> VersionMetrics:
    figures = model_performance(labels, probability, decision)
    return VersionMetrics(roc_auc=figures.roc_auc, log_loss=float(figures.log_loss or 0.0),
                          accuracy=float(figures.accuracy or 0.0))


def _outcomes(scored: list[Mapping[str, Any]], labels: Mapping[str, tuple[int, str]]) -> OutcomeComparison | None:
    known = [(entry, labels[entry[DECISION_ID]]) for entry in scored if entry[DECISION_ID] in labels]
    if not known:
        return None
    y = np.array([label for _, (label, _) in known], dtype=float)

    def column(name: str) -> np.ndarray:
        return np.array([float(entry[name]) for entry, _ in known])

    sources = [source for _, (_, source) in known]
    return OutcomeComparison(
        labelled=len(known), from_outcomes=sources.count(LABEL_SOURCE_REGISTERED),
        from_reviews=sources.count(LABEL_SOURCE_REVIEWER), positives=int(y.sum()),
        production=_metrics(y, column(PRODUCTION_PROBABILITY), column(PRODUCTION_DECISION)),
        candidate=_metrics(y, column(PROBABILITY), column(DECISION)),
    )


def _days(first: str | None, last: str | None) -> float:
    if first is None or last is None:
        return 0.0
    return max(0.0, (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds() / SECONDS_PER_DAY)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _evidence(pair: tuple[str, str, str], shadows: list[Mapping[str, Any]],
              labels: Mapping[str, tuple[int, str]]) -> ShadowEvidence:
    dataset, production_version, candidate_version = pair
    scored: list[Mapping[str, Any]] = []
    failed: list[Mapping[str, Any]] = []
    for entry in shadows:
        (scored if entry.get(ERROR) is None and entry.get(PROBABILITY) is not None else failed).append(entry)
    errors: dict[str, int] = {}
    for entry in failed:
        errors[str(entry.get(ERROR_KIND))] = errors.get(str(entry.get(ERROR_KIND)), 0) + 1
    production_decision = np.array([int(e[PRODUCTION_DECISION]) for e in scored], dtype=int)
    candidate_decision = np.array([int(e[DECISION]) for e in scored], dtype=int)
    to_positive = int(np.sum((production_decision == 0) & (candidate_decision == 1)))
    to_negative = int(np.sum((production_decision == 1) & (candidate_decision == 0)))
    flips = to_positive + to_negative
    difference = np.array([float(e[PROBABILITY]) - float(e[PRODUCTION_PROBABILITY]) for e in scored])
    times = sorted(str(e[CREATED_AT]) for e in shadows)
    lags = [float(e[LAG_MS]) for e in shadows if isinstance(e.get(LAG_MS), (int, float))]
    return ShadowEvidence(
        dataset=dataset, production_version=production_version, candidate_version=candidate_version,
        candidate_config_hashes=sorted({str(e.get(CONFIG_HASH)) for e in shadows}),
        candidate_manifests=sorted({str(e.get(MANIFEST_SHA256)) for e in shadows}),
        shadowed=len(shadows), scored=len(scored), failed=len(failed), errors_by_kind=dict(sorted(errors.items())),
        error_rate=len(failed) / len(shadows) if shadows else None,
        first_at=times[0] if times else None, last_at=times[-1] if times else None,
        days=_days(times[0] if times else None, times[-1] if times else None),
        flips=flips, flips_to_positive=to_positive, flips_to_negative=to_negative,
        flip_rate=flips / len(scored) if scored else None,
        decision_agreement=1 - flips / len(scored) if scored else None,
        probability_difference=None if not scored else ProbabilityDifference(
            mean=float(np.mean(difference)), mean_abs=float(np.mean(np.abs(difference))),
            p95_abs=float(np.quantile(np.abs(difference), 0.95)), max_abs=float(np.max(np.abs(difference)))),
        production_agreement_mean=_mean([float(e[PRODUCTION_AGREEMENT]) for e in scored]),
        candidate_agreement_mean=_mean([float(e[AGREEMENT]) for e in scored if e.get(AGREEMENT) is not None]),
        lag_ms_p50=float(np.median(lags)) if lags else None, lag_ms_max=max(lags) if lags else None,
        outcomes=_outcomes(scored, labels),
    )


def compare_all(entries: Iterable[Mapping[str, Any]], dataset: str | None = None,
                config_hash: str | None = None) -> list[ShadowEvidence]:
    """The evidence of every (production, candidate) pair in `entries` (of `dataset`, of candidates with
    `config_hash`, when given), sorted by dataset, production, candidate. One shadow record per
    decision and pair counts (the first)."""
    materialised = list(entries)
    labels = _labels(materialised)
    shadows: dict[tuple[str, str, str], dict[str, Mapping[str, Any]]] = {}
    for entry in materialised:
        if entry.get(KIND) != KIND_SHADOW or (dataset is not None and entry.get(DATASET) != dataset):
            continue
        if config_hash is not None and entry.get(CONFIG_HASH) != config_hash:
            continue
        shadows.setdefault(_pair(entry), {}).setdefault(str(entry.get(DECISION_ID)), entry)
    return [_evidence(pair, list(by_decision.values()), labels) for pair, by_decision in sorted(shadows.items())]


def compare(entries: Iterable[Mapping[str, Any]], dataset: str, production_version: str, candidate_version: str,
            config_hash: str | None = None) -> ShadowEvidence | None:
    """The evidence of one pair, None when the entries hold no shadow record of it."""
    for evidence in compare_all(entries, dataset, config_hash):
        if (evidence.production_version, evidence.candidate_version) == (production_version, candidate_version):
            return evidence
    return None


# --- the gate -----------------------------------------------------------------------------------

def _floor(value: float, digits: int = 1) -> str:
    """Rounded down: 6.96 days is not shown as the 7.0 it falls short of."""
    scale = 10 ** digits
    return f"{math.floor(value * scale) / scale:.{digits}f}"


def shadow_gate(evidence: ShadowEvidence | None, policy: ShadowGatePolicy) -> tuple[bool, list[str]]:
    """(passed, what is missing) of the candidate's shadow evidence against `policy`; passes when the
    policy requires nothing (the default)."""
    if not policy.required:
        return True, []
    if evidence is None or evidence.scored == 0:
        seen = "" if evidence is None else f" ({evidence.shadowed} shadowed, every one failed: {evidence.errors_by_kind})"
        return False, ["no shadow evidence: the candidate has scored no production decision" + seen
                       + "; serve it beside production with `serve --shadow VERSION`"]
    reasons = []
    if policy.min_days is not None and evidence.days < policy.min_days:
        reasons.append(f"shadowed {_floor(evidence.days)} of {policy.min_days:g} days")
    if evidence.scored < policy.min_decisions:
        reasons.append(f"shadowed {evidence.scored} of {policy.min_decisions} decisions")
    if policy.max_flip_rate is not None and evidence.flip_rate is not None and evidence.flip_rate > policy.max_flip_rate:
        reasons.append(f"flip rate {evidence.flip_rate:.3g} > {policy.max_flip_rate:.3g}")
    return not reasons, reasons


# --- from a platform home -----------------------------------------------------------------------

def _entries(paths: PlatformPaths) -> list[dict[str, Any]] | None:
    if not decision_log_exists(paths):
        return None
    with open_decision_store(paths) as store:
        return list(store.iter_kinds(SHADOW_KINDS))


def read_all_evidence(paths: PlatformPaths, dataset: str, config_hash: str | None = None) -> list[ShadowEvidence]:
    """Every pair's evidence of `dataset` in the home's decision log (none without a log)."""
    entries = _entries(paths)
    return [] if entries is None else compare_all(entries, dataset, config_hash)


def read_evidence(paths: PlatformPaths, dataset: str, production_version: str, candidate_version: str,
                  config_hash: str | None = None) -> ShadowEvidence | None:
    entries = _entries(paths)
    return None if entries is None else compare(entries, dataset, production_version, candidate_version, config_hash)
