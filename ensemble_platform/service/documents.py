"""The documents the decision service's HTTP API reads and answers (frozen pydantic models); the records it
stores are `ensemble_platform.decisions.records`."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ensemble_platform.decisions.records import MAX_ROWS, MemberDocument


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- requests -----------------------------------------------------------------------------------

class DataframeSplit(_Frozen):
    columns: list[str]
    data: list[list[Any]]
    index: list[Any] | None = None

    def records(self) -> list[dict[str, Any]]:
        repeated = sorted(c for c, n in Counter(self.columns).items() if n > 1)  # linear: columns can be many
        if repeated:  # a dict would keep the last of them silently
            raise ValueError(f"dataframe_split columns {repeated} appear more than once")
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


class ClaimRequest(_Frozen):
    reviewer: str = Field(max_length=200)


class ReleaseRequest(_Frozen):
    reviewer: str = Field(max_length=200)
    note: str = Field(default="", max_length=5000)
    force: bool = False


class ResolveRequest(_Frozen):
    """The reviewer's outcome: the class they decide (0 or 1), with a note saying why."""

    reviewer: str = Field(max_length=200)
    decision: int
    note: str = Field(max_length=5000)


# --- responses and records ----------------------------------------------------------------------

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


