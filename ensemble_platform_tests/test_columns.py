"""Tables as they come: sparse columns (profiled at training, batches checked against that
baseline), high-cardinality categoricals, identifiers, free text and dates; and a refused data
check a person can act on. All on tables built here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ensemble_platform.data.loading import load_dataset
from ensemble_platform.data.schema import MAX_CATEGORY_LEVELS, FeatureSchema, infer_schema
from ensemble_platform.data.spec import load_spec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.data.validation import NON_NULL, validate_table
from ensemble_platform.errors import DataError, DatasetSpecError
from ensemble_platform.evaluation.metrics import binary_metrics
from ensemble_platform.members.catalogue import MEMBER_NAMES
from ensemble_platform.members.training import fit_member

ROWS = 3000
LEVELS = 2000
WORDS = ["loan", "for", "the", "new", "car", "repair", "of", "my", "house", "wedding", "debt", "card",
         "school", "fees", "medical", "bills", "moving", "costs", "small", "business"]


def awkward_table(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """A table with every awkward column: 70% empty, ~2,000 levels, a row id (text and integer),
    free text and an ISO date; the label depends on the sparse column, the date and the title."""
    rng = np.random.default_rng(seed)
    # Every level at least once, the rest of the rows from the 40 most common ones.
    levels = np.concatenate([np.arange(LEVELS), rng.integers(0, 40, rows - LEVELS)])
    rng.shuffle(levels)
    income = rng.normal(0, 1, rows)
    months_since = np.where(rng.random(rows) < 0.7, np.nan, rng.exponential(12, rows))
    days = rng.integers(0, 3 * 365, rows)
    dates = pd.Timestamp("2021-01-01") + pd.to_timedelta(days, unit="D")
    logit = (1.2 * income + np.where(np.isnan(months_since), 0.0, 0.8 - np.nan_to_num(months_since) / 10)
             + 0.8 * (dates.month.to_numpy() >= 7) + 0.8 * (levels % 2 == 0) - 0.5)
    label = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({
        "row_number": np.arange(1, rows + 1),
        "application_id": [f"APP-{i:06d}" for i in rng.permutation(rows)],
        "income": income,
        "months_since_delinquency": months_since,
        "job_title": [f"title {i}" for i in levels],
        "purpose": [" ".join(rng.choice(WORDS, rng.integers(5, 10))) for _ in range(rows)],
        "applied_on": dates.strftime("%Y-%m-%d"),
        "outcome": np.where(label, "default", "repaid"),
    })


def awkward_spec(directory: Path, table: pd.DataFrame, **overrides) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    table.to_csv(directory / "data.csv", index=False)
    spec = {"name": "awkward", "source": "data.csv", "target": "outcome", "positive_label": "default",
            "folds": 3, "seed": 0, **overrides}
    (directory / "spec.yaml").write_text(yaml.safe_dump(spec))
    return directory / "spec.yaml"


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    spec = load_spec(awkward_spec(tmp_path_factory.mktemp("awkward"), awkward_table()))
    return spec, load_dataset(spec)


def test_inference_recognises_and_reports_ids_text_dates_sparse_and_wide_columns(awkward):
    spec, table = awkward
    schema = infer_schema(table, spec)
    assert "identifier-like" in schema.excluded["row_number"]
    assert "identifier-like" in schema.excluded["application_id"]
    assert "free text" in schema.excluded["purpose"]
    assert "date/time" in schema.excluded["applied_on"]
    assert {"applied_on_year", "applied_on_month", "applied_on_day_of_week", "applied_on_days"} <= set(schema.numeric)
    assert table.loc[0, "applied_on_year"] == pd.Timestamp(table.loc[0, "applied_on"]).year
    assert "job_title" in schema.categorical and len(schema.categories["job_title"]) == LEVELS
    assert f"keep the {MAX_CATEGORY_LEVELS} most frequent" in schema.notes["job_title"]
    assert "months_since_delinquency" in schema.numeric
    assert "mostly empty: 70% missing" in schema.notes["months_since_delinquency"]
    assert schema.missing_share["months_since_delinquency"] == pytest.approx(0.7, abs=0.03)
    assert schema.missing_share["income"] == 0.0
    assert ["purpose", "not used", schema.excluded["purpose"]] in schema.inference_rows()
    # Stored with the reference (and in the runtime) as JSON: nothing is lost on the way back.
    assert FeatureSchema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    # The training table is the baseline: a 70%-empty feature passes the training suite.
    assert validate_table(table, spec, schema).success


def test_every_member_trains_on_sparse_wide_id_text_and_date_columns(awkward):
    spec, table = awkward
    split = split_dataset(table, spec)
    for name in MEMBER_NAMES:
        fit = fit_member(name, split, seed=0)
        assert np.isfinite(fit.oof_proba).all() and np.isfinite(fit.holdout_proba).all(), name
        assert binary_metrics(split.y_holdout, fit.holdout_proba)["roc_auc"] > 0.65, name
        # A title never seen in training still scores.
        unseen = split.X_holdout().head(3).assign(job_title="title never seen")
        assert np.isfinite(fit.pipeline.predict_proba(unseen)).all(), name


def test_spec_overrides_inference_and_unknown_fields_are_still_refused(tmp_path):
    table = awkward_table(rows=2400).assign(applied_on=lambda t: pd.to_datetime(t["applied_on"]).dt.strftime("%d %b %Y"))
    spec = load_spec(awkward_spec(tmp_path / "a", table, categorical=["application_id"], datetime=["applied_on"],
                                  text=["job_title"], columns={"drop_missing_above": 0.6}))
    schema = infer_schema(load_dataset(spec), spec)
    assert "application_id" in schema.categorical
    assert "applied_on_month" in schema.numeric and "spec field datetime" in schema.excluded["applied_on"]
    assert "spec field text" in schema.excluded["job_title"]
    assert "columns.drop_missing_above" in schema.excluded["months_since_delinquency"]
    not_a_date = table.assign(applied_on=table["applied_on"].where(table.index != 7, "soon"))
    with pytest.raises(DataError, match=r"column 'applied_on' is a date/time column .* \['soon'\]"):
        load_dataset(load_spec(awkward_spec(tmp_path / "d", not_a_date, datetime=["applied_on"])))
    with pytest.raises(DatasetSpecError, match="columns.colour"):
        load_spec(awkward_spec(tmp_path / "b", table, columns={"colour": 1}))
    with pytest.raises(DatasetSpecError, match="'text' and 'datetime'"):
        load_spec(awkward_spec(tmp_path / "c", table, text=["purpose"], datetime=["purpose"]))


def test_a_batch_is_checked_against_the_training_missingness_with_a_tolerance(awkward):
    spec, table = awkward
    split = split_dataset(table, spec)
    labels = sorted(split.train[spec.target].unique())
    batch = split.holdout.drop(columns=[c for c in split.holdout.columns if c.startswith("applied_on_")])

    def failures(frame: pd.DataFrame):
        result = validate_table(frame, spec, split.schema, suite_name="b", labels=labels)
        return {o.column: o for o in result.failures if o.expectation == NON_NULL}

    # The holdout keeps the training missingness (the date parts are derived from the raw column).
    assert validate_table(batch, spec, split.schema, suite_name="b", labels=labels).success
    assert failures(batch.head(12)) == {}  # a small batch of a sparse column: sampling noise is allowed
    filled = batch.assign(months_since_delinquency=3.0)  # 0% missing where training had 70%
    emptied = batch.assign(income=lambda t: t["income"].where(np.arange(len(t)) % 2 == 0))  # 50% where 0%
    assert set(failures(filled)) == {"months_since_delinquency"}
    outcome = failures(emptied)["income"]
    assert "training rows: 1.0" in outcome.expected and outcome.observed.startswith("0.5")
    assert "columns.missing_tolerance" in outcome.remedy
    # ... and within a wider tolerance the same batch passes.
    wider = spec.model_copy(update={"columns": spec.columns.model_copy(update={"missing_tolerance": 0.6})})
    assert validate_table(emptied, wider, split.schema, suite_name="b", labels=labels).success


def test_a_nearly_empty_training_column_fails_naming_the_spec_fields(awkward):
    spec, table = awkward
    nearly_empty = table.assign(joint_income=np.where(np.arange(len(table)) % 50 == 0, 1.0, np.nan))
    result = validate_table(nearly_empty, spec, infer_schema(nearly_empty, spec))
    [failure] = result.failures
    assert failure.column == "joint_income" and failure.observed == "0.02"
    assert "at least 0.05" in failure.expected and "'drop'" in failure.remedy
    assert "columns.max_missing_share" in failure.remedy


def test_a_refused_demo_ends_with_the_failing_expectation_and_no_traceback(tmp_path, credit_slice):
    from ensemble_platform_tests.conftest import write_spec

    table = credit_slice.assign(JointIncome=np.where(np.arange(len(credit_slice)) % 50 == 0, 1.0, np.nan))
    spec_path = write_spec(tmp_path / "dataset", table)
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "ENSEMBLE_PLATFORM_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    (home / "dagster").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "ensemble_platform.cli", "--home", str(home), "demo",
                           "--dataset", str(spec_path)], capture_output=True, text=True, env=env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and "Stack Trace" not in output
    last = done.stderr.strip().splitlines()[-3:]
    assert "raw_dataset_expectations failed" in last[1]
    assert "column JointIncome" in last[2] and "expected a non-null share at least 0.05" in last[2]
    assert "observed 0.02" in last[2] and "columns.max_missing_share" in last[2]
    assert "Traceback" in (home / "logs" / "cli.log").read_text()
