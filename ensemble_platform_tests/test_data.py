"""Dataset specs, loading and splitting: bad input fails fast and clearly; the split is leak-free."""

import numpy as np
import pandas as pd
import pytest

from ensemble_platform.data.labels import label_text
from ensemble_platform.data.loading import binary_target, content_hash, load_dataset
from ensemble_platform.data.schema import infer_schema
from ensemble_platform.data.spec import load_spec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.data.validation import validate_table
from ensemble_platform.errors import DatasetSpecError
from ensemble_platform_tests.conftest import BAD_INPUTS, write_spec


def test_default_spec_loads_real_data():
    spec = load_spec()
    table = load_dataset(spec)
    assert spec.name == "credit_data"
    assert len(table) == 4454
    assert set(table["Status"].unique()) == {"good", "bad"}
    assert "rownames" not in table.columns


def test_schema_inference_excludes_sensitive_and_dropped(slice_spec):
    table = load_dataset(slice_spec)
    schema = infer_schema(table, slice_spec)
    assert "Age" not in schema.features and "Marital" not in schema.features
    assert "Home" in schema.categorical and "Income" in schema.numeric
    assert "Status" not in schema.features


def test_sensitive_used_as_features_only_when_asked(tmp_path, credit_slice):
    spec = load_spec(write_spec(tmp_path, credit_slice, use_sensitive_as_features=True))
    schema = infer_schema(load_dataset(spec), spec)
    assert "Age" in schema.numeric and "Marital" in schema.categorical


def test_parquet_source_and_numeric_labels(tmp_path, credit_slice):
    table = credit_slice.assign(Status=(credit_slice["Status"] == "bad").astype(int))
    table.to_parquet(tmp_path / "d.parquet")
    spec_path = write_spec(tmp_path, credit_slice, source="d.parquet", positive_label=1)
    loaded = load_dataset(load_spec(spec_path))
    assert set(loaded["Status"]) == {"0", "1"}


@pytest.mark.parametrize("value, text", [
    (1, "1"), (1.0, "1"), (np.float64(2.0), "2"), (np.float32(3.0), "3"), (np.int64(4), "4"), (1.5, "1.5"),
    (-0.0, "0"), ("1.0", "1"), ("+1.00", "1"), ("-2.0", "-2"), ("01.0", "01"), ("1.50", "1.50"), ("a", "a"),
    (True, "True"), (float("inf"), "inf"), (None, None),
])
def test_a_label_reads_the_same_however_it_was_typed(value, text):
    assert label_text(value) == text
    assert np.isnan(label_text(float("nan")))


def test_a_float_target_with_its_positive_label_written_as_a_float(tmp_path, credit_slice):
    """A float target (0.0/1.0) with `positive_label: "1.0"`: the spec from before labels were normalised
    keeps working (both sides read as "1")."""
    table = credit_slice.assign(Status=(credit_slice["Status"] == "bad").astype(float))
    table.to_parquet(tmp_path / "d.parquet")
    spec = load_spec(write_spec(tmp_path, credit_slice, source="d.parquet", positive_label="1.0"))
    assert spec.positive_label == "1"
    loaded = load_dataset(spec)
    assert set(loaded["Status"]) == {"0", "1"}
    assert binary_target(loaded, spec).sum() == int(table["Status"].sum())


def test_a_batch_with_blank_labels_of_a_numeric_target_validates_and_scores_its_labels(tmp_path, credit_slice):
    """A 0/1 target with blank cells is read by pandas as 0.0/1.0: the batch was quarantined (labels
    '0.0', '1.0' are not the training labels '0', '1') and its positives counted as negatives."""
    table = credit_slice.assign(Status=(credit_slice["Status"] == "bad").astype(int))
    table.to_csv(tmp_path / "d.csv", index=False)
    spec = load_spec(write_spec(tmp_path, credit_slice, source="d.csv", positive_label=1))
    loaded = load_dataset(spec)
    schema = infer_schema(loaded, spec)
    batch = table.head(60).copy()
    batch["Status"] = batch["Status"].astype(float)
    batch.loc[batch.index[:10], "Status"] = np.nan
    batch.to_csv(tmp_path / "batch.csv", index=False)
    read_back = pd.read_csv(tmp_path / "batch.csv")
    assert read_back["Status"].dtype == float
    assert validate_table(read_back, spec, schema, labels=sorted(set(loaded["Status"]))).success
    labelled = read_back.dropna(subset=["Status"])
    assert (binary_target(labelled, spec) == table.head(60)["Status"].iloc[10:].to_numpy()).all()


@pytest.mark.parametrize("mutate, overrides, error, fragments", BAD_INPUTS)
def test_bad_input_fails_fast_with_named_field(tmp_path, credit_slice, mutate, overrides, error, fragments):
    table = mutate(credit_slice) if mutate else credit_slice
    spec_path = write_spec(tmp_path, table, **overrides)
    with pytest.raises(error) as info:
        load_dataset(load_spec(spec_path))
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("extra, message", [
    (b"operations:\n  review_sla_hours: 4\noperations:\n  review_sla_hours: 8\n", "found the key 'operations' twice"),
    (b"1: foo\n", r"field\(s\) 1 are not spec fields"),
    (b"base_dir: /elsewhere\n", r"field\(s\) 'base_dir' are not spec fields"),
    (b"intended_use: caf\xe9\n", "is not UTF-8 text"),
], ids=["duplicate key", "number key", "loader field", "latin-1"])
def test_a_spec_file_with_a_structural_mistake_is_refused_naming_it(tmp_path, credit_slice, extra, message):
    """A key given twice kept the last silently (a second `operations:` dropped the first's shadow policy);
    a number key, a `base_dir:` key and non-UTF-8 bytes were Python tracebacks (found by review)."""
    path = write_spec(tmp_path, credit_slice)
    path.write_bytes(path.read_bytes() + extra)
    with pytest.raises(DatasetSpecError, match=message) as refused:
        load_spec(path)
    assert str(path) in str(refused.value)


def test_unreadable_yaml_names_the_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(DatasetSpecError, match="spec.yaml"):
        load_spec(path)


def test_a_sensitive_segment_column_is_refused(tmp_path, credit_slice):
    """Segments are read from the decision log's stored features, which never hold sensitive attributes."""
    path = write_spec(tmp_path, credit_slice, operations={"segment_column": "Age"})
    with pytest.raises(DatasetSpecError, match="operations.segment_column 'Age'.*sensitive"):
        load_spec(path)
    assert load_spec().operations.segment_column == "Home"


def test_split_is_stratified_disjoint_and_seeded(slice_spec):
    table = load_dataset(slice_spec)
    a, b = split_dataset(table, slice_spec), split_dataset(table, slice_spec)
    assert a.train_hash == b.train_hash and a.holdout_hash == b.holdout_hash
    np.testing.assert_array_equal(a.fold_of_row, b.fold_of_row)
    assert len(a.holdout) == pytest.approx(0.25 * len(table), abs=1)
    # Disjoint and complete: every original row is in exactly one part.
    joined = pd.concat([a.train, a.holdout]).sort_values(list(table.columns)).reset_index(drop=True)
    assert content_hash(joined) == content_hash(table.sort_values(list(table.columns)).reset_index(drop=True))
    assert abs(a.y_train.mean() - a.y_holdout.mean()) < 0.02
    assert sorted(set(a.fold_of_row)) == [0, 1, 2]
    for k in range(3):
        assert abs(a.y_train[a.fold_of_row == k].mean() - a.y_train.mean()) < 0.03


def test_great_expectations_suite_passes_clean_data_and_names_failures(slice_spec):
    table = load_dataset(slice_spec)
    schema = infer_schema(table, slice_spec)
    assert validate_table(table, slice_spec, schema).success
    broken = table.copy()
    broken["Home"] = "castle"
    broken.loc[: int(len(broken) * 0.8), "Income"] = np.nan
    # The training table is the missingness baseline: 80% empty is allowed there, not in a batch
    # of a table trained on a full Income.
    result = validate_table(broken, slice_spec, schema)
    assert not result.success
    assert {(o.expectation, o.column) for o in result.failures} == {("expect_column_values_to_be_in_set", "Home")}
    batch = validate_table(broken, slice_spec, schema, labels=["bad", "good"])
    failed = {(o.expectation, o.column): o for o in batch.failures}
    assert ("expect_column_values_to_be_in_set", "Home") in failed
    income = failed[("expect_column_proportion_of_non_null_values_to_be_between", "Income")]
    assert "non-null share between" in income.expected and "columns.missing_tolerance" in income.remedy
