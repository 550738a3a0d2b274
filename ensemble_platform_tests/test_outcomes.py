"""Outcomes joined to decisions, on a real keyed SQLite decision log: a file with unknown, ambiguous, duplicated
or badly labelled lines is refused whole with every line reported; a good file is recorded once (idempotent) and
never overwritten, also when two registrations race; a registered outcome beats a reviewer's resolution in the
join; the production metrics have known answers; the report escapes data; the Dagster asset materialises on a
real instance; labelled decisions go through the batch path into the next retraining's data."""

from __future__ import annotations

import json
import threading

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from ensemble_platform.data.batches import BatchStore, read_batch
from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.data.loading import load_dataset, read_source
from ensemble_platform.data.reference import TrainingReference
from ensemble_platform.data.validation import validate_table
from ensemble_platform.decisions.log import DecisionLog, decision_log_path, open_decision_store
from ensemble_platform.decisions.outcomes import (
    EXPORT_ID_COLUMN,
    LabelledDecision,
    LabelVocabulary,
    OutcomeError,
    export_training_batch,
    labelled_decisions,
    register_outcomes,
)
from ensemble_platform.decisions.production_performance import production_performance
from ensemble_platform.decisions.records import (
    KIND_OUTCOME,
    DecisionRecord,
    MemberDocument,
    ReviewActionRecord,
    input_sha256,
    outcome_id,
    stored_subset,
)
from ensemble_platform.defs.assets.production_performance import production_performance as performance_asset
from ensemble_platform.defs.resources import DatasetStorage, PlatformResource
from ensemble_platform.governance.production_report import write_production_report
from ensemble_platform.service import cli as service_cli
from ensemble_platform.settings import PlatformPaths

DATASET = "credit_slice"


def _features(row) -> dict:
    """A holdout row as the service stores it: canonical JSON values (NaN as null)."""
    return {k: (None if v != v else (float(v) if isinstance(v, (int, float, np.number)) else str(v)))
            for k, v in row.items()}


def _decision(i: int, features: dict, *, probability: float = 0.7, request_id: str | None = None, row_index: int = 0,
              batch_size: int = 1, members: dict | None = None, day: str = "2026-03-01", dataset: str = DATASET,
              stored: list[str] | None = None) -> dict:
    members = members if members is not None else {"glm": 0.6, "gbm": 0.8}
    columns = stored if stored is not None else list(features)
    return DecisionRecord(
        id=f"d{i}", created_at=f"{day}T10:{i:02d}:00.000000+00:00", request_id=request_id, dataset=dataset,
        ensemble_version="1.0.0", config_hash="c" * 64, manifest_sha256="m" * 64, code_version="test",
        row_index=row_index, batch_size=batch_size,
        members={n: MemberDocument(registered_model=f"{dataset}-{n}", version="1", probability=p,
                                   error=None if p is not None else "timeout") for n, p in members.items()},
        combined_uncalibrated=probability, probability=probability, decision=int(probability >= 0.5),
        decision_threshold=0.5, agreement=1.0, needs_review=False, review_reasons=[], degraded=False,
        excluded_members={}, fallback=False, fallback_reason=None, unseen_category=False, missing_share=0.0,
        max_missing_share=0.5, latency_ms=1.0, input_sha256=input_sha256(features), stored_columns=columns,
        features=stored_subset(features, columns),
    ).model_dump()


def _resolution(decision_id: str, decision: int, n: int) -> dict:
    return ReviewActionRecord(id=f"resolve-{n}", kind="review_resolve", created_at=f"2026-03-02T09:00:{n:02d}+00:00",
                              decision_id=decision_id, reviewer="rita", token_name=None, note="checked",
                              decision=decision).model_dump()


@pytest.fixture
def world(tmp_path, slice_spec, split):
    """A home that knows the dataset (catalogue, training reference) and a decision log of 8 decisions:
    d0, d1 single rows; d2, d3 the two rows of request req-multi; d4 the row of req-single; d5 of another
    dataset; d6, d7 on the next day."""
    paths = PlatformPaths.from_env(tmp_path / "home")
    DatasetCatalog(paths).register(slice_spec)
    TrainingReference.write(paths, split)
    rows = [_features(r) for r in split.holdout[list(split.schema.features)].to_dict("records")]
    records = [_decision(0, rows[0], probability=0.9), _decision(1, rows[1], probability=0.2),
               _decision(2, rows[2], request_id="req-multi", row_index=0, batch_size=2),
               _decision(3, rows[3], request_id="req-multi", row_index=1, batch_size=2, probability=0.3),
               _decision(4, rows[4], request_id="req-single", probability=0.4),
               _decision(5, rows[5], dataset="other"),
               _decision(6, rows[6], day="2026-03-02", probability=0.6, members={"glm": None, "gbm": 0.7}),
               _decision(7, rows[7], day="2026-03-02", probability=0.1)]
    log = DecisionLog(decision_log_path(paths), paths=paths)
    try:
        log.store.append_many(records)
    finally:
        log.close()
    return paths, slice_spec, split


def _write(path, text: str):
    path.write_text(text)
    return path


def _outcomes(paths) -> dict[str, dict]:
    with open_decision_store(paths) as store:
        return {e["decision_id"]: e for e in store.iter_kinds([KIND_OUTCOME])}


BAD_CSV = """decision_id,request_id,row_index,label
d0,,,bad
nope,,,1
d1,,,maybe
,req-multi,,0
,req-multi,1,good
,req-unknown,,1
d0,,,1
"""


def test_a_file_with_refused_lines_records_nothing_and_reports_every_line(world, tmp_path, capsys):
    paths, _, _ = world
    file = _write(tmp_path / "outcomes.csv", BAD_CSV)
    with open_decision_store(paths) as store, pytest.raises(OutcomeError) as info:
        register_outcomes(store, paths, file)
    refused = {p.line: (p.field, p.message) for p in info.value.report.refused}
    assert sorted(refused) == [3, 4, 5, 7, 8]
    assert refused[3][0] == "decision_id" and "unknown decision id 'nope'" in refused[3][1]
    assert refused[4][0] == "label" and "'maybe'" in refused[4][1] and "'bad'" in refused[4][1]
    assert refused[5][0] == "request_id" and "ambiguous" in refused[5][1] and "rows [0, 1]" in refused[5][1]
    assert refused[7][0] == "request_id" and "unknown request id 'req-unknown'" in refused[7][1]
    assert refused[8][0] == "decision_id" and "line 2 already" in refused[8][1]
    assert "nothing was recorded" in str(info.value) and _outcomes(paths) == {}

    # The command line: exit 2, the cause with every refused line, no traceback.
    capsys.readouterr()
    assert service_cli.main(["--home", str(paths.home), "outcomes", "register", str(file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert all(f"line {n}:" in err for n in (3, 4, 5, 7, 8)) and _outcomes(paths) == {}


@pytest.mark.parametrize("name, text, fragment", [
    ("o.csv", "decision,label\nd0,1\n", "unknown column(s) ['decision']"),
    ("o.csv", "decision_id\nd0\n", "needs the column 'label'"),
    ("o.txt", "decision_id,label\nd0,1\n", "must end in .csv"),
    ("o.csv", "decision_id,label\n", "holds no outcome lines"),
])
def test_an_unreadable_file_is_refused_naming_it(world, tmp_path, name, text, fragment):
    paths, _, _ = world
    file = _write(tmp_path / name, text)
    with open_decision_store(paths) as store, pytest.raises(OutcomeError) as info:
        register_outcomes(store, paths, file)
    assert fragment in str(info.value) and str(file) in str(info.value)


@pytest.mark.parametrize("value, expected", [
    ("bad", 1), ("good", 0), ("1", 1), (" 0 ", 0), (1, 1), (0, 0),
    ("Bad", None), (2, None), (True, None), (1.0, None), ("", None), (None, None),
])
def test_labels_are_the_targets_values_or_one_and_zero(value, expected):
    vocabulary = LabelVocabulary(DATASET, "bad", "good")
    if expected is None:
        with pytest.raises(ValueError, match=r"accepted: 'bad' \(positive class\) or 'good'; or 1 \(positive class\) or 0"):
            vocabulary.parse(value)
    else:
        assert vocabulary.parse(value) == expected


@pytest.mark.parametrize("positive, negative, readings", [
    ("2", "1", {2: 1, "2": 1, 1: 0, "1": 0, 0: 0, "0": 0}),  # German credit's 1/2 coding
    ("0", "1", {0: 1, "0": 1, 1: 0, "1": 0}),  # 0 is the positive class
    ("1", "0", {1: 1, "1": 1, 0: 0, "0": 0}),
])
def test_a_label_means_the_same_class_as_a_json_number_and_as_text(positive, negative, readings):
    """Where the target's own values are numbers, a JSON number is that value, as the same text in a CSV is
    (JSON 1 registered the positive class under 1/2 coding, where 1 is the negative value)."""
    vocabulary = LabelVocabulary(DATASET, positive, negative)
    assert {value: vocabulary.parse(value) for value in readings} == readings


def test_good_outcomes_are_recorded_once_and_never_overwritten(world, tmp_path, capsys):
    paths, _, _ = world
    good = _write(tmp_path / "good.csv", "decision_id,request_id,row_index,label\nd0,,,bad\n,req-multi,1,good\n"
                                         ",req-single,,1\nd6,,,0\n")
    home = ["--home", str(paths.home), "outcomes", "register"]
    assert service_cli.main([*home, str(good), "--by", "olga"]) == 0
    assert "4 outcome(s) recorded" in capsys.readouterr().out
    stored = _outcomes(paths)
    assert {k: v["label"] for k, v in stored.items()} == {"d0": 1, "d3": 0, "d4": 1, "d6": 0}
    assert stored["d3"]["id"] == outcome_id("d3") and stored["d3"]["line"] == 3
    assert stored["d3"]["request_id"] == "req-multi" and stored["d3"]["registered_by"] == "olga"
    assert stored["d3"]["source_file"] == "good.csv" and len(stored["d3"]["source_sha256"]) == 64

    # Again: nothing new (idempotent).
    with open_decision_store(paths) as store:
        again = register_outcomes(store, paths, good)
    assert (again.recorded, again.unchanged, again.refused) == (0, 4, [])

    # A different label for d0 is refused; with --skip-refused the new line of the same file is recorded.
    conflict = _write(tmp_path / "late.jsonl", '{"decision_id": "d0", "label": 0}\n\n{"decision_id": "d1", "label": "good"}\n')
    with open_decision_store(paths) as store, pytest.raises(OutcomeError, match="already has the outcome 1"):
        register_outcomes(store, paths, conflict)
    assert "d1" not in _outcomes(paths)
    capsys.readouterr()
    assert service_cli.main([*home, str(conflict), "--skip-refused"]) == 1
    out, err = capsys.readouterr()
    assert "1 outcome(s) recorded" in out and "line 1: label:" in err and "never overwritten" in err
    assert {k: v["label"] for k, v in _outcomes(paths).items()}["d1"] == 0 and _outcomes(paths)["d0"]["label"] == 1
    # Decisions of another dataset are refused when --dataset names one.
    other = _write(tmp_path / "other.csv", "decision_id,label\nd5,1\n")
    assert service_cli.main([*home, str(other), "--dataset", DATASET]) == 2
    assert "is of dataset 'other', not 'credit_slice'" in capsys.readouterr().err


def test_an_outcome_deleted_from_the_log_cannot_be_registered_again(world, tmp_path, capsys):
    """Deleting a registered outcome's row from the middle of the log (no key needed) made the decision
    read as unlabelled, so another label could be registered until `decisions verify` ran. Now the
    command refuses, naming the missing entry, and records nothing."""
    import sqlite3

    paths, _, _ = world
    home = ["--home", str(paths.home), "outcomes", "register"]
    assert service_cli.main([*home, str(_write(tmp_path / "a.csv", "decision_id,label\nd0,1\n"))]) == 0
    assert service_cli.main([*home, str(_write(tmp_path / "b.csv", "decision_id,label\nd1,0\n"))]) == 0
    db = sqlite3.connect(decision_log_path(paths))
    seq = db.execute("SELECT seq FROM entries WHERE record_id = ?", (outcome_id("d0"),)).fetchone()[0]
    db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
    db.commit()
    rows = db.execute("SELECT count(*) FROM entries").fetchone()[0]
    db.close()
    capsys.readouterr()
    flipped = _write(tmp_path / "c.csv", "decision_id,label\nd0,0\n")
    assert service_cli.main([*home, str(flipped)]) == 2
    err = capsys.readouterr().err
    assert f"entry {seq}: deleted, inserted or reordered" in err and "Traceback" not in err
    db = sqlite3.connect(decision_log_path(paths))
    assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == rows  # nothing recorded
    db.close()


def test_an_exported_decision_keeps_its_date_for_the_next_retraining(tmp_path):
    """The service stores a date column as the members see it, numeric parts (`opened_year`, ..., `opened_days`);
    the retraining reads the training table's columns, so the parts alone were dropped there and the date
    read as missing. The export writes the date itself, rebuilt from its parts, and the retraining derives
    the same parts again."""
    import types

    from ensemble_platform.data.schema import infer_schema
    from ensemble_platform.data.spec import DatasetSpec
    from ensemble_platform.decisions.outcomes import _frame

    rng = np.random.default_rng(0)
    raw = pd.DataFrame({"a": rng.normal(size=300), "y": rng.choice(["good", "bad"], 300),
                        "opened": pd.date_range("2024-01-01 06:30", periods=300, freq="D").strftime("%Y-%m-%dT%H:%M")})
    raw.to_csv(tmp_path / "d.csv", index=False)
    spec = DatasetSpec(name="dt", source=str(tmp_path / "d.csv"), target="y", positive_label="bad")
    base = load_dataset(spec)
    schema = infer_schema(base, spec)
    assert schema.datetime == ("opened",) and "opened_days" in schema.features
    stored = base.head(3)[list(schema.features)].to_dict("records")  # what the service stores per decision
    rows = [{**features, "y": "bad", "decision_id": f"d{i}", "label_source": "registered"}
            for i, features in enumerate(stored)]
    exported = _frame(rows, types.SimpleNamespace(schema=schema), "y")
    assert list(exported["opened"]) == ["2024-01-01T06:30:00+00:00", "2024-01-02T06:30:00+00:00",
                                        "2024-01-03T06:30:00+00:00"]
    merged = load_dataset(spec, [exported])
    parts = [c for c in schema.features if c.startswith("opened_")]
    np.testing.assert_allclose(merged.tail(3)[parts].to_numpy(), base.head(3)[parts].to_numpy(), rtol=0, atol=1e-9)
    # A date none of whose parts is a feature (left out, e.g. mostly empty): nothing to rebuild, no crash.
    import dataclasses

    without = dataclasses.replace(schema, numeric=tuple(c for c in schema.numeric if c not in parts))
    plain = _frame([{k: v for k, v in r.items() if k not in parts} for r in rows],
                   types.SimpleNamespace(schema=without), "y")
    assert "opened" not in plain.columns and list(plain["a"]) == [r["a"] for r in rows]


def test_two_registrations_racing_label_a_decision_once(world, tmp_path):
    paths, _, _ = world
    files = [_write(tmp_path / f"race{label}.csv", f"decision_id,label\nd7,{label}\n") for label in (0, 1)]
    results: list[object] = []
    start = threading.Barrier(2)

    def register(file) -> None:
        with open_decision_store(paths) as store:  # a store each: as two processes would
            start.wait()
            try:
                results.append(register_outcomes(store, paths, file))
            except OutcomeError as exc:
                results.append(exc)

    threads = [threading.Thread(target=register, args=(f,)) for f in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(type(r).__name__ for r in results) == ["OutcomeError", "RegistrationReport"]
    assert list(_outcomes(paths)) == ["d7"]


def test_the_join_prefers_a_registered_outcome_to_a_reviewers_resolution(world, tmp_path):
    paths, _, _ = world
    with open_decision_store(paths) as store:
        register_outcomes(store, paths, _write(tmp_path / "o.csv", "decision_id,label\nd0,1\nd5,1\n"))
        store.append_many([_resolution("d0", 0, 1), _resolution("d1", 0, 2), _resolution("d7", 1, 3)])
        rows = {r.decision_id: r for r in labelled_decisions(store, DATASET)}
        window = labelled_decisions(store, DATASET, since="2026-03-02", until="2026-03-03")
    assert list(rows) == ["d0", "d1", "d7"]  # oldest first; d5 is of another dataset
    assert (rows["d0"].label, rows["d0"].label_source, rows["d0"].reviewer_decision) == (1, "registered", 0)
    assert (rows["d1"].label, rows["d1"].label_source, rows["d1"].registered_label) == (0, "reviewer", None)
    assert rows["d0"].members == {"glm": 0.6, "gbm": 0.8} and rows["d0"].features
    assert [r.decision_id for r in window] == ["d7"]
    with open_decision_store(paths) as store, pytest.raises(OutcomeError, match="since 'yesterday'"):
        labelled_decisions(store, DATASET, since="yesterday")


def _row(i: int, label: int, probability: float, members: dict, day: str = "2026-03-01", *,
         reviewer: int | None = None, source: str = "registered") -> LabelledDecision:
    return LabelledDecision(
        decision_id=f"r{i}", created_at=f"{day}T08:00:{i:02d}+00:00", request_id=None, row_index=0, dataset=DATASET,
        ensemble_version="1.0.0", probability=probability, decision=int(probability >= 0.5), decision_threshold=0.5,
        members=members, label=label, label_source=source,
        registered_label=label if source == "registered" else None, reviewer_decision=reviewer)


def test_production_metrics_have_known_answers():
    rows = [_row(0, 1, 0.9, {"a": 0.8}, reviewer=1), _row(1, 0, 0.2, {"a": None}, reviewer=1),
            _row(2, 1, 0.4, {"a": 0.3}, reviewer=1), _row(3, 0, 0.6, {"a": 0.4}, "2026-03-02"),
            _row(4, 1, 0.7, {"a": 0.9}, "2026-03-02", reviewer=0, source="reviewer")]
    result = production_performance(rows[:4], DATASET)
    ensemble = result.overall.ensemble
    # Positives {0.9, 0.4} over negatives {0.2, 0.6}: 3 of 4 pairs ordered right.
    assert ensemble.roc_auc == pytest.approx(0.75)
    assert ensemble.log_loss == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.4) + np.log(0.4)) / 4)
    # One row per bin: |1-0.9|, |0-0.2|, |1-0.4|, |0-0.6| averaged.
    assert ensemble.ece == pytest.approx((0.1 + 0.2 + 0.6 + 0.6) / 4)
    assert ensemble.accuracy == pytest.approx(0.5) and ensemble.rows == 4
    member = result.overall.members["a"]
    assert (member.rows, member.missing) == (3, 1) and member.accuracy == pytest.approx(2 / 3)
    assert member.roc_auc == pytest.approx(0.5)  # positives 0.8, 0.3 over the negative 0.4: 1 of 2 pairs
    assert [d.period for d in result.days] == ["2026-03-01", "2026-03-02"]
    assert result.days[1].ensemble.roc_auc is None and result.days[1].ensemble.accuracy == 0.0  # one class
    # Reviewers: 1 of 4 reviewed decisions agrees with the ensemble (r0); on the 3 with a registered outcome the
    # reviewer is right on 2 (r0, r2), the ensemble on 2 (r0, r1).
    review = production_performance(rows, DATASET).overall.review
    assert (review.reviewed, review.with_outcome) == (4, 3)
    assert review.agreement == pytest.approx(1 / 4)
    assert review.reviewer_accuracy == pytest.approx(2 / 3) and review.ensemble_accuracy == pytest.approx(2 / 3)
    assert production_performance([], DATASET).overall.ensemble.accuracy is None


def test_the_report_escapes_data_values(tmp_path):
    hostile = "<script>alert(1)</script>"
    rows = [_row(0, 1, 0.9, {hostile: 0.8}), _row(1, 0, 0.2, {hostile: 0.1})]
    written = write_production_report(PlatformPaths.from_env(tmp_path / "home"), production_performance(rows, DATASET))
    html, markdown = written["html"].read_text(), written["markdown"].read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "<script>" not in markdown
    assert json.loads(written["json"].read_text())["overall"]["members"][hostile]["rows"] == 2


def test_the_asset_materialises_on_a_real_instance(world, tmp_path, slice_spec_path):
    paths, _, _ = world
    with open_decision_store(paths) as store:
        register_outcomes(store, paths, _write(tmp_path / "o.csv", "decision_id,label\nd0,bad\nd1,good\nd6,good\n"))
        store.append_many([_resolution("d7", 0, 1)])
    resources = {"platform": PlatformResource(home=str(paths.home), dataset_spec=str(slice_spec_path)),
                 "io_manager": DatasetStorage(home=str(paths.home), dataset_spec=str(slice_spec_path))}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([performance_asset], instance=instance, resources=resources)
        assert result.success
        metadata = result.asset_materializations_for_node("production_performance")[0].metadata
    assert metadata["labelled"].value == 4 and metadata["registered"].value == 3 and metadata["days"].value == 2
    # Probability/label: d0 0.9/1, d1 0.2/0, d6 0.6/0 (wrong), d7 0.1/0 (the reviewer's); gbm 0.8 but on d6 0.7;
    # glm 0.6 and no answer on d6.
    assert metadata["ensemble_accuracy"].value == pytest.approx(3 / 4)
    assert metadata["gbm_accuracy"].value == pytest.approx(1 / 4) and metadata["glm_accuracy"].value == pytest.approx(1 / 3)
    assert (paths.monitoring_dir(DATASET) / "production" / "production_performance.html").is_file()


def test_labelled_decisions_join_the_next_retraining_through_the_batch_path(world, tmp_path, capsys):
    paths, spec, split = world
    features = list(split.schema.features)
    with open_decision_store(paths) as store:
        store.append_many([_decision(8, {c: None for c in features[:1]}, stored=features[:1])])  # too few columns
        register_outcomes(store, paths, _write(tmp_path / "o.csv", "decision_id,label\nd0,bad\nd1,good\nd8,1\n"))
        store.append_many([_resolution("d7", 0, 1)])
        export = export_training_batch(store, paths, spec)
    assert export.rows == 3 and export.by_source == {"registered": 2, "reviewer": 1} and export.not_joinable == 1
    batches = BatchStore(paths)
    arrival = batches.pending(DATASET)[0]
    assert str(arrival.path) == export.inbox_file and arrival.batch_id.startswith("labelled-decisions-")

    # The path every batch takes: received, validated by the batch suite, accepted, added to the training data.
    table = read_batch(batches.receive(DATASET, arrival.batch_id))
    reference = TrainingReference.read(paths, DATASET)
    result = validate_table(table, spec, reference.schema, labels=sorted(reference.rows[spec.target].unique()))
    assert result.success, result.failure_summary()
    batches.accept(DATASET, arrival.batch_id, {"rows": len(table)})
    additions = batches.training_additions(spec)
    assert len(additions) == 1 and sorted(additions[0][EXPORT_ID_COLUMN]) == ["d0", "d1", "d7"]
    assert list(additions[0][spec.target]) == ["bad", "good", "good"]
    assert len(load_dataset(spec, additions)) == len(read_source(spec)) + 3

    # Exported once: the next export finds nothing new (the CLI says so).
    capsys.readouterr()
    assert service_cli.main(["--home", str(paths.home), "outcomes", "export-batch", "--dataset", DATASET]) == 0
    out = capsys.readouterr().out
    assert "0 labelled decision(s) exported" in out and "3 exported before" in out and "1 not joinable" in out
