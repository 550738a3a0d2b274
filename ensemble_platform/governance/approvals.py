"""Human approval of an ensemble version: the record, where it is kept, and the rules that make
a decision admissible.

An approval names the exact config hash it approves and the gates it waives. Records are kept in
an append-only, keyed (HMAC) and checkpointed log in the platform home
(`audit/<dataset>/approvals.jsonl`, see `integrity`) and mirrored as numbered MLflow version tags;
promotion requires a decision to be present, identical, in both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.gates import GateReport
from ensemble_platform.integrity import KeyedLog
from ensemble_platform.settings import PlatformPaths

Decision = Literal["approve", "reject"]
APPROVALS_FILE = "approvals.jsonl"
# Set on an entry by the keyed log; a draft leaves them out.
CHAIN_FIELDS = frozenset({"seq", "prev_sha256", "sha256", "mac"})
# MLflow tag values are limited in length; a note is a justification, not a document.
MAX_NOTE = 2000


class ReleaseRefused(PlatformError):
    """An approval or promotion that the release rules do not admit; the message says why."""


class ApprovalRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["approval"] = "approval"
    dataset: str
    version: str
    config_hash: str
    registered_model: str
    registered_version: str
    decision: Decision
    reviewer: str = Field(min_length=1)
    note: str = Field(min_length=1, max_length=MAX_NOTE)
    waived: tuple[str, ...] = ()
    failing_gates: tuple[str, ...] = ()
    decided_at: str
    # Set by the audit log when the record is appended.
    seq: int | None = None
    prev_sha256: str | None = None
    sha256: str | None = None
    mac: str | None = None

    @field_validator("reviewer", "note")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    def summary(self) -> str:
        waived = f", {len(self.waived)} gate(s) waived" if self.waived else ""
        return f"{self.decision} by {self.reviewer} at {self.decided_at}{waived}"


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class Approvals:
    """The approvals log of one dataset."""

    def __init__(self, paths: PlatformPaths, dataset: str):
        self.log = KeyedLog(paths.audit_dir(dataset) / APPROVALS_FILE, f"{dataset}/approvals", paths=paths)

    def records(self, version: str | None = None) -> list[ApprovalRecord]:
        records = [ApprovalRecord(**entry) for entry in self.log.verify()]
        return [r for r in records if version is None or r.version == version]

    def latest(self, version: str, config_hash: str) -> ApprovalRecord | None:
        """The decision in force for this version's current config (later decisions supersede)."""
        matching = [r for r in self.records(version) if r.config_hash == config_hash]
        return matching[-1] if matching else None


def check_waivers(gates: GateReport, waive: list[str]) -> None:
    """Every waiver must name a failing, waivable gate: a waiver is a reasoned exception, never a
    blanket one, and a typo must not read as an exception granted."""
    for name in waive:
        if name not in gates.names:
            raise ReleaseRefused(f"--waive {name!r}: no such gate; gates are {gates.names}")
        gate = gates.gate(name)
        if gate.passed:
            raise ReleaseRefused(f"--waive {name!r}: the gate passed, there is nothing to waive")
        if not gate.waivable:
            raise ReleaseRefused(f"--waive {name!r}: this gate cannot be waived ({gate.description}); "
                                 "fix the cause and build a new version")


def check_approvable(gates: GateReport, decision: Decision, waive: list[str]) -> None:
    """An approval must waive every failing gate explicitly; a rejection is always admissible."""
    check_waivers(gates, waive)
    if decision == "approve":
        unwaived = gates.unwaived_failures(waive)
        if unwaived:
            details = "; ".join(f"{n}: {gates.gate(n).measured()}" for n in unwaived)
            raise ReleaseRefused(
                f"cannot approve {gates.dataset} {gates.ensemble_version}: gate(s) {unwaived} fail ({details}); "
                "fix them in a new version, or waive each with --waive NAME and a note that says why"
            )
