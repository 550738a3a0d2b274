"""Recording a reviewer's decision on a version (under the release lock, see `release`): checked
against the version record and its gates, appended to the approvals log inside a registry
transaction that mirrors it as numbered version tags, and the model card regenerated."""

from __future__ import annotations

import json

from pydantic import ValidationError

from ensemble_platform.governance.approvals import (
    CHAIN_FIELDS,
    ApprovalRecord,
    Approvals,
    Decision,
    ReleaseRefused,
    check_approvable,
    utc_now,
)
from ensemble_platform.governance.model_card import load_card_inputs
from ensemble_platform.governance.publishing import publish_model_card
from ensemble_platform.governance.registry import Registry
from ensemble_platform.governance.version_record import VersionRecord, check_current
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import APPROVAL_TAG


def record_decision(
    paths: PlatformPaths, registry: Registry, record: VersionRecord, reviewer: str, decision: Decision, note: str,
    waive: list[str] | tuple[str, ...] = (), config_hash: str | None = None,
) -> ApprovalRecord:
    """Check and record one decision (call under the release lock)."""
    approvals = Approvals(paths, record.dataset)
    check_current(record, config_hash)
    assert record.gates is not None
    check_approvable(record.gates, decision, list(waive))
    _check_card_inputs(paths, record)
    registered = record.entry
    try:
        draft = ApprovalRecord(
            dataset=record.dataset, version=record.version, config_hash=record.config.config_hash,
            registered_model=registered.name, registered_version=str(registered.version),
            decision=decision, reviewer=reviewer, note=note, waived=tuple(dict.fromkeys(waive)),
            failing_gates=tuple(record.gates.failing), decided_at=utc_now(),
        )
    except ValidationError as exc:
        raise ReleaseRefused("decision not recorded: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    entry = approvals.log.draft(draft.model_dump(mode="json", exclude=set(CHAIN_FIELDS)))
    approval = ApprovalRecord(**entry)
    with registry.transaction(record.dataset):
        registry.set_version_tags(registered.name, str(registered.version), {
            approval_tag(approval): tag_json(approval),
            APPROVAL_TAG: approval.summary()[:4000],
        })
        approvals.log.append(entry)
    publish_model_card(registry, record.config)
    return approval


def _check_card_inputs(paths: PlatformPaths, record: VersionRecord) -> None:
    """The model card, regenerated after the decision is recorded, can be built: checked first, so a version
    whose governance run was cut short gets no decision (one was recorded, then the card failed)."""
    try:
        load_card_inputs(paths, record.config, [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReleaseRefused(f"decision not recorded: the governance documents of {record.label} are incomplete "
                             f"({str(exc)[:300]}); rerun its ensemble job (a run cut short leaves them so)") from exc


def approval_tag(approval: ApprovalRecord) -> str:
    """The numbered registry tag that mirrors one approvals-log entry."""
    return f"{APPROVAL_TAG}.{approval.seq or 0:04d}"


def tag_json(record: ApprovalRecord) -> str:
    body = record.model_dump(mode="json", include={"decision", "reviewer", "decided_at", "config_hash", "waived",
                                                   "note", "seq", "sha256"})
    body["note"] = body["note"][:500]
    return json.dumps(body, sort_keys=True)


def check_mirrored(record: VersionRecord, approval: ApprovalRecord) -> None:
    """The decision in force must stand, identical, in the registry's numbered approval tags too:
    a line the log holds but the registry never saw is not a decision anyone recorded."""
    tag = approval_tag(approval)
    if record.entry.tags.get(tag) != tag_json(approval):
        raise ReleaseRefused(
            f"the approval in force for {record.label} (approvals.jsonl entry {approval.seq}, "
            f"by {approval.reviewer}) is not mirrored in the registry tag {tag}: the log and the registry "
            "disagree; nothing was promoted (audit the approvals log)")


def admissible_approval(paths: PlatformPaths, record: VersionRecord, to: str) -> ApprovalRecord | None:
    """The decision in force must allow the move: no rejection; production needs an
    approval of this very config; every failing gate waived by the approval in force."""
    assert record.gates is not None
    label = record.label
    approval = Approvals(paths, record.dataset).latest(record.version, record.config.config_hash)
    if approval is not None and approval.decision == "reject":
        raise ReleaseRefused(f"{label} was rejected by {approval.reviewer} at {approval.decided_at}: "
                             f"{approval.note!r}; it cannot be promoted unless a later decision approves it")
    if to == "production" and approval is None:
        raise ReleaseRefused(
            f"{label} has no approval for config {record.config.config_hash[:12]}; production requires one "
            f"(ensemble-platform approve --dataset {record.dataset} --version {record.version} ...)")
    unwaived = record.gates.unwaived_failures(approval.waived if approval else ())
    if unwaived:
        raise ReleaseRefused(f"{label} fails gate(s) {unwaived} without a recorded waiver; it cannot be "
                             f"promoted to {to}")
    if approval is not None:
        check_mirrored(record, approval)
    return approval
