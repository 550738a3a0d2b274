"""Drift measurement (real Evidently runs on slices of the default data) and the retraining
decision (known answers), plus the batch store's bookkeeping."""

import pandas as pd
import pytest

from ensemble_platform.data.batches import BatchStore, batch_id_of, partition_key, split_partition_key
from ensemble_platform.data.spec import load_spec
from ensemble_platform.errors import DataError
from ensemble_platform.evaluation.drift import DriftInputs, drift_report, retraining_decision
from ensemble_platform.policy import DriftPolicy
from ensemble_platform.settings import PlatformPaths

SHIFTED = ["Income", "Expenses", "Amount", "Price", "Assets"]


def _inputs(split, current, **kwargs) -> DriftInputs:
    return DriftInputs(split.train, current, split.schema, "Status", **kwargs)


def test_a_sample_of_the_same_data_does_not_drift(split):
    snapshots, summary = drift_report(_inputs(split, split.holdout), DriftPolicy())
    assert set(summary["columns"]) == set(split.schema.features)
    assert summary["drifted_count"] <= 1 and summary["target"]["drifted"] is False
    assert summary["prediction"] is None and set(snapshots) == {"data"}
    assert retraining_decision(summary, DriftPolicy(min_rows=10))[0] is False


def test_shifted_columns_and_predictions_drift_and_trigger(split):
    shifted = split.holdout.drop(columns=["Status"]).copy()
    for column in SHIFTED:
        shifted[column] = shifted[column] * 1.6
    validated = pd.Series(split.y_holdout * 0.6 + 0.2)  # any distribution; the batch's is far from it
    snapshots, summary = drift_report(_inputs(split, shifted, reference_prediction=validated,
                                              current_prediction=pd.Series([0.95] * len(shifted))), DriftPolicy())
    assert set(SHIFTED) <= set(summary["drifted_columns"])
    assert all(summary["columns"][c]["test_drifted"] and summary["columns"][c]["effect"] >= 0.1 for c in SHIFTED)
    assert summary["drifted_share"] == pytest.approx(summary["drifted_count"] / len(split.schema.features))
    assert summary["target"] is None  # no labels in the batch: no target drift, and no error
    assert summary["prediction"]["drifted"] and summary["prediction"]["method"] == "ks"
    assert set(snapshots) == {"data", "prediction"}
    retrain, reasons = retraining_decision(summary, DriftPolicy(min_rows=10))
    assert retrain and "feature columns drifted" in reasons[0] and "prediction drift" in reasons[1]


def _summary(rows=100, drifted=2, features=10, prediction=False, target=False):
    verdict = lambda flag: {"drifted": flag, "method": "ks", "score": 0.001, "threshold": 0.05}  # noqa: E731
    return {"current_rows": rows, "columns": {f"c{i}": {} for i in range(features)},
            "drifted_columns": [f"c{i}" for i in range(drifted)], "drifted_count": drifted,
            "drifted_share": drifted / features, "prediction": verdict(prediction), "target": verdict(target)}


@pytest.mark.parametrize("summary, policy, expected", [
    (_summary(drifted=3), DriftPolicy(max_drifted_share=0.3), False),  # 30% is not past 30%
    (_summary(drifted=4), DriftPolicy(max_drifted_share=0.3), True),
    (_summary(prediction=True), DriftPolicy(), True),
    (_summary(prediction=True), DriftPolicy(prediction_drift_triggers=False), False),
    (_summary(target=True), DriftPolicy(), True),
    (_summary(target=True), DriftPolicy(target_drift_triggers=False), False),
    (_summary(rows=29, drifted=10, prediction=True), DriftPolicy(min_rows=30), False),  # too small to act on
], ids=["at-threshold", "past-threshold", "prediction", "prediction-off", "target", "target-off", "small-batch"])
def test_retraining_decision(summary, policy, expected):
    retrain, reasons = retraining_decision(summary, policy)
    assert retrain is expected and reasons


def test_batch_store_receives_quarantines_and_offers_labelled_rows(tmp_path, credit_slice, slice_spec):
    store = BatchStore(PlatformPaths.from_env(tmp_path / "home"))
    labelled, unlabelled = tmp_path / "week 1.csv", tmp_path / "week2.parquet"
    credit_slice.head(30).to_csv(labelled, index=False)
    credit_slice.iloc[30:60].drop(columns=["Status"]).to_parquet(unlabelled, index=False)
    first, second = store.register("d", labelled), store.register("d", unlabelled)
    assert first.batch_id == batch_id_of(first.path) and first.batch_id.startswith("week-1-")
    assert store.register("d", labelled).batch_id == first.batch_id  # the same file is the same batch
    assert split_partition_key(partition_key("d", first.batch_id)) == ("d", first.batch_id)
    assert [a.batch_id for a in store.pending("d")] == sorted([first.batch_id, second.batch_id])
    received = store.receive("d", first.batch_id)
    assert received.parent == store.batch_dir("d", first.batch_id) and store.receive("d", first.batch_id) == received
    store.receive("d", second.batch_id)
    assert store.pending("d") == []
    store.accept("d", first.batch_id, {"rows": 30})
    store.quarantine("d", second.batch_id, {"reason": "Price missing"})
    assert [b for b, _ in store.accepted("d")] == [first.batch_id]
    assert (store.quarantine_dir("d", second.batch_id) / "reason.json").is_file()
    spec = slice_spec.model_copy(update={"name": "d"})
    additions = store.training_additions(spec)
    assert len(additions) == 1 and len(additions[0]) == 30
    none = spec.model_copy(update={"automation": spec.automation.model_copy(update={"include_batches": "none"})})
    assert store.training_additions(none) == []
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(DataError, match="must end in"):
        store.register("d", notes)


def test_the_default_spec_retrains_weekly_and_reads_automation():
    automation = load_spec().automation
    assert automation.retrain_cron == "0 3 * * 1" and automation.include_batches == "labelled"
    assert automation.drift.num_method == "ks" and automation.drift.cat_method == "chisquare"
    assert automation.drift.num_effect_floor == 0.1 and automation.drift.cat_effect_floor == 0.1


# --- effect-size floor: p-value tests on large batches -------------------------------------------

@pytest.fixture(scope="module")
def default_split():
    """The whole default dataset (4,454 rows): training rows are the reference, as in monitoring."""
    from ensemble_platform.data.loading import load_dataset
    from ensemble_platform.data.splitting import split_dataset

    spec = load_spec()
    return split_dataset(load_dataset(spec), spec)


def _test_rejects(reference: pd.Series, current: pd.Series, numeric: bool) -> bool:
    """The policy's default tests at p < 0.05, as Evidently runs them: K-S for numbers, chi-square of
    the current counts against the reference shares for categories."""
    from scipy.stats import chisquare, ks_2samp

    if numeric:
        return bool(ks_2samp(reference.dropna(), current.dropna()).pvalue < 0.05)
    shares = reference.value_counts(normalize=True)
    observed = current.value_counts().reindex(shares.index, fill_value=0)
    return bool(chisquare(observed, shares * observed.sum()).pvalue < 0.05)


def _verdicts(split, current: pd.DataFrame, policy: DriftPolicy) -> dict[str, tuple[bool, float, bool]]:
    from ensemble_platform.evaluation.drift import counts_as_drifted, effect_floor, effect_size

    result = {}
    for column in split.schema.features:
        numeric = column in split.schema.numeric
        reference = split.train[column] if numeric else split.train[column].astype(str)
        batch = current[column] if numeric else current[column].astype(str)
        rejects = _test_rejects(reference, batch, numeric)
        measure, effect = effect_size(reference, batch, numeric)
        result[column] = (rejects, effect, counts_as_drifted(rejects, effect, effect_floor(measure, policy)))
    return result


def test_a_large_resample_of_the_same_distribution_is_not_drifted(default_split):
    batch = default_split.holdout.sample(200_000, replace=True, random_state=0).reset_index(drop=True)
    verdicts = _verdicts(default_split, batch, DriftPolicy())
    assert any(rejects for rejects, _, _ in verdicts.values())  # the tests alone flag it...
    assert not any(drifted for _, _, drifted in verdicts.values()), verdicts  # ...the floor does not
    assert all(effect < 0.1 for _, effect, _ in verdicts.values())
    # Without floors the verdict is the tests' alone: the old behaviour.
    no_floor = DriftPolicy(num_effect_floor=0.0, cat_effect_floor=0.0)
    assert [d for _, _, d in _verdicts(default_split, batch, no_floor).values()] == [r for r, _, _ in verdicts.values()]


def test_a_genuinely_shifted_column_of_a_large_batch_still_drifts(default_split):
    batch = default_split.holdout.sample(200_000, replace=True, random_state=1).reset_index(drop=True)
    batch["Income"] = batch["Income"] * 1.3
    batch.loc[batch.index % 3 == 0, "Job"] = "freelance"
    verdicts = _verdicts(default_split, batch, DriftPolicy())
    assert {c for c, (_, _, drifted) in verdicts.items() if drifted} == {"Income", "Job"}


def test_effect_sizes_known_answers():
    import numpy as np

    from ensemble_platform.evaluation.drift import jensen_shannon, normed_wasserstein

    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, 50_000)
    assert normed_wasserstein(x, x) == 0.0
    assert normed_wasserstein(x, x + 1.0) == pytest.approx(0.5, rel=0.02)  # a shift of half a std
    assert jensen_shannon(["a", "b"] * 10, ["b", "a"] * 10) == pytest.approx(0.0)
    assert jensen_shannon(["a"] * 10, ["b"] * 10) == pytest.approx(np.sqrt(np.log(2)))
    assert jensen_shannon(["a", None], ["a", "a"]) > 0  # missing is a category of its own


def test_summary_applies_the_floor_and_keeps_the_tests_verdict():
    from ensemble_platform.evaluation.drift import JENSEN_SHANNON, WASSERSTEIN, summarise

    def drift(column, method, rejects, value):
        return ({"metric_config": {"params": {"type": "evidently:metric_v2:ValueDrift", "column": column}},
                 "status": "FAIL" if rejects else "SUCCESS"},
                {"config": {"type": "evidently:metric_v2:ValueDrift", "column": column, "method": method,
                            "threshold": 0.05}, "value": value})

    pairs = [drift("a", "ks", True, 0.001), drift("b", "ks", True, 0.001), drift("＜c＞", "chisquare", True, 0.0)]
    document = {"tests": [t for t, _ in pairs], "metrics": [m for _, m in pairs]}
    effects = {"a": (WASSERSTEIN, 0.02), "b": (WASSERSTEIN, 0.4), "<c>": (JENSEN_SHANNON, 0.3)}
    summary = summarise(document, ["a", "b", "<c>"], None, 100, 1_000_000, effects=effects, policy=DriftPolicy(),
                        names={"＜c＞": "<c>"})
    assert summary["drifted_columns"] == ["b", "<c>"]
    assert summary["columns"]["a"]["test_drifted"] is True and summary["columns"]["a"]["drifted"] is False
    assert summary["columns"]["a"]["effect_floor"] == 0.1 and summary["columns"]["<c>"]["effect_measure"] == JENSEN_SHANNON
