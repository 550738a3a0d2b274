"""The documents the decision service reads and writes: requests, responses and decision-log records
(frozen pydantic models), and the names of the stored fields other code reads back."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ensemble_platform.integrity import canonical_json

# Stored field names (records are read back by `show`, `export`, `replay` and `verify`).
ID = "id"
KIND = "kind"
CREATED_AT = "created_at"
REQUEST_ID = "request_id"
DATASET = "dataset"
ENSEMBLE_VERSION = "ensemble_version"
CONFIG_HASH = "config_hash"
MANIFEST_SHA256 = "manifest_sha256"
MEMBERS = "members"
COMBINED = "combined_uncalibrated"
PROBABILITY = "probability"
DECISION = "decision"
AGREEMENT = "agreement"
NEEDS_REVIEW = "needs_review"
REVIEW_REASONS = "review_reasons"
DEGRADED = "degraded"
EXCLUDED = "excluded_members"
FALLBACK = "fallback"
FALLBACK_REASON = "fallback_reason"
INPUT_SHA256 = "input_sha256"
FEATURES = "features"
STORED_COLUMNS = "stored_columns"
LATENCY_MS = "latency_ms"
DECISION_ID = "decision_id"

KIND_DECISION: Final = "decision"
KIND_REFUSAL: Final = "refusal"
KIND_REVIEW: Final = "review"

MAX_ROWS = 10_000


def input_sha256(features: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of one validated input row (every feature, NaN as null)."""
    return hashlib.sha256(canonical_json(dict(features))).hexdigest()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- requests -----------------------------------------------------------------------------------

class DataframeSplit(_Frozen):
    columns: list[str]
    data: list[list[Any]]
    index: list[Any] | None = None

    def records(self) -> list[dict[str, Any]]:
        for number, row in enumerate(self.data):
            if len(row) != len(self.columns):
                raise ValueError(f"dataframe_split row {number} has {len(row)} values for {len(self.columns)} columns")
        return [dict(zip(self.columns, row)) for row in self.data]


class DecisionRequest(_Frozen):
    """`{"request_id": ..., "rows": [{col: value}, ...]}` or `{"request_id": ..., "dataframe_split": {...}}`."""

    request_id: str | None = Field(default=None, max_length=200)
    rows: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_ROWS)
    dataframe_split: DataframeSplit | None = None

    @model_validator(mode="after")
    def _one_input(self) -> DecisionRequest:
        if (self.rows is None) == (self.dataframe_split is None):
            raise ValueError("give exactly one of 'rows' and 'dataframe_split'")
        if self.dataframe_split is not None and len(self.dataframe_split.data) > MAX_ROWS:
            raise ValueError(f"at most {MAX_ROWS} rows per request")
        return self

    def records(self) -> list[dict[str, Any]]:
        return self.rows if self.rows is not None else self.dataframe_split.records()  # type: ignore[union-attr]


class InvocationRequest(_Frozen):
    """MLflow scoring-server input: `dataframe_split`, `dataframe_records` or `instances` (list of objects)."""

    dataframe_split: DataframeSplit | None = None
    dataframe_records: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_ROWS)
    instances: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_ROWS)
    params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> InvocationRequest:
        given = [k for k in ("dataframe_split", "dataframe_records", "instances") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'dataframe_split', 'dataframe_records', 'instances'")
        return self

    def records(self) -> list[dict[str, Any]]:
        if self.dataframe_split is not None:
            return self.dataframe_split.records()
        return self.dataframe_records if self.dataframe_records is not None else list(self.instances or [])


class ReviewRequest(_Frozen):
    reviewer: str = Field(min_length=1, max_length=200)
    outcome: Literal["confirm", "overturn", "escalate"]
    note: str = Field(default="", max_length=5000)


# --- responses and records ----------------------------------------------------------------------

class MemberDocument(_Frozen):
    registered_model: str
    version: str
    probability: float | None
    error: str | None = None
    reason: str | None = None


class DecisionDocument(_Frozen):
    """One row's answer."""

    decision_id: str
    probability: float
    decision: int
    agreement: float
    needs_review: bool
    review_reasons: list[str]
    members: dict[str, MemberDocument]
    ensemble_version: str
    config_hash: str
    degraded: bool
    excluded_members: dict[str, str]
    fallback: bool


class DecisionResponse(_Frozen):
    request_id: str | None
    decisions: list[DecisionDocument]


class _RecordHeader(_Frozen):
    """What every decision-log record says about when, for whom and by which exact version."""

    id: str
    created_at: str
    request_id: str | None
    dataset: str
    ensemble_version: str
    config_hash: str
    manifest_sha256: str
    code_version: str


class DecisionRecord(_RecordHeader):
    """What the decision log stores for one decided row."""

    kind: Literal["decision"] = KIND_DECISION
    row_index: int
    batch_size: int
    members: dict[str, MemberDocument]
    combined_uncalibrated: float
    probability: float
    decision: int
    decision_threshold: float
    agreement: float
    needs_review: bool
    review_reasons: list[str]
    degraded: bool
    excluded_members: dict[str, str]
    fallback: bool
    fallback_reason: str | None
    unseen_category: bool
    missing_share: float
    max_missing_share: float
    latency_ms: float
    input_sha256: str
    stored_columns: list[str]
    features: dict[str, Any]


class RefusalRecord(_RecordHeader):
    """A request refused for lack of working members."""

    kind: Literal["refusal"] = KIND_REFUSAL
    reason: str
    batch_size: int
    refused_rows: list[int]
    min_members: int
    members: dict[str, MemberDocument]
    input_sha256: list[str]
    latency_ms: float


class ReviewRecord(_Frozen):
    id: str
    kind: Literal["review"] = KIND_REVIEW
    created_at: str
    decision_id: str
    reviewer: str
    outcome: str
    note: str
    token_name: str | None


def stored_subset(features: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {c: features[c] for c in columns if c in features}
