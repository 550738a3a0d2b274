"""From the decider's output to the documents the service answers and records."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ensemble_platform import __version__
from ensemble_platform.decisions.records import (
    DecisionRecord,
    MemberDocument,
    RefusalRecord,
    ReviewItemRecord,
    input_sha256,
    now_iso,
    stored_subset,
)
from ensemble_platform.service.documents import DecisionDocument
from ensemble_platform.serving.decider import Decider, DecisionBatch, MemberOutput, RefusalError, RowDecision


def new_id() -> str:
    return str(uuid.uuid4())


def default_store_columns(decider: Decider) -> list[str]:
    """Every feature except the schema's sensitive attributes."""
    sensitive = set(decider.runtime.schema.sensitive)
    return [c for c in decider.features if c not in sensitive]


def member_documents(members: Mapping[str, MemberOutput]) -> dict[str, MemberDocument]:
    return {name: MemberDocument(registered_model=m.registered_model, version=m.version, probability=m.probability,
                                 error=m.error, reason=m.reason) for name, m in members.items()}


@dataclass(frozen=True)
class Identity:
    """What every record says about the serving bundle."""

    dataset: str
    ensemble_version: str
    config_hash: str
    manifest_sha256: str

    @classmethod
    def of(cls, decider: Decider, manifest_sha256: str) -> Identity:
        return cls(decider.dataset, decider.ensemble_version, decider.config_hash, manifest_sha256)

    def fields(self) -> dict[str, str]:
        return {"dataset": self.dataset, "ensemble_version": self.ensemble_version, "config_hash": self.config_hash,
                "manifest_sha256": self.manifest_sha256}


def decision_records(decider: Decider, batch: DecisionBatch, identity: Identity, request_id: str | None,
                     store_columns: Sequence[str], latency_ms: float) -> list[DecisionRecord]:
    created = now_iso()
    return [DecisionRecord(
        id=new_id(), created_at=created, request_id=request_id, dataset=identity.dataset,
        ensemble_version=identity.ensemble_version, config_hash=identity.config_hash,
        manifest_sha256=identity.manifest_sha256, code_version=__version__,
        row_index=i, batch_size=len(batch.rows), members=member_documents(row.members),
        combined_uncalibrated=row.combined, probability=row.probability, decision=row.decision,
        decision_threshold=decider.runtime.decision_threshold, agreement=row.agreement,
        needs_review=row.needs_review, review_reasons=list(row.review_reasons), degraded=row.degraded,
        excluded_members=dict(row.excluded), fallback=row.fallback, fallback_reason=row.fallback_reason,
        unseen_category=row.unseen_category, missing_share=row.missing_share,
        max_missing_share=decider.max_missing_share, latency_ms=latency_ms, skipped_members=dict(row.skipped),
        input_sha256=input_sha256(features), stored_columns=list(store_columns),
        features=stored_subset(features, store_columns),
    ) for i, (row, features) in enumerate(zip(batch.rows, batch.features, strict=True))]


def refusal_record(decider: Decider, error: RefusalError, features: Sequence[Mapping[str, Any]],
                   identity: Identity, request_id: str | None, latency_ms: float) -> RefusalRecord:
    return RefusalRecord(
        id=new_id(), created_at=now_iso(), request_id=request_id, dataset=identity.dataset,
        ensemble_version=identity.ensemble_version, config_hash=identity.config_hash,
        manifest_sha256=identity.manifest_sha256, code_version=__version__,
        reason=error.reason, batch_size=len(features), refused_rows=error.rows, min_members=decider.min_members,
        members=member_documents(error.members), input_sha256=[input_sha256(f) for f in features],
        latency_ms=latency_ms,
    )


def review_items(records: Sequence[DecisionRecord], features: Sequence[Mapping[str, Any]],
                 segment_column: str | None) -> list[ReviewItemRecord]:
    """The queue item of every record routed to review; `segment_column`'s value names its segment."""
    return [ReviewItemRecord(
        id=new_id(), created_at=record.created_at, decision_id=record.id, request_id=record.request_id,
        dataset=record.dataset, ensemble_version=record.ensemble_version, reasons=list(record.review_reasons),
        segment=_segment(row, segment_column), probability=record.probability, decision=record.decision,
        agreement=record.agreement, degraded=record.degraded, members=record.members, features=record.features,
    ) for record, row in zip(records, features, strict=True) if record.needs_review]


def _segment(features: Mapping[str, Any], column: str | None) -> str | None:
    if column is None:
        return None
    value = features.get(column)
    return None if value is None or value != value else str(value)  # NaN: no segment


def decision_document(record: DecisionRecord, row: RowDecision) -> DecisionDocument:
    return DecisionDocument(
        decision_id=record.id, probability=row.probability, decision=row.decision, agreement=row.agreement,
        needs_review=row.needs_review, review_reasons=list(row.review_reasons), members=record.members,
        ensemble_version=record.ensemble_version, config_hash=record.config_hash, degraded=row.degraded,
        excluded_members=dict(row.excluded), fallback=row.fallback,
    )
