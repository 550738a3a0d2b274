"""Outcomes joined to decisions: observed labels registered from a file, reviewers' resolutions, the join of
both onto the decisions they label, and the labelled decisions a retraining adds to the training data.

An outcome file is CSV (a header row) or JSON Lines (one object a line), with the columns

    decision_id    the decision's id (as the service answered it), or
    request_id     the caller's request id, and `row_index` when that request decided several rows
    label          1 or the dataset's positive label (e.g. "bad"); 0 or its other training label ("good")

and no others. Every line must name exactly one decision of the log. `register_outcomes` is all or nothing by
default: one refused line (unknown or ambiguous id, bad label, a decision labelled twice in the file or already
labelled differently) and nothing is recorded; the error lists every refused line. Registering a line again with
the same label changes nothing (idempotent). Accepted lines become `outcome` records of the decision log, appended
read-check-append (`append_checked`), each with the one id `outcome-<decision id>`: two registrations racing
cannot both label one decision.

The join (`labelled_decisions`): a decision with a registered outcome takes that label, else the reviewer's
resolution (`review_resolve`) is its label; each row says which. `export_training_batch` writes the labelled
decisions not exported before (their stored features and the label as the target's value) into the dataset's
batch inbox: they go through the same validation as any batch and, accepted, join the next retraining the way
labelled batches do (`automation.include_batches: labelled`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ensemble_platform.data.batches import BatchStore, read_batch
from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.data.labels import label_text
from ensemble_platform.data.reference import TrainingReference
from ensemble_platform.data.schema import DATETIME_PARTS, part_name
from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.decisions.log import DecisionLog, DecisionStore
from ensemble_platform.decisions.records import (
    CREATED_AT,
    DATASET,
    DECISION,
    DECISION_ID,
    ENSEMBLE_VERSION,
    FEATURES,
    ID,
    KIND,
    KIND_DECISION,
    KIND_OUTCOME,
    KIND_REVIEW_RESOLVE,
    LABEL,
    LABEL_SOURCE_REGISTERED,
    LABEL_SOURCE_REVIEWER,
    MEMBERS,
    PROBABILITY,
    REQUEST_ID,
    ROW_INDEX,
    STORED_COLUMNS,
    OutcomeRecord,
    now_iso,
    outcome_id,
)
from ensemble_platform.errors import DataError, DatasetSpecError, PlatformError
from ensemble_platform.settings import PlatformPaths

DECISION_THRESHOLD = "decision_threshold"
COLUMNS = (DECISION_ID, REQUEST_ID, ROW_INDEX, LABEL)
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_LINES = 100_000
# SQLite's bound on the parameters of one statement is far higher; chunks keep each lookup small.
LOOKUP_CHUNK = 500
# The labelled decisions a retraining adds: the batch file's stem, and the columns beside features and target.
EXPORT_STEM = "labelled-decisions"
EXPORT_ID_COLUMN = "decision_id"
EXPORT_SOURCE_COLUMN = "label_source"
LabelSource = Literal["registered", "reviewer"]


class OutcomeError(PlatformError):
    """Outcomes refused: the file cannot be read, or lines of it name no single decision or no valid label.
    `report` (when lines were read) lists every refused line."""

    def __init__(self, message: str, report: RegistrationReport | None = None):
        super().__init__(message)
        self.report = report


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- reading an outcome file -------------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeLine:
    """One line of an outcome file as written (values not checked yet); `problem`: why it cannot be read."""

    line: int
    decision_id: str | None = None
    request_id: str | None = None
    row_index: object = None
    label: object = None
    problem: tuple[str, str] | None = None  # (field, message)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_outcome_file(path: Path) -> list[OutcomeLine]:
    """The lines of a CSV or JSON Lines outcome file. Raises `OutcomeError` naming the file when it cannot be read
    at all (missing, wrong suffix, not UTF-8, no or a bad header, too many lines); a bad line is returned with its
    `problem`, so every bad line can be reported at once."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise OutcomeError(f"outcome file {path} must end in {', '.join(SUFFIXES)}; got {path.suffix or 'no suffix'!r}")
    if not path.is_file():
        raise OutcomeError(f"outcome file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OutcomeError(f"outcome file {path} is not UTF-8 text (byte {exc.start}): {exc.reason}") from exc
    lines = _read_csv(path, text) if kind == "csv" else _read_jsonl(text)
    if not lines:
        raise OutcomeError(f"outcome file {path} holds no outcome lines")
    if len(lines) > MAX_LINES:
        raise OutcomeError(f"outcome file {path} holds {len(lines)} lines; at most {MAX_LINES}: split it")
    return lines


def _check_columns(path: Path, names: Sequence[str], where: str) -> None:
    unknown = sorted(set(names) - set(COLUMNS))
    duplicated = sorted({n for n in names if list(names).count(n) > 1})
    if duplicated:
        raise OutcomeError(f"{path}: {where} names column(s) {duplicated} more than once")
    if unknown:
        raise OutcomeError(f"{path}: {where} has unknown column(s) {unknown}; accepted: {list(COLUMNS)}")
    if LABEL not in names or not {DECISION_ID, REQUEST_ID} & set(names):
        raise OutcomeError(f"{path}: {where} needs the column {LABEL!r} and {DECISION_ID!r} or {REQUEST_ID!r} "
                           f"(with {ROW_INDEX!r} for requests of several rows); it has {list(names)}")


def _cell(value: str | None) -> str | None:
    text = (value or "").strip()
    return text or None


def _read_csv(path: Path, text: str) -> list[OutcomeLine]:
    reader = csv.reader(text.splitlines(keepends=True))
    header = [name.strip() for name in next(reader, [])]
    if not header or header == [""]:
        raise OutcomeError(f"{path}: line 1 must be the header, e.g. {DECISION_ID},{LABEL}")
    _check_columns(path, header, "the header (line 1)")
    lines = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            number = reader.line_num
            if len(row) != len(header):
                lines.append(OutcomeLine(number, problem=("line", f"has {len(row)} field(s); the header has "
                                                                  f"{len(header)}")))
                continue
            values = {name: _cell(cell) for name, cell in zip(header, row)}
            lines.append(OutcomeLine(number, values.get(DECISION_ID), values.get(REQUEST_ID), values.get(ROW_INDEX),
                                     values.get(LABEL)))
    except csv.Error as exc:
        raise OutcomeError(f"{path}: line {reader.line_num} is not CSV: {exc}") from exc
    return lines


def _read_jsonl(text: str) -> list[OutcomeLine]:
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            document = json.loads(raw)
        except json.JSONDecodeError as exc:
            lines.append(OutcomeLine(number, problem=("line", f"is not JSON: {exc.msg} (column {exc.colno})")))
            continue
        if not isinstance(document, dict):
            lines.append(OutcomeLine(number, problem=("line", "must be a JSON object, e.g. "
                                                              '{"decision_id": "...", "label": 1}')))
            continue
        unknown = sorted(set(document) - set(COLUMNS))
        ids = {k: document.get(k) for k in (DECISION_ID, REQUEST_ID)}
        wrong = [k for k, v in ids.items() if v is not None and not isinstance(v, str)]
        if unknown:
            lines.append(OutcomeLine(number, problem=(unknown[0], f"unknown field(s) {unknown}; accepted: "
                                                                  f"{list(COLUMNS)}")))
        elif wrong:
            lines.append(OutcomeLine(number, problem=(wrong[0], f"must be a string, got {ids[wrong[0]]!r}")))
        else:
            lines.append(OutcomeLine(number, _cell(ids[DECISION_ID]), _cell(ids[REQUEST_ID]), document.get(ROW_INDEX),
                                     document.get(LABEL)))
    return lines


# -- labels ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelVocabulary:
    """How a dataset's outcomes may be written: 1 / 0, or the target's own values (the spec's positive label,
    and the one other label of the training data when the platform has built the dataset)."""

    dataset: str
    positive: str | None = None
    negative: str | None = None

    def accepted(self) -> str:
        values = [v for v in (self.positive, self.negative) if v is not None]
        positive = f"{self.positive!r} (positive class)" if self.positive else None
        negative = f"{self.negative!r}" if self.negative else None
        own = " or ".join(v for v in (positive, negative) if v)
        numbers = [n for n in ("1", "0") if n not in values]
        if not numbers:
            return own
        classes = " or ".join(f"{n}{' (positive class)' if n == '1' else ''}" for n in numbers)
        return f"{own}; or {classes}" if own else classes

    def parse(self, value: object) -> int:
        """1 or 0; raises ValueError saying what is accepted."""
        if value is None:
            raise ValueError(f"is missing; accepted: {self.accepted()}")
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{value!r} is not a label; accepted: {self.accepted()}")
        # A number reads as its text: JSON's 1 and a CSV's "1" must be the same label. The target's own
        # values first: where they are 1/2, or 0/1 with 0 the positive class, "1" is that value's class.
        text = str(value) if isinstance(value, int) else value.strip()
        if self.positive is not None and text == self.positive:
            return 1
        if self.negative is not None and text == self.negative:
            return 0
        if text in ("0", "1"):
            return int(text)
        raise ValueError(f"{value!r} is not a label of {self.dataset}; accepted: {self.accepted()}")

    def text(self, label: int) -> str:
        """The target's value for label 1 / 0 (what a training table holds)."""
        value = self.positive if label == 1 else self.negative
        if value is None:
            raise DataError(f"{self.dataset}: the target's value for label {label} is not known: the platform has "
                            f"not built the dataset (no training reference); run its data_job first")
        return value


def label_vocabulary(paths: PlatformPaths, dataset: str) -> LabelVocabulary:
    """The dataset's vocabulary from the catalogue (positive label) and the training reference (the other label);
    only 1 / 0 when the platform does not know the dataset."""
    try:
        spec = DatasetCatalog(paths).spec(dataset)
    except DatasetSpecError:
        return LabelVocabulary(dataset)
    try:
        reference = TrainingReference.read(paths, dataset)
    except DataError:
        return LabelVocabulary(dataset, spec.positive_label)
    return vocabulary_of(spec, reference)


def vocabulary_of(spec: DatasetSpec, reference: TrainingReference) -> LabelVocabulary:
    others = sorted({str(label_text(v)) for v in reference.rows[spec.target]} - {spec.positive_label})
    return LabelVocabulary(spec.name, spec.positive_label, others[0] if len(others) == 1 else None)


# -- registering -------------------------------------------------------------------------------------


class LineProblem(_Frozen):
    """A refused line: its number, the field at fault and why."""

    line: int
    field: str
    message: str

    def text(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


class RegistrationReport(_Frozen):
    """What `register_outcomes` did with a file."""

    file: str
    sha256: str
    lines: int
    recorded: int
    unchanged: int
    refused: list[LineProblem]
    skip_refused: bool

    def summary(self) -> str:
        parts = [f"{self.file}: {self.lines} line(s): {self.recorded} outcome(s) recorded",
                 f"{self.unchanged} already recorded with the same label (unchanged)"]
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        return ", ".join(parts)

    def refusal_text(self) -> str:
        return "\n".join(f"  {problem.text()}" for problem in self.refused)


@dataclass(frozen=True)
class _Resolved:
    line: int
    decision: Mapping[str, Any]
    label: int


class _Refused(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class _DecisionIndex:
    """Decisions by id (`get`, indexed) and, read once when first needed, by the caller's request id."""

    def __init__(self, store: DecisionStore):
        self.store = store
        self._by_request: dict[str, list[dict[str, Any]]] | None = None

    def by_id(self, decision_id: str) -> Mapping[str, Any] | None:
        entry = self.store.get(decision_id)
        return entry if entry is not None and entry.get(KIND) == KIND_DECISION else None

    def by_request(self, request_id: str) -> list[dict[str, Any]]:
        if self._by_request is None:
            self._by_request = {}
            for entry in self.store.iter_kinds([KIND_DECISION]):
                if entry.get(REQUEST_ID) is not None:
                    self._by_request.setdefault(str(entry[REQUEST_ID]), []).append(entry)
        return self._by_request.get(request_id, [])


def _row_index(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():  # "²".isdigit() too
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Refused(ROW_INDEX, f"{value!r} is not a row index (0, 1, ...)")


def _find(line: OutcomeLine, index: _DecisionIndex) -> Mapping[str, Any]:
    """The one decision `line` names; raises `_Refused` saying why there is none or more than one."""
    row = _row_index(line.row_index)
    if line.decision_id is not None:
        entry = index.by_id(line.decision_id)
        if entry is None:
            raise _Refused(DECISION_ID, f"unknown decision id {line.decision_id!r}: no decision with this id in the "
                                        f"decision log")
        if line.request_id is not None and entry.get(REQUEST_ID) != line.request_id:
            raise _Refused(REQUEST_ID, f"{line.request_id!r} is not the request id of decision {line.decision_id!r} "
                                       f"({entry.get(REQUEST_ID)!r})")
        if row is not None and entry.get(ROW_INDEX) != row:
            raise _Refused(ROW_INDEX, f"{row} is not the row of decision {line.decision_id!r} ({entry.get(ROW_INDEX)})")
        return entry
    if line.request_id is None:
        raise _Refused(DECISION_ID, f"the line names no decision: give {DECISION_ID} or {REQUEST_ID}")
    candidates = index.by_request(line.request_id)
    if not candidates:
        raise _Refused(REQUEST_ID, f"unknown request id {line.request_id!r}: no decision of this request in the "
                                   f"decision log")
    rows = sorted({int(c.get(ROW_INDEX, 0)) for c in candidates})
    if row is None and len(candidates) > 1:
        raise _Refused(REQUEST_ID, f"ambiguous request id {line.request_id!r}: it has {len(candidates)} decisions "
                                   f"(rows {rows}); add {ROW_INDEX} or give {DECISION_ID}")
    if row is not None:
        candidates = [c for c in candidates if c.get(ROW_INDEX) == row]
        if not candidates:
            raise _Refused(ROW_INDEX, f"request {line.request_id!r} has no row {row} (rows {rows})")
    if len(candidates) > 1:
        ids = sorted(str(c[ID]) for c in candidates)
        raise _Refused(REQUEST_ID, f"ambiguous request id {line.request_id!r}: row {row} matches {len(candidates)} "
                                   f"decisions of different requests ({', '.join(ids)}); give {DECISION_ID}")
    return candidates[0]


class _Resolver:
    """Resolves each line to (decision, label), remembering the vocabulary of every dataset it meets."""

    def __init__(self, paths: PlatformPaths, index: _DecisionIndex, dataset: str | None):
        self.paths, self.index, self.dataset = paths, index, dataset
        self._vocabularies: dict[str, LabelVocabulary] = {}

    def vocabulary(self, dataset: str) -> LabelVocabulary:
        if dataset not in self._vocabularies:
            self._vocabularies[dataset] = label_vocabulary(self.paths, dataset)
        return self._vocabularies[dataset]

    def resolve(self, line: OutcomeLine) -> _Resolved:
        if line.problem is not None:
            raise _Refused(*line.problem)
        decision = _find(line, self.index)
        dataset = str(decision.get(DATASET))
        if self.dataset is not None and dataset != self.dataset:
            raise _Refused(DECISION_ID, f"decision {decision[ID]!r} is of dataset {dataset!r}, not {self.dataset!r}")
        try:
            label = self.vocabulary(dataset).parse(line.label)
        except ValueError as exc:
            raise _Refused(LABEL, str(exc)) from exc
        return _Resolved(line.line, decision, label)


def _resolve_all(lines: Sequence[OutcomeLine], resolver: _Resolver) -> tuple[list[_Resolved], list[LineProblem]]:
    resolved: list[_Resolved] = []
    problems: list[LineProblem] = []
    first_line: dict[str, int] = {}
    for line in lines:
        try:
            item = resolver.resolve(line)
        except _Refused as refused:
            problems.append(LineProblem(line=line.line, field=refused.field, message=str(refused)))
            continue
        decision_id = str(item.decision[ID])
        if decision_id in first_line:
            problems.append(LineProblem(line=line.line, field=DECISION_ID, message=(
                f"decision {decision_id!r} is labelled on line {first_line[decision_id]} already "
                f"(duplicate within the file)")))
            continue
        first_line[decision_id] = line.line
        resolved.append(item)
    return resolved, problems


def _existing_outcomes(store: DecisionStore, decision_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The outcome records already stored for `decision_ids`, by decision id."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(decision_ids), LOOKUP_CHUNK):
        chunk = [outcome_id(d) for d in decision_ids[start:start + LOOKUP_CHUNK]]
        for record_id in store.existing_ids(chunk):
            entry = store.get(record_id)
            if entry is not None and entry.get(KIND) == KIND_OUTCOME:
                found[str(entry[DECISION_ID])] = entry
    return found


def _store_of(log: DecisionLog | DecisionStore) -> DecisionStore:
    return log.store if isinstance(log, DecisionLog) else log


def register_outcomes(log: DecisionLog | DecisionStore, paths: PlatformPaths, file: Path, *,
                      dataset: str | None = None, registered_by: str | None = None,
                      skip_refused: bool = False) -> RegistrationReport:
    """Record the outcomes of `file` (see the module doc) as `outcome` records of the decision log.

    All or nothing unless `skip_refused`: with a refused line nothing is recorded and `OutcomeError` (whose
    `report` lists every refused line) is raised. With `skip_refused` the good lines are recorded and the
    report lists the refused ones. `dataset`: refuse decisions of other datasets. A line whose decision has the
    same label already is unchanged; a different label is refused (outcomes are never overwritten)."""
    store = _store_of(log)
    file = Path(file)
    lines = read_outcome_file(file)
    digest = file_sha256(file)
    resolved, problems = _resolve_all(lines, _Resolver(paths, _DecisionIndex(store), dataset))
    outcome: dict[str, RegistrationReport] = {}

    def build() -> list[dict[str, Any]]:
        # Inside the store's critical section: no other writer can label these decisions in between.
        existing = _existing_outcomes(store, [str(r.decision[ID]) for r in resolved])
        refused, records, unchanged = list(problems), [], 0
        created = now_iso()
        for item in resolved:
            decision_id = str(item.decision[ID])
            stored = existing.get(decision_id)
            if stored is not None and stored.get(LABEL) == item.label:
                unchanged += 1
            elif stored is not None:
                refused.append(LineProblem(line=item.line, field=LABEL, message=(
                    f"decision {decision_id!r} already has the outcome {stored.get(LABEL)} (registered from "
                    f"{stored.get('source_file')} line {stored.get('line')} at {stored.get(CREATED_AT)}); "
                    f"a recorded outcome is never overwritten")))
            else:
                records.append(OutcomeRecord(
                    id=outcome_id(decision_id), created_at=created, decision_id=decision_id,
                    request_id=item.decision.get(REQUEST_ID), dataset=str(item.decision.get(DATASET)),
                    label=1 if item.label == 1 else 0, source_file=file.name, source_sha256=digest, line=item.line,
                    registered_by=registered_by,
                ).model_dump())
        refused.sort(key=lambda p: p.line)
        recorded = len(records) if (skip_refused or not refused) else 0
        report = RegistrationReport(file=str(file), sha256=digest, lines=len(lines), recorded=recorded,
                                    unchanged=unchanged, refused=refused, skip_refused=skip_refused)
        outcome["report"] = report
        if refused and not skip_refused:
            raise OutcomeError(
                f"{file}: {len(refused)} of {len(lines)} line(s) refused; nothing was recorded (all or nothing: "
                f"fix them, or pass --skip-refused to record the others):\n{report.refusal_text()}", report)
        return records

    store.append_checked(build)
    return outcome["report"]


# -- the join ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledDecision:
    """A decision with its label: the registered outcome when there is one, else the reviewer's resolution."""

    decision_id: str
    created_at: str
    request_id: str | None
    row_index: int
    dataset: str
    ensemble_version: str
    probability: float
    decision: int
    decision_threshold: float
    members: Mapping[str, float | None]
    label: int
    label_source: LabelSource
    registered_label: int | None
    reviewer_decision: int | None
    features: Mapping[str, Any] = field(default_factory=dict)
    stored_columns: tuple[str, ...] = ()


def parse_time(text: str, what: str = "time") -> datetime:
    """An ISO-8601 time (a date alone is its midnight); without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise OutcomeError(f"{what} {text!r} is not an ISO-8601 time, e.g. 2026-01-31 or 2026-01-31T12:00:00+00:00") \
            from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


LABEL_KINDS = (KIND_OUTCOME, KIND_REVIEW_RESOLVE)


def decision_labels(entries: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """(registered outcome, reviewer's resolution) by decision id, from `outcome` and `review_resolve`
    entries (others are skipped); the last resolution of a decision counts. Where both exist the registered
    outcome is the label (`LabelledDecision.label`, shadow comparisons)."""
    registered: dict[str, int] = {}
    reviewer: dict[str, int] = {}
    for entry in entries:
        if entry.get(KIND) == KIND_OUTCOME:
            registered[str(entry[DECISION_ID])] = int(entry[LABEL])
        elif entry.get(KIND) == KIND_REVIEW_RESOLVE and entry.get(DECISION) is not None:
            reviewer[str(entry[DECISION_ID])] = int(entry[DECISION])
    return registered, reviewer


def _labelled(entry: Mapping[str, Any], registered: int | None, reviewer: int | None) -> LabelledDecision:
    label: int | None
    source: LabelSource
    label, source = (registered, LABEL_SOURCE_REGISTERED) if registered is not None else (reviewer, LABEL_SOURCE_REVIEWER)
    if label is None:
        raise ValueError(f"decision {entry[ID]!r} has no label to join")
    members = entry.get(MEMBERS) or {}
    return LabelledDecision(
        decision_id=str(entry[ID]), created_at=str(entry[CREATED_AT]), request_id=entry.get(REQUEST_ID),
        row_index=int(entry.get(ROW_INDEX, 0)), dataset=str(entry[DATASET]),
        ensemble_version=str(entry.get(ENSEMBLE_VERSION)), probability=float(entry[PROBABILITY]),
        decision=int(entry[DECISION]), decision_threshold=float(entry[DECISION_THRESHOLD]),
        members={name: (None if m.get(PROBABILITY) is None else float(m[PROBABILITY])) for name, m in members.items()},
        label=label, label_source=source, registered_label=registered, reviewer_decision=reviewer,
        features=dict(entry.get(FEATURES) or {}), stored_columns=tuple(entry.get(STORED_COLUMNS) or ()),
    )


def labelled_decisions(log: DecisionLog | DecisionStore, dataset: str, since: str | None = None,
                       until: str | None = None) -> list[LabelledDecision]:
    """The decisions of `dataset` made in [since, until) that have a label, oldest first (ties by id)."""
    store = _store_of(log)
    start = parse_time(since, "since") if since else None
    end = parse_time(until, "until") if until else None
    registered, reviewer = decision_labels(store.iter_kinds(LABEL_KINDS))
    rows: list[tuple[datetime, LabelledDecision]] = []
    for entry in store.iter_kinds([KIND_DECISION]):
        decision_id = str(entry[ID])
        if entry.get(DATASET) != dataset or (decision_id not in registered and decision_id not in reviewer):
            continue
        moment = parse_time(str(entry[CREATED_AT]), "created_at")
        if (start is None or moment >= start) and (end is None or moment < end):
            rows.append((moment, _labelled(entry, registered.get(decision_id), reviewer.get(decision_id))))
    rows.sort(key=lambda pair: (pair[0], pair[1].decision_id))
    return [row for _, row in rows]


# -- joining the next retraining ---------------------------------------------------------------------


class TrainingExport(_Frozen):
    """What `export_training_batch` put into the dataset's inbox (`inbox_file` None: nothing new to add)."""

    dataset: str
    inbox_file: str | None
    batch_id: str | None
    rows: int
    by_source: dict[str, int]
    already_exported: int
    not_joinable: int
    not_joinable_reasons: dict[str, int]
    included_by_policy: bool

    def summary(self) -> str:
        sources = ", ".join(f"{n} {s}" for s, n in sorted(self.by_source.items())) or "none"
        lines = [f"{self.dataset}: {self.rows} labelled decision(s) exported ({sources}); "
                 f"{self.already_exported} exported before; {self.not_joinable} not joinable"]
        lines += [f"  not joinable ({n}): {reason}" for reason, n in sorted(self.not_joinable_reasons.items())]
        if self.inbox_file:
            lines.append(f"  -> {self.inbox_file} (batch {self.batch_id}): validated like any batch, then added to "
                         f"the next retraining")
        if not self.included_by_policy:
            lines.append("  note: automation.include_batches is 'none': retrainings add no batches, these included")
        return "\n".join(lines)


def exported_decision_ids(store: BatchStore, dataset: str) -> set[str]:
    """Decision ids in the dataset's earlier exports, wherever the batch stands (inbox, received, accepted or
    quarantined: a quarantined export was refused with its reason and is not offered again)."""
    found: set[str] = set()
    for source in store.sources(dataset):
        if not source.name.startswith(EXPORT_STEM) and not source.parent.name.startswith(EXPORT_STEM):
            continue
        try:
            table = read_batch(source)
        except DataError:
            continue  # not a file this module wrote (those are written whole); the batch check quarantines it
        if EXPORT_ID_COLUMN in table.columns:
            found |= set(table[EXPORT_ID_COLUMN].dropna().astype(str))
    return found


def _training_rows(rows: Iterable[LabelledDecision], features: Sequence[str], vocabulary: LabelVocabulary,
                   target: str) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield {**{c: row.features.get(c) for c in features}, target: vocabulary.text(row.label),
               EXPORT_ID_COLUMN: row.decision_id, EXPORT_SOURCE_COLUMN: row.label_source}


def _frame(rows: list[dict[str, Any]], reference: TrainingReference, target: str) -> pd.DataFrame:
    """The batch as the training table's columns: a date/time column the members see as numeric parts
    (`opened_year`, ..., `opened_days`) is written as the date itself, rebuilt from its `_days` part (days
    since 1970 with the time as a fraction, UTC), because the next retraining reads the training table's
    columns and derives the parts again; the parts alone were dropped there and the date read as missing."""
    schema = reference.schema
    parts = {part_name(c, p) for c in schema.datetime for p in DATETIME_PARTS}
    plain = [c for c in schema.features if c not in parts]
    # A date whose parts were all left out (mostly empty, say) is not a feature: nothing to rebuild.
    dates = [c for c in schema.datetime if part_name(c, "days") in schema.features]
    columns = [*plain, *dates, target, EXPORT_ID_COLUMN, EXPORT_SOURCE_COLUMN]
    frame = pd.DataFrame(rows, columns=[*schema.features, target, EXPORT_ID_COLUMN, EXPORT_SOURCE_COLUMN])
    for column in dates:
        days = pd.to_numeric(frame.get(part_name(column, "days")), errors="coerce")
        # To the microsecond: a float's days carry ~0.3 µs of rounding (06:30 came back as 06:29:59.999999893).
        stamps = (pd.Timestamp("1970-01-01", tz="UTC") + pd.to_timedelta(days, unit="D")).dt.round("us")
        frame[column] = [None if pd.isna(t) else t.isoformat() for t in stamps]
    frame = frame[columns]
    for column in [c for c in schema.numeric if c not in parts]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in [*schema.categorical, *dates, target, EXPORT_ID_COLUMN, EXPORT_SOURCE_COLUMN]:
        frame[column] = frame[column].astype("object").where(frame[column].notna(), None)
    return frame


def export_training_batch(log: DecisionLog | DecisionStore, paths: PlatformPaths, spec: DatasetSpec, *,
                          since: str | None = None, until: str | None = None,
                          registered_only: bool = False) -> TrainingExport:
    """Put the labelled decisions of `spec`'s dataset not exported before into its inbox as one Parquet batch:
    the features of the training schema from each decision's stored features, the label as the target's value,
    and the decision id and label source. A decision whose stored columns lack a feature of the training schema
    (e.g. the service stored fewer columns) cannot join and is counted by reason. Sensitive attributes are not
    stored by the service: the batch lacks them, as a batch may (fairness reports count such rows as
    'missing'). Raises `DataError` when the dataset has no training reference yet."""
    reference = TrainingReference.read(paths, spec.name)
    vocabulary = vocabulary_of(spec, reference)
    features = list(reference.schema.features)
    batches = BatchStore(paths)
    exported = exported_decision_ids(batches, spec.name)
    joinable: list[LabelledDecision] = []
    reasons: dict[str, int] = {}
    already = 0
    for row in labelled_decisions(log, spec.name, since, until):
        if registered_only and row.label_source != LABEL_SOURCE_REGISTERED:
            continue
        if row.decision_id in exported:
            already += 1
            continue
        missing = [c for c in features if c not in row.stored_columns or c not in row.features]
        if missing:
            reason = f"stored features lack {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        joinable.append(row)
    by_source: dict[str, int] = {}
    for row in joinable:
        by_source[row.label_source] = by_source.get(row.label_source, 0) + 1
    inbox_file, batch_id = None, None
    if joinable:
        frame = _frame(list(_training_rows(joinable, features, vocabulary, spec.target)), reference, spec.target)
        with tempfile.TemporaryDirectory(prefix="outcomes-") as scratch:
            staged = Path(scratch) / f"{EXPORT_STEM}.parquet"
            frame.to_parquet(staged, index=False)
            arrival = batches.register(spec.name, staged)
        inbox_file, batch_id = str(arrival.path), arrival.batch_id
    return TrainingExport(dataset=spec.name, inbox_file=inbox_file, batch_id=batch_id, rows=len(joinable),
                          by_source=by_source, already_exported=already, not_joinable=sum(reasons.values()),
                          not_joinable_reasons=reasons,
                          included_by_policy=spec.automation.include_batches == "labelled")
