"""Group fairness of binary decisions: per-group rates, fairness gaps and their policy status.

Sensitive attributes are turned into group labels by a binning fitted on the training rows only,
so holdout and later batches are grouped the same way. The report measures every model (the
ensemble and each member) so a reviewer can see whether one member's bias drives the ensemble's.
Gaps are judged only over groups large enough to give stable rates; thin groups are still listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import SupportsFloat, TypedDict

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ensemble_platform.errors import DataError
from ensemble_platform.evaluation.metrics import expected_calibration_error
from ensemble_platform.policy import FairnessPolicy, Status, worst_status

MISSING_GROUP = "missing"
ENSEMBLE_KEY = "ensemble"
STATUSES: tuple[str, ...] = ("pass", "warn", "fail", "thin")
_BIN_DASH = " – "


# ---------------------------------------------------------------------------------------------
# Sensitive attribute binning
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensitiveBinning:
    """How one sensitive column is turned into group labels.

    Numeric columns use left-closed bins [a, b) whose edges come from the training rows; the
    outer edges are -inf/+inf so values outside the training range still land in a bin.
    Categorical columns pass through as text. Missing values become their own group.
    """

    column: str
    kind: str  # "categorical" | "numeric"
    edges: tuple[float, ...] = ()  # numeric only, incl. the -inf/+inf outer edges
    categories: tuple[str, ...] = ()  # categorical only: labels seen in training (for describe)

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "numeric"):
            raise ValueError(f"binning of {self.column!r}: kind must be 'categorical' or 'numeric', "
                             f"got {self.kind!r}")
        if self.kind == "numeric" and (len(self.edges) < 3 or list(self.edges) != sorted(set(self.edges))):
            raise ValueError(f"binning of {self.column!r}: numeric edges must be strictly increasing "
                             f"and include -inf/+inf plus at least one inner edge, got {self.edges}")

    def labels(self) -> list[str]:
        """Group labels in their natural order (bins low to high; 'missing' is not listed)."""
        if self.kind == "categorical":
            return list(self.categories)
        return _bin_labels(self.edges)

    def assign(self, values: pd.Series) -> pd.Series:
        """Group label (str) per row, keeping the index of `values`; NaN -> 'missing'."""
        if self.kind == "categorical":
            labels = [MISSING_GROUP if _is_missing(v) else _category_label(v) for v in values]
        else:
            labels = self._assign_numeric(values)
        return pd.Series(labels, index=values.index, name=self.column, dtype=object)

    def _assign_numeric(self, values: pd.Series) -> list[str]:
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise DataError(
                f"sensitive column {self.column!r} was binned as numeric on the training rows but "
                f"these values have dtype {values.dtype}; expected numbers"
            )
        numbers = values.to_numpy(dtype=float, na_value=np.nan)
        inner = np.asarray(self.edges[1:-1], dtype=float)
        # side="right": a value equal to an edge belongs to the bin that starts there ([a, b)).
        positions = np.searchsorted(inner, numbers, side="right")
        names = _bin_labels(self.edges)
        return [MISSING_GROUP if math.isnan(x) else names[p] for x, p in zip(numbers, positions)]

    def describe(self) -> dict[str, object]:
        """JSON-ready summary; only the finite inner edges are listed (JSON has no infinity)."""
        return {
            "column": self.column,
            "kind": self.kind,
            "edges": [float(e) for e in self.edges[1:-1]],
            "labels": self.labels(),
            "missing_label": MISSING_GROUP,
        }


def fit_sensitive_binning(train: pd.DataFrame, column: str, n_bins: int) -> SensitiveBinning:
    """Fit the binning of `column` on the training rows (never on holdout rows: no leakage)."""
    if column not in train.columns:
        raise DataError(
            f"sensitive column {column!r} is not in the training table; "
            f"available columns: {sorted(map(str, train.columns))}"
        )
    if n_bins < 2:
        raise ValueError(f"n_bins for sensitive column {column!r} must be >= 2, got {n_bins}")
    values = train[column]
    present = values.dropna()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and present.nunique() > n_bins:
        return SensitiveBinning(column=column, kind="numeric", edges=_quantile_edges(present, n_bins))
    categories = sorted({_category_label(v) for v in present}, key=_group_sort_key)
    return SensitiveBinning(column=column, kind="categorical", categories=tuple(categories))


def _quantile_edges(values: pd.Series, n_bins: int) -> tuple[float, ...]:
    numbers = values.to_numpy(dtype=float)
    quantiles = np.quantile(numbers, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    # In a skewed column a quantile can equal the training minimum; that edge would open a bin
    # "< min" holding no training rows. Cut just above the minimum instead (the caller
    # guarantees more than n_bins distinct values, so a next value exists).
    lowest = numbers.min()
    quantiles[quantiles == lowest] = numbers[numbers > lowest].min()
    # Repeated quantiles would make empty bins with clashing labels.
    inner = np.unique(quantiles)
    return (-math.inf, *(float(e) for e in inner), math.inf)


def _bin_labels(edges: tuple[float, ...]) -> list[str]:
    inner = list(edges[1:-1])
    text = [f"{e:g}" for e in inner]
    if len(set(text)) < len(text):  # `:g` keeps 6 digits; close edges need full precision
        text = [repr(float(e)) for e in inner]
    middle = [f"{a}{_BIN_DASH}{b}" for a, b in zip(text, text[1:])]
    return [f"< {text[0]}", *middle, f">= {text[-1]}"]


def _category_label(value: object) -> str:
    # Integer codes read as floats (e.g. because of a NaN in the column) should still read "3".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (
        isinstance(value, float) and math.isnan(value)
    )


def _group_sort_key(label: str) -> tuple[int, float, str]:
    """Deterministic, readable group order: numeric bins low to high, other labels by number
    when they start with one, else alphabetically; 'missing' last."""
    if label == MISSING_GROUP:
        return (3, 0.0, label)
    if label.startswith("< "):
        return (0, 0.0, label)
    if label.startswith(">= "):
        return (2, 0.0, label)
    number = _leading_number(label)
    return (1, number if number is not None else math.inf, label)


def _leading_number(label: str) -> float | None:
    try:
        number = float(label.split(_BIN_DASH)[0])
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------------------
# Fairness report
# ---------------------------------------------------------------------------------------------


class GroupRow(TypedDict):
    """One group's rates for one model (a rate conditioned on an absent class is None)."""

    group: str
    count: int
    positives: int
    base_rate: float
    selection_rate: float
    true_positive_rate: float | None
    false_positive_rate: float | None
    roc_auc: float | None
    ece: float
    thin: bool
    thin_reason: str | None


class GapBounds(TypedDict):
    warn: float
    fail: float


class Gap(TypedDict):
    """One fairness gap of one model: its value (None when fewer than two groups are judged)."""

    value: float | None
    status: Status
    threshold: GapBounds


class AttributeReport(TypedDict):
    groups: dict[str, list[GroupRow]]  # model -> per-group rows
    judged_groups: list[str]
    gaps: dict[str, dict[str, Gap]]  # model -> gap name -> gap


class FairnessSummary(TypedDict):
    worst_status: str
    ensemble_worst_status: str
    status_counts: dict[str, int]
    dominant_member: dict[str, dict[str, str | None]]  # attribute -> gap name -> member


class FairnessNumbers(TypedDict):
    """What `fairness_report` returns (JSON-ready)."""

    decision_threshold: float
    policy: dict[str, object]
    attributes: dict[str, AttributeReport]
    summary: FairnessSummary


def fairness_report(
    y: np.ndarray,
    probas: dict[str, np.ndarray],
    groups: dict[str, pd.Series],
    policy: FairnessPolicy,
    decision_threshold: float = 0.5,
    *,
    calibration_bins: int = 10,
) -> FairnessNumbers:
    """Per-group metrics and policy-judged fairness gaps for every model, as a JSON-ready dict.

    `probas` maps model name -> positive-class probability ('ensemble' first, then members);
    `groups` maps sensitive attribute -> group label per row (positional, like `y`).
    """
    y_arr = _validate_labels(y)
    proba_arrs = _validate_probas(probas, len(y_arr))
    group_arrs = _validate_groups(groups, len(y_arr))
    if not 0.0 < decision_threshold < 1.0:
        raise ValueError(f"decision_threshold must be in (0, 1), got {decision_threshold}")

    attributes = {
        attr: _attribute_report(y_arr, proba_arrs, labels, policy, decision_threshold, calibration_bins)
        for attr, labels in group_arrs.items()
    }
    return {
        "decision_threshold": float(decision_threshold),
        "policy": policy.model_dump(mode="json"),
        "attributes": attributes,
        "summary": _summary(attributes, list(proba_arrs), policy),
    }


def _attribute_report(
    y: np.ndarray,
    probas: dict[str, np.ndarray],
    labels: np.ndarray,
    policy: FairnessPolicy,
    decision_threshold: float,
    calibration_bins: int,
) -> AttributeReport:
    # Thinness depends only on labels and groups, so every model is judged on the same groups.
    thin = _thin_reasons(y, labels, policy)
    judged = [g for g, reason in thin.items() if reason is None]
    tables: dict[str, list[GroupRow]] = {}
    gaps: dict[str, dict[str, Gap]] = {}
    for model, proba in probas.items():
        decisions = (proba >= decision_threshold).astype(int)
        tables[model] = _group_table(y, proba, decisions, labels, thin, calibration_bins)
        gaps[model] = _gaps(tables[model], policy)
    return {"groups": tables, "judged_groups": judged, "gaps": gaps}


def _thin_reasons(y: np.ndarray, labels: np.ndarray, policy: FairnessPolicy) -> dict[str, str | None]:
    """Group -> why it is too thin to judge (None when it is judged), in sorted group order."""
    reasons: dict[str, str | None] = {}
    for group in sorted(set(labels.tolist()), key=_group_sort_key):
        y_g = y[labels == group]
        positives = int(y_g.sum())
        negatives = len(y_g) - positives
        problems = []
        if len(y_g) < policy.min_group_size:
            problems.append(f"{len(y_g)} rows < min_group_size {policy.min_group_size}")
        # Rates conditioned on a class (TPR, FPR) are noise with only a few rows of that class.
        if positives < policy.min_group_class_count:
            problems.append(f"{positives} positives < min_group_class_count {policy.min_group_class_count}")
        if negatives < policy.min_group_class_count:
            problems.append(f"{negatives} negatives < min_group_class_count {policy.min_group_class_count}")
        reasons[group] = "; ".join(problems) or None
    return reasons


def _group_table(
    y: np.ndarray,
    proba: np.ndarray,
    decisions: np.ndarray,
    labels: np.ndarray,
    thin: dict[str, str | None],
    calibration_bins: int,
) -> list[GroupRow]:
    """Per-group rates, computed directly: fairlearn's MetricFrame gives the same numbers (a test
    checks) but costs ~0.1 s per frame, and a report needs models x attributes x gaps frames."""
    rows: list[GroupRow] = []
    for group, reason in thin.items():
        in_group = labels == group
        y_g, d_g, p_g = y[in_group], decisions[in_group], proba[in_group]
        n, positives = len(y_g), int(y_g.sum())
        rows.append({
            "group": group,
            "count": n,
            "positives": positives,
            "base_rate": float(y_g.mean()),
            "selection_rate": float(d_g.mean()),
            # A rate conditioned on an absent class is undefined, not 0.
            "true_positive_rate": float(d_g[y_g == 1].mean()) if positives > 0 else None,
            "false_positive_rate": float(d_g[y_g == 0].mean()) if positives < n else None,
            "roc_auc": float(roc_auc_score(y_g, p_g)) if 0 < positives < n else None,
            "ece": expected_calibration_error(y_g, p_g, n_bins=calibration_bins),
            "thin": reason is not None,
            "thin_reason": reason,
        })
    return rows


def _gaps(rows: list[GroupRow], policy: FairnessPolicy) -> dict[str, Gap]:
    """The policy's gaps between the judged groups (fairlearn's 'between_groups' definitions),
    each with its status and thresholds; 'thin' when fewer than two groups can be judged."""
    judged = [r for r in rows if not r["thin"]]
    values = _gap_values(judged) if len(judged) >= 2 else {}
    result: dict[str, Gap] = {}
    for name, threshold in policy.gap_thresholds().items():
        if name not in _GAP_NAMES:
            raise ValueError(f"fairness policy names gap {name!r}, which this report cannot compute; "
                             f"known gaps: {sorted(_GAP_NAMES)}")
        value = values.get(name)
        result[name] = {
            "value": value,
            "status": "thin" if value is None else threshold.status(value),
            "threshold": {"warn": threshold.warn, "fail": threshold.fail},
        }
    return result


_GAP_NAMES = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
              "equal_opportunity_difference")


def _gap_values(judged: list[GroupRow]) -> dict[str, float]:
    # Judged groups hold both classes (min_group_class_count >= 1), so TPR and FPR are defined.
    def spread(values: list[float]) -> float:
        return max(values) - min(values)

    def defined(value: float | None) -> float:
        if value is None:  # a judged group always holds both classes
            raise ValueError("a judged group has an undefined rate")
        return float(value)

    selection = [float(r["selection_rate"]) for r in judged]
    tpr = [defined(r["true_positive_rate"]) for r in judged]
    fpr = [defined(r["false_positive_rate"]) for r in judged]
    return {
        "demographic_parity_difference": spread(selection),
        # 0/0 when no group is selected at all: equal rates, so perfect parity.
        "demographic_parity_ratio": min(selection) / max(selection) if max(selection) > 0 else 1.0,
        "equalized_odds_difference": max(spread(tpr), spread(fpr)),
        "equal_opportunity_difference": spread(tpr),
    }


def _summary(attributes: dict[str, AttributeReport], models: list[str], policy: FairnessPolicy) -> FairnessSummary:
    statuses: list[str] = [
        gap["status"]
        for report in attributes.values()
        for model_gaps in report["gaps"].values()
        for gap in model_gaps.values()
    ]
    ensemble_statuses: list[str] = [
        gap["status"] for report in attributes.values() for gap in report["gaps"][ENSEMBLE_KEY].values()
    ]
    members = [m for m in models if m != ENSEMBLE_KEY]
    return {
        "worst_status": worst_status(statuses),
        "ensemble_worst_status": worst_status(ensemble_statuses),
        "status_counts": {s: statuses.count(s) for s in STATUSES},
        "dominant_member": {
            attr: _dominant_members(report["gaps"], members, policy) for attr, report in attributes.items()
        },
    }


def _dominant_members(
    gaps: dict[str, dict[str, Gap]], members: list[str], policy: FairnessPolicy
) -> dict[str, str | None]:
    """Per gap, the member with the worst value (largest difference, smallest ratio).

    Ties go to the earlier member; None when no member has a value (no members, or thin).
    """
    result: dict[str, str | None] = {}
    for name, threshold in policy.gap_thresholds().items():
        valued = [(value, m) for m in members if (value := gaps[m][name]["value"]) is not None]
        if not valued:
            result[name] = None
            continue
        sign = 1.0 if threshold.higher_is_worse else -1.0
        result[name] = max(valued, key=lambda vm: sign * vm[0])[1]  # max keeps the first on ties
    return result


def _json_float(value: SupportsFloat) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


def _validate_labels(y: np.ndarray) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"y must be a non-empty 1-d array of 0/1 labels, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(int)
    try:
        values = arr.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"y must contain only 0/1 labels, got dtype {arr.dtype}") from None
    bad = sorted(set(values[(values != 0) & (values != 1)].tolist()), key=str)
    if bad:
        raise ValueError(f"y must contain only 0/1 labels, got also {bad[:5]}")
    return values.astype(int)


def _validate_probas(probas: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    if ENSEMBLE_KEY not in probas:
        raise ValueError(f"probas must include the ensemble under key {ENSEMBLE_KEY!r}; got {list(probas)}")
    # Ensemble first, members in the caller's order: the report reads top-down the same way.
    ordered = [ENSEMBLE_KEY, *(m for m in probas if m != ENSEMBLE_KEY)]
    result = {}
    for model in ordered:
        arr = np.asarray(probas[model], dtype=float)
        if arr.ndim != 1 or len(arr) != n:
            raise ValueError(f"proba of model {model!r} has shape {arr.shape}; expected ({n},) like y")
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(f"proba of model {model!r} must be finite probabilities in [0, 1]")
        result[model] = arr
    return result


def _validate_groups(groups: dict[str, pd.Series], n: int) -> dict[str, np.ndarray]:
    # No attributes is allowed (a spec without sensitive columns): the report is then empty.
    result = {}
    for attr, labels in groups.items():
        if not isinstance(attr, str) or not attr:
            raise ValueError(f"sensitive attribute names must be non-empty strings, got {attr!r}")
        values = pd.Series(labels).reset_index(drop=True)  # positional, like y
        if len(values) != n:
            raise ValueError(f"groups of sensitive attribute {attr!r} have {len(values)} rows; "
                             f"expected {n} like y")
        if values.isna().any():
            raise ValueError(f"groups of sensitive attribute {attr!r} contain missing labels; "
                             f"label rows with SensitiveBinning.assign (NaN -> {MISSING_GROUP!r})")
        result[attr] = values.astype(str).to_numpy(dtype=object)
    return result
