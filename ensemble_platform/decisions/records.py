"""The records of the decision log (frozen pydantic models) and the names of their stored fields, which the
service writes and the CLI, the review queue, the outcome joins and the Dagster monitoring assets read back."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ensemble_platform.integrity import canonical_json

# Stored field names (read back by `show`, `export`, `replay`, `verify`, the queue and the monitoring assets).
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
ROW_INDEX = "row_index"
BATCH_SIZE = "batch_size"
UNSEEN_CATEGORY = "unseen_category"
REASONS = "reasons"  # a review item's
SEGMENT = "segment"  # a review item's
MEMBER_PROBABILITY = "probability"  # inside MEMBERS[name]
MEMBER_REASON = "reason"  # inside MEMBERS[name]: why the member's output is missing

KIND_DECISION: Final = "decision"
KIND_REFUSAL: Final = "refusal"
KIND_REVIEW_ITEM: Final = "review_item"
KIND_REVIEW_CLAIM: Final = "review_claim"
KIND_REVIEW_RELEASE: Final = "review_release"
KIND_REVIEW_RESOLVE: Final = "review_resolve"
KIND_OUTCOME: Final = "outcome"
KIND_SHADOW: Final = "shadow"
REVIEW_KINDS: Final = (KIND_REVIEW_ITEM, KIND_REVIEW_CLAIM, KIND_REVIEW_RELEASE, KIND_REVIEW_RESOLVE)

MAX_ROWS = 10_000


def utc_now() -> datetime:
    return datetime.now(UTC)


def now_iso() -> str:
    """A record's `created_at`: ISO-8601 UTC to the microsecond (text order is time order)."""
    return utc_now().isoformat(timespec="microseconds")


def stored_time(text: str) -> datetime:
    """A stored `created_at` as an aware UTC time (a zone-less one is taken as UTC)."""
    moment = datetime.fromisoformat(text)
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def input_sha256(features: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of one validated input row (every feature, NaN as null)."""
    return hashlib.sha256(canonical_json(dict(features))).hexdigest()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemberDocument(_Frozen):
    registered_model: str
    version: str
    probability: float | None
    error: str | None = None
    reason: str | None = None


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
    # Lazy strategies (cascade, router): members not called for this row -> why; they are not in
    # `members` and did not vote (agreement is over the members that voted). Empty: every member ran.
    skipped_members: dict[str, str] = Field(default_factory=dict)


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


class ReviewItemRecord(_Frozen):
    """A decision routed to human review: written in the same commit as its decision record, so no
    routed decision exists without its queue item. Holds what the reviewer needs to work it."""

    id: str
    kind: Literal["review_item"] = KIND_REVIEW_ITEM
    created_at: str
    decision_id: str
    request_id: str | None
    dataset: str
    ensemble_version: str
    reasons: list[str]
    segment: str | None
    probability: float
    decision: int
    agreement: float
    degraded: bool
    members: dict[str, MemberDocument]
    features: dict[str, Any]


class ReviewActionRecord(_Frozen):
    """A reviewer's claim, release or resolution of the queue item of `decision_id`. A resolution's
    `decision` is the reviewer's outcome, recorded next to the ensemble's, never over it."""

    id: str
    kind: Literal["review_claim", "review_release", "review_resolve"]
    created_at: str
    decision_id: str
    reviewer: str
    token_name: str | None
    note: str = ""
    decision: int | None = None
    forced: bool = False


def stored_subset(features: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {c: features[c] for c in columns if c in features}


# Outcomes: the observed label of a decision, joined to it by `decision_id` (`decisions.outcomes`).
LABEL = "label"
LABEL_SOURCE_REGISTERED: Final = "registered"
LABEL_SOURCE_REVIEWER: Final = "reviewer"
OUTCOME_ID_PREFIX: Final = "outcome-"


def outcome_id(decision_id: str) -> str:
    """One outcome per decision: the store's unique record id refuses a second one even in a race."""
    return f"{OUTCOME_ID_PREFIX}{decision_id}"


class OutcomeRecord(_Frozen):
    """The observed outcome (label 1: the dataset's positive class) of one decision, registered from a
    file (`outcomes register`): which file (name, SHA-256), which line, by whom. Never overwritten."""

    id: str
    kind: Literal["outcome"] = KIND_OUTCOME
    created_at: str
    decision_id: str
    request_id: str | None
    dataset: str
    label: Literal[0, 1]
    source: Literal["registered"] = LABEL_SOURCE_REGISTERED
    source_file: str
    source_sha256: str
    line: int
    registered_by: str | None = None


# Shadow scoring: a staging candidate's output for a production decision (`serve --shadow`), never answered.
PRODUCTION_VERSION = "production_version"
PRODUCTION_PROBABILITY = "production_probability"
PRODUCTION_DECISION = "production_decision"
PRODUCTION_AGREEMENT = "production_agreement"
CANDIDATE_VERSION = "candidate_version"
ERROR = "error"
LAG_MS = "lag_ms"
ERROR_KIND = "error_kind"
SHADOW_INVALID_INPUT: Final = "invalid_input"
SHADOW_REFUSED: Final = "refused"
SHADOW_EXCEPTION: Final = "exception"
ShadowErrorKind = Literal["invalid_input", "refused", "exception"]


class ShadowRecord(_Frozen):
    """A staging candidate's output for the production decision `decision_id`, scored off the response path
    and never answered. The production outputs are copied beside it (one scan of the `shadow` kind compares
    the pair). A candidate that failed on the row (input its schema refuses, too few working members, any
    exception, a non-finite output) has `error` and `error_kind` and no output."""

    id: str
    kind: Literal["shadow"] = KIND_SHADOW
    created_at: str
    decision_id: str
    request_id: str | None
    dataset: str
    production_version: str
    production_probability: float
    production_decision: int
    production_agreement: float
    candidate_version: str
    config_hash: str
    manifest_sha256: str
    code_version: str
    probability: float | None
    decision: int | None
    agreement: float | None
    needs_review: bool | None
    degraded: bool | None
    members: dict[str, MemberDocument]
    error: str | None
    error_kind: ShadowErrorKind | None
    input_sha256: str | None
    latency_ms: float  # the candidate's scoring time of the batch that held this row
    lag_ms: float  # from the production answer to this record's creation (queueing + scoring)
