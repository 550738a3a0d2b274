"""Drift of a new data batch against the training reference, measured by Evidently, and the
decision whether it is drift enough to retrain.

Evidently (0.7, `evidently.Report` with `DataDriftPreset` and `ValueDrift`) chooses each
column's test by type and sample size (K-S / chi-square / Z-test p-values on small samples,
Wasserstein / Jensen-Shannon distances on large ones) and says per column whether it drifted;
we read its verdicts, not its raw scores, so the meaning of "drifted" stays Evidently's.
Prediction drift is the drift of the serving ensemble's probability on the batch against its
probability on the training rows; target drift is measured when the batch carries labels.

Effect-size floor: a p-value test on a large batch rejects differences far too small to matter
(a 1M-row resample of the validated holdout had 4 of 11 columns flagged against the training
rows). So a column counts as drifted only when Evidently's test rejects AND its effect size,
computed here on the same data, reaches the policy's floor: the normed Wasserstein distance
(W1 / std of the reference) for numeric columns and the prediction, the Jensen-Shannon distance
of the category shares for categorical columns and the target.

Untrusted text: Evidently 0.7 writes its HTML with the data inside an inline `<script>` as JSON
that escapes no `</script>`, so a category value or column name from a batch could run script in
a reviewer's browser. Every name and category value we hand Evidently is made free of `<`, `>`
and `&` (fullwidth lookalikes, kept one-to-one so the tests see the same distributions), the
summary names the original columns, and the HTML written by `SafeSnapshot.save_html` has every
`<`, `>`, `&` in its embedded data JSON escaped as `\\u003c`, `\\u003e`, `\\u0026` as well.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from ensemble_platform.data.labels import label_text
from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.policy import DriftPolicy

PREDICTION = "prediction"


@dataclass(frozen=True)
class DriftInputs:
    reference: pd.DataFrame  # training rows: features (+ target)
    current: pd.DataFrame  # the batch: features (+ target when labelled)
    schema: FeatureSchema
    target: str | None = None  # measured when both frames carry it
    # The serving version's probabilities on rows it never trained on (its validated holdout),
    # and on the batch. Not its probabilities on its own training rows: refit members are
    # over-confident there, which would read as prediction drift on every batch.
    reference_prediction: pd.Series | None = None
    current_prediction: pd.Series | None = None


def _features(table: pd.DataFrame, schema: FeatureSchema, target: str | None) -> pd.DataFrame:
    """Features as Evidently should see them: numerics as floats, categories as text."""
    frame = pd.DataFrame(index=range(len(table)))
    for column in schema.numeric:
        frame[column] = pd.to_numeric(table[column], errors="coerce").astype(float).to_numpy()
    for column in schema.categorical:
        frame[column] = [None if pd.isna(v) else str(v) for v in table[column].to_numpy(dtype=object)]
    if target:
        frame[target] = [None if pd.isna(v) else label_text(v) for v in table[target].to_numpy(dtype=object)]
    return frame


# --- text handed to Evidently ------------------------------------------------------------------

_LOOKALIKES = str.maketrans({"<": "\uff1c", ">": "\uff1e", "&": "\uff06"})  # fullwidth < > &


def safe_label(text: str) -> str:
    """`text` without `<`, `>` or `&` (fullwidth lookalikes instead); other text unchanged."""
    return text.translate(_LOOKALIKES)


def safe_labels(texts: Iterable[str]) -> dict[str, str]:
    """Original -> safe text, one-to-one: a safe text that another original already has (that
    original used the fullwidth characters itself) gets a numbered suffix."""
    originals = list(dict.fromkeys(texts))
    result = {t: t for t in originals if safe_label(t) == t}  # clean texts keep their own name
    taken = set(result.values())
    for text in originals:
        if text in result:
            continue
        candidate, n = safe_label(text), 1
        while candidate in taken:
            n += 1
            candidate = f"{safe_label(text)} ({n})"
        result[text] = candidate
        taken.add(candidate)
    return result


def _safe_frames(reference: pd.DataFrame, current: pd.DataFrame, categorical: list[str],
                 names: Mapping[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames with safe column names and safe category values (the same mapping for both)."""
    reference, current = reference.copy(), current.copy()
    for column in categorical:
        values = [v for frame in (reference, current) for v in frame[column] if v is not None]
        mapping = safe_labels(sorted(set(values)))
        if any(k != v for k, v in mapping.items()):
            for frame in (reference, current):
                frame[column] = [None if v is None else mapping[v] for v in frame[column]]
    return reference.rename(columns=dict(names)), current.rename(columns=dict(names))


_DATA_BLOCK_END = "\n</script>\n    </head>\n    <body>\n    <div id=\"root_{id}\">"
_DASHBOARD_CALL = re.compile(r"window\.drawDashboard\((metric_[0-9a-f]{32}),")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def escape_embedded_data(html: str) -> str:
    """Evidently's standalone HTML with `<`, `>`, `&` in its embedded data escaped as JSON `\\u`
    escapes (they only occur inside JSON strings there, where the escape is the same text).

    The data block is found by the dashboard id (random, so no value from the data can forge
    it): from `var <id> = ` to the end of its `<script>` just before `<div id="root_<id>">`.
    Raises ValueError when that layout is not found (an Evidently upgrade changed it).
    """
    calls = _DASHBOARD_CALL.findall(html)
    if not calls:
        raise ValueError("Evidently's HTML has no drawDashboard call; cannot find its embedded data")
    dashboard = calls[-1]  # the page's own call comes after all data
    start = html.find(f"<script>\n    var {dashboard} = ")
    end = html.find(_DATA_BLOCK_END.format(id=dashboard), start)
    if start < 0 or end < 0:
        raise ValueError(f"Evidently's HTML layout changed: no data block of {dashboard}")
    body_start = start + len("<script>")
    data = re.sub(r"[<>&]", lambda m: _JSON_ESCAPES[m.group(0)], html[body_start:end])
    return html[:body_start] + data + html[end:]


class SafeSnapshot:
    """An Evidently snapshot whose HTML has its embedded data escaped (`escape_embedded_data`).
    Everything else (`dict`, `save_json`, ...) is the snapshot's own."""

    def __init__(self, snapshot: Any):
        self.snapshot = snapshot

    def __getattr__(self, name: str) -> Any:
        return getattr(self.snapshot, name)

    def get_html_str(self, as_iframe: bool = False) -> str:
        html = self.snapshot.get_html_str(as_iframe=as_iframe)
        return html if as_iframe else escape_embedded_data(html)

    def save_html(self, filename: str | Path) -> None:
        Path(filename).write_text(self.get_html_str(as_iframe=False), encoding="utf-8")

    def dict(self) -> dict:
        return self.snapshot.dict()

    def save_json(self, filename: str | Path) -> None:
        self.snapshot.save_json(str(filename))


# --- effect sizes ------------------------------------------------------------------------------

WASSERSTEIN = "wasserstein_normed"
JENSEN_SHANNON = "jensenshannon"


def normed_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein-1 distance in units of the reference's standard deviation (Evidently's
    "wasserstein" statistic; the std is floored at 0.001 as there). Missing values are left out."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return 0.0 if len(ref) == len(cur) else float("inf")
    return float(wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001))


def jensen_shannon(reference: Iterable[object], current: Iterable[object]) -> float:
    """Jensen-Shannon distance (natural log, as Evidently's "jensenshannon"; 0 to sqrt(ln 2))
    between the two category-share vectors over the categories of both; missing is a category."""
    ref = pd.Series(list(reference), dtype=object).value_counts(dropna=False)
    cur = pd.Series(list(current), dtype=object).value_counts(dropna=False)
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0 if ref.sum() == cur.sum() else float("inf")
    keys = sorted(set(ref.index) | set(cur.index), key=str)
    p = np.array([ref.get(k, 0) for k in keys], dtype=float)
    q = np.array([cur.get(k, 0) for k in keys], dtype=float)
    return float(jensenshannon(p / p.sum(), q / q.sum()))


def effect_size(reference: pd.Series, current: pd.Series, numeric: bool) -> tuple[str, float]:
    """(measure, value) of one column: normed Wasserstein when numeric, else Jensen-Shannon."""
    if numeric:
        return WASSERSTEIN, normed_wasserstein(reference.to_numpy(dtype=float), current.to_numpy(dtype=float))
    return JENSEN_SHANNON, jensen_shannon(reference.tolist(), current.tolist())


def effect_floor(measure: str, policy: DriftPolicy) -> float:
    return policy.num_effect_floor if measure == WASSERSTEIN else policy.cat_effect_floor


def counts_as_drifted(test_rejects: bool, effect: float, floor: float) -> bool:
    """The decision per column: the test rejects AND the effect is at least the floor."""
    return bool(test_rejects) and effect >= floor


def _run(metrics: list, reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str],
         categorical: list[str]) -> SafeSnapshot:
    from evidently import DataDefinition, Dataset, Report

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Evidently warns about its own pandas idioms
        return SafeSnapshot(Report(metrics, include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        ))


def drift_report(inputs: DriftInputs, policy: DriftPolicy) -> tuple[dict[str, SafeSnapshot], dict]:
    """({"data": snapshot, "prediction": snapshot or absent}, summary). The summary holds every
    feature column's verdict (test and effect size), the share of drifted feature columns, and the
    prediction and target verdicts (None when not measured), under the columns' own names."""
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    target = inputs.target if inputs.target and inputs.target in inputs.current.columns else None
    features = list(inputs.schema.features)
    numerical = list(inputs.schema.numeric)
    categorical = [*inputs.schema.categorical, *([target] if target else [])]
    reference = _features(inputs.reference, inputs.schema, target)
    current = _features(inputs.current, inputs.schema, target)
    effects = {c: effect_size(reference[c], current[c], numeric=c in numerical) for c in [*numerical, *categorical]}
    # Evidently sees safe names and values only; PREDICTION is ours, so it stays as it is.
    names = safe_labels([*numerical, *categorical])
    if PREDICTION in names.values() and names.get(PREDICTION) != PREDICTION:
        raise ValueError(f"a column's safe name clashes with {PREDICTION!r}")
    safe_reference, safe_current = _safe_frames(reference, current, categorical, names)
    safe_target = names[target] if target else None
    metrics = [DataDriftPreset(columns=[names[c] for c in features], drift_share=policy.max_drifted_share,
                               num_method=policy.num_method, cat_method=policy.cat_method,
                               threshold=policy.column_threshold)]
    if safe_target:
        metrics.append(ValueDrift(column=safe_target, method=policy.cat_method, threshold=policy.column_threshold))
    snapshots = {"data": _run(metrics, safe_reference, safe_current, [names[c] for c in numerical],
                              [names[c] for c in categorical])}
    document = snapshots["data"].dict()
    if inputs.reference_prediction is not None and inputs.current_prediction is not None:
        reference_prediction = pd.Series(inputs.reference_prediction, dtype=float).to_numpy()
        current_prediction = pd.Series(inputs.current_prediction, dtype=float).to_numpy()
        effects[PREDICTION] = (WASSERSTEIN, normed_wasserstein(reference_prediction, current_prediction))
        snapshots["prediction"] = _run(
            [ValueDrift(column=PREDICTION, method=policy.num_method, threshold=policy.column_threshold)],
            pd.DataFrame({PREDICTION: reference_prediction}), pd.DataFrame({PREDICTION: current_prediction}),
            [PREDICTION], [])
        prediction = snapshots["prediction"].dict()
        document = {"metrics": document["metrics"] + prediction["metrics"],
                    "tests": document["tests"] + prediction["tests"]}
    original = {safe: name for name, safe in names.items()}
    return snapshots, summarise(document, features, target, len(inputs.reference), len(inputs.current),
                                effects=effects, policy=policy, names=original)


def summarise(document: dict, features: list[str], target: str | None, reference_rows: int,
              current_rows: int, *, effects: Mapping[str, tuple[str, float]] | None = None,
              policy: DriftPolicy | None = None, names: Mapping[str, str] | None = None) -> dict:
    """Our summary of an Evidently snapshot's dict: per-column score, method, threshold, verdict.

    `names` maps the names Evidently saw back to the columns' own; with `effects` (column ->
    (measure, value)) and `policy`, a column is drifted only when its test rejects and its effect
    reaches the policy's floor (`test_drifted` keeps the test's verdict alone)."""
    names = names or {}
    verdicts = {}
    for test in document["tests"]:
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith("ValueDrift"):
            column = names.get(params["column"], params["column"])
            verdicts[column] = str(getattr(test["status"], "value", test["status"])) == "FAIL"
    columns: dict[str, dict[str, Any]] = {}
    for metric in document["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            column = names.get(config["column"], config["column"])
            rejects = verdicts.get(column, False)
            entry: dict[str, Any] = {"score": float(metric["value"]), "method": config.get("method"),
                                     "threshold": config.get("threshold"), "drifted": rejects}
            if effects is not None and policy is not None and column in effects:
                measure, value = effects[column]
                floor = effect_floor(measure, policy)
                entry |= {"test_drifted": rejects, "effect_measure": measure, "effect": value, "effect_floor": floor,
                          "drifted": counts_as_drifted(rejects, value, floor)}
            columns[column] = entry
    drifted = [c for c in features if columns.get(c, {}).get("drifted")]
    return {
        "reference_rows": reference_rows,
        "current_rows": current_rows,
        "columns": {c: columns[c] for c in features if c in columns},
        "drifted_columns": drifted,
        "drifted_count": len(drifted),
        "drifted_share": len(drifted) / len(features) if features else 0.0,
        "prediction": columns.get(PREDICTION),
        "target": columns.get(target) if target else None,
    }


def retraining_decision(summary: dict, policy: DriftPolicy) -> tuple[bool, list[str]]:
    """Whether this batch's drift crosses the policy's thresholds, and why (or why not)."""
    if summary["current_rows"] < policy.min_rows:
        return False, [f"batch of {summary['current_rows']} rows is below min_rows {policy.min_rows}: reported, "
                       "never a trigger"]
    reasons = []
    if summary["drifted_share"] > policy.max_drifted_share:
        reasons.append(f"{summary['drifted_count']} of {len(summary['columns'])} feature columns drifted "
                       f"({summary['drifted_share']:.0%} > {policy.max_drifted_share:.0%}): "
                       + ", ".join(summary["drifted_columns"]))
    for kind, triggers in (("prediction", policy.prediction_drift_triggers), ("target", policy.target_drift_triggers)):
        measured = summary.get(kind)
        if triggers and measured and measured["drifted"]:
            effect = (f"; {measured['effect_measure']} {measured['effect']:.3g} >= {measured['effect_floor']:g}"
                      if "effect" in measured else "")
            reasons.append(f"{kind} drift ({measured['method']} {measured['score']:.4g}, threshold "
                           f"{measured['threshold']}{effect})")
    if reasons:
        return True, reasons
    return False, [f"{summary['drifted_count']} of {len(summary['columns'])} feature columns drifted "
                   f"({summary['drifted_share']:.0%} <= {policy.max_drifted_share:.0%}); no prediction or "
                   "target drift that triggers"]
