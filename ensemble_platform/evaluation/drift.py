"""Drift of a new data batch against the training reference, measured by Evidently, and the
decision whether it is drift enough to retrain.

Evidently (0.7, `evidently.Report` with `DataDriftPreset` and `ValueDrift`) chooses each
column's test by type and sample size (K-S / chi-square / Z-test p-values on small samples,
Wasserstein / Jensen-Shannon distances on large ones) and says per column whether it drifted;
we read its verdicts, not its raw scores, so the meaning of "drifted" stays Evidently's.
Prediction drift is the drift of the serving ensemble's probability on the batch against its
probability on the training rows; target drift is measured when the batch carries labels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pandas as pd

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
    for column in [*schema.categorical, *([target] if target else [])]:
        frame[column] = [None if pd.isna(v) else str(v) for v in table[column].to_numpy(dtype=object)]
    return frame


def _run(metrics: list, reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str],
         categorical: list[str]):
    from evidently import DataDefinition, Dataset, Report

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Evidently warns about its own pandas idioms
        return Report(metrics, include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )


def drift_report(inputs: DriftInputs, policy: DriftPolicy) -> tuple[dict, dict]:
    """({"data": snapshot, "prediction": snapshot or absent}, summary). The summary holds every
    feature column's verdict, the share of drifted feature columns, and the prediction and target
    verdicts (None when not measured)."""
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    target = inputs.target if inputs.target and inputs.target in inputs.current.columns else None
    features = list(inputs.schema.features)
    metrics = [DataDriftPreset(columns=features, drift_share=policy.max_drifted_share, num_method=policy.num_method,
                               cat_method=policy.cat_method, threshold=policy.column_threshold)]
    if target:
        metrics.append(ValueDrift(column=target, method=policy.cat_method, threshold=policy.column_threshold))
    snapshots = {"data": _run(metrics, _features(inputs.reference, inputs.schema, target),
                              _features(inputs.current, inputs.schema, target),
                              list(inputs.schema.numeric), [*inputs.schema.categorical, *([target] if target else [])])}
    document = snapshots["data"].dict()
    if inputs.reference_prediction is not None and inputs.current_prediction is not None:
        snapshots["prediction"] = _run(
            [ValueDrift(column=PREDICTION, method=policy.num_method, threshold=policy.column_threshold)],
            pd.DataFrame({PREDICTION: pd.Series(inputs.reference_prediction, dtype=float).to_numpy()}),
            pd.DataFrame({PREDICTION: pd.Series(inputs.current_prediction, dtype=float).to_numpy()}),
            [PREDICTION], [])
        prediction = snapshots["prediction"].dict()
        document = {"metrics": document["metrics"] + prediction["metrics"],
                    "tests": document["tests"] + prediction["tests"]}
    return snapshots, summarise(document, features, target, len(inputs.reference), len(inputs.current))


def summarise(document: dict, features: list[str], target: str | None, reference_rows: int,
              current_rows: int) -> dict:
    """Our summary of an Evidently snapshot's dict: per-column score, method, threshold, verdict."""
    verdicts = {}
    for test in document["tests"]:
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith("ValueDrift"):
            verdicts[params["column"]] = str(getattr(test["status"], "value", test["status"])) == "FAIL"
    columns = {}
    for metric in document["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            column = config["column"]
            columns[column] = {"score": float(metric["value"]), "method": config.get("method"),
                               "threshold": config.get("threshold"), "drifted": verdicts.get(column, False)}
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
            reasons.append(f"{kind} drift ({measured['method']} {measured['score']:.4g}, threshold {measured['threshold']})")
    if reasons:
        return True, reasons
    return False, [f"{summary['drifted_count']} of {len(summary['columns'])} feature columns drifted "
                   f"({summary['drifted_share']:.0%} <= {policy.max_drifted_share:.0%}); no prediction or "
                   "target drift that triggers"]
