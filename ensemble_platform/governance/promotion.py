"""Promotion of a version through the stages, and recovery of a promotion a crash cut short
(both under the release lock, see `release`).

A promotion is: intent written -> aliases and stage tags moved -> bundle hash tags set ->
promotions log appended -> intent removed, the registry writes inside a transaction whose last
step is the append; the named crash points let tests kill the process between the steps.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.decisions.shadow import read_evidence, shadow_gate
from ensemble_platform.governance.approvals import CHAIN_FIELDS, ReleaseRefused, utc_now
from ensemble_platform.governance.approving import admissible_approval
from ensemble_platform.governance.intents import IntentError, Intents, PromotionIntent, crash_point
from ensemble_platform.governance.registry import Registry, RegistrySnapshot, ensemble_model_name
from ensemble_platform.governance.release_bundle import BundleFacts, export_bundle, remove_bundle
from ensemble_platform.governance.stages import plan_promotion
from ensemble_platform.governance.version_record import VersionRecord, check_current
from ensemble_platform.integrity import GENESIS, KeyedLog
from ensemble_platform.integrity.chain import MAC, PREV, SEQ, SHA
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import SEMVER_TAG

PROMOTIONS_FILE = "promotions.jsonl"


class ShadowRecord(BaseModel):
    """The shadow evidence a production promotion was admitted on (the evidence fields are absent
    when there was nothing in production to shadow)."""

    model_config = ConfigDict(frozen=True)

    required: bool
    production_version: str | None
    passed: bool
    reasons: list[str]
    shadowed: int | None = None
    scored: int | None = None
    days: float | None = None
    flip_rate: float | None = None
    first_at: str | None = None
    last_at: str | None = None

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class PromotionRecord(BaseModel):
    """One promotions-log record (a promotion or a rollback to an earlier version); the chain
    fields are set once it is drafted or appended."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    kind: str  # promotion | rollback
    dataset: str
    version: str
    to: str
    from_: str | None = Field(validation_alias="from", serialization_alias="from")
    replaced: str | None
    config_hash: str
    registered_model: str
    registered_version: str
    approval_sha256: str | None
    bundle: BundleFacts | None  # written as {} when the promotion exported none (not production)
    requested_by: str
    promoted_at: str
    shadow: ShadowRecord | None = None  # absent when the dataset's policy does not require shadow evidence
    seq: int | None = None
    prev_sha256: str | None = None
    sha256: str | None = None
    mac: str | None = None

    @field_serializer("bundle")
    def _bundle(self, bundle: BundleFacts | None) -> dict[str, str]:
        return bundle.model_dump() if bundle else {}

    @field_serializer("shadow")
    def _shadow(self, shadow: ShadowRecord | None) -> dict[str, Any] | None:
        return shadow.document() if shadow else None

    def document(self, chain: bool = False) -> dict[str, Any]:
        """The record as logged (with the chain fields when `chain`)."""
        exclude = ({"shadow"} if self.shadow is None else set()) | (set() if chain else set(CHAIN_FIELDS))
        return self.model_dump(mode="json", by_alias=True, exclude=exclude)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> PromotionRecord:
        return cls.model_validate({**entry, "bundle": entry.get("bundle") or None})


class RecoveryRecord(BaseModel):
    """The promotions-log record of an interrupted promotion that recovery rolled back."""

    model_config = ConfigDict(frozen=True)

    kind: str = "recovery"
    action: str = "rolled_back"
    dataset: str
    version: str
    to: str
    interrupted_promoted_at: str | None
    recovered_at: str
    requested_by: str

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class PromotionResult:
    record: PromotionRecord | None  # the promotions-log entry; None when nothing changed
    stage: str
    bundle: BundleFacts | None = None

    @property
    def changed(self) -> bool:
        return self.record is not None


def promotions_log(paths: PlatformPaths, dataset: str) -> KeyedLog:
    return KeyedLog(paths.audit_dir(dataset) / PROMOTIONS_FILE, f"{dataset}/promotions", paths=paths)


def signed_manifests(paths: PlatformPaths, dataset: str, version: str) -> frozenset[str]:
    """Bundle manifest hashes the verified promotions log recorded for `version`: the bundles an
    export may reuse."""
    return frozenset(e["bundle"]["manifest_sha256"] for e in promotions_log(paths, dataset).verify()
                     if e.get("version") == version and (e.get("bundle") or {}).get("manifest_sha256"))


def production_moves(paths: PlatformPaths, dataset: str) -> list[dict[str, Any]]:
    """The verified promotions log's moves to production, oldest first. Promotions and rollbacks move
    production; a recovery record (an interrupted move undone) does not."""
    return [e for e in promotions_log(paths, dataset).verify()
            if e.get("to") == "production" and e.get("kind") in ("promotion", "rollback")]


def signed_production_problem(paths: PlatformPaths, dataset: str, version: str, manifest_sha256: str) -> str | None:
    """Why the registry's production record (version, bundle manifest hash) is not the one the verified
    promotions log moved to production last, or None when it is. The registry's alias and tags live in
    a store anyone who can write the home can edit; the log is keyed."""
    moves = production_moves(paths, dataset)
    if not moves:
        return "the signed promotions log records no promotion to production"
    last = moves[-1]
    signed = (last.get("bundle") or {}).get("manifest_sha256")
    if last.get("version") != version or signed != manifest_sha256:
        return (f"the signed promotions log's last production entry (seq {last.get('seq')}) is version "
                f"{last.get('version')} with bundle manifest {str(signed)[:12]}, not version {version} with "
                f"{manifest_sha256[:12]} as the registry says")
    return None


def promote(
    paths: PlatformPaths, registry: Registry, record: VersionRecord, to: str, requested_by: str | None = None,
) -> PromotionResult:
    """Move the version to `to` (call under the release lock, after recovery)."""
    dataset, version = record.dataset, record.version
    check_current(record)
    approval = admissible_approval(paths, record, to)
    registered = record.entry
    stages = registry.stage_state(dataset)
    members = {m.registered_model: m.version for m in record.config.members}
    planned, kind = plan_promotion(stages, str(registered.version), to, members, version)
    if kind == "unchanged":
        return PromotionResult(None, to)
    shadow = _shadow_evidence(paths, registry, record, stages.aliases.get("production")) \
        if to == "production" and kind == "promotion" else None
    bundle, created = (None, False) if to != "production" else export_bundle(
        paths, registry, record, approval, signed_manifests(paths, dataset, version))
    draft = PromotionRecord(
        kind=kind, dataset=dataset, version=version, to=to,
        from_=stages.stage_of(str(registered.version)),
        replaced=semver_of(registry, dataset, stages.aliases.get(to)),
        config_hash=record.config.config_hash,
        registered_model=registered.name, registered_version=str(registered.version),
        approval_sha256=approval.sha256 if approval else None,
        bundle=bundle, requested_by=requested_by or getpass.getuser(), promoted_at=utc_now(), shadow=shadow,
    )
    log = promotions_log(paths, dataset)
    entry = log.draft(draft.document())
    tags = bundle.version_tags() if bundle else {}
    intents = Intents(paths, dataset)
    before = registry.snapshot(dataset)
    intents.write(PromotionIntent(
        # Without its MAC: a signed entry left in the home could be appended by anyone who reads it
        # (after a promotion that failed, say); recovery finds the entry by its hash.
        dataset=dataset, version=version, to=to, entry=unsigned(entry), before=before,
        planned=planned, version_tags=tags, registered_model=registered.name,
        registered_version=str(registered.version)))
    crash_point("intent_written")
    try:
        with registry.transaction(dataset):
            registry.apply_stage_state(dataset, planned)
            crash_point("aliases_moved")
            registry.set_version_tags(registered.name, str(registered.version), tags)
            crash_point("tags_written")
            log.append(entry)
            crash_point("logged")
    except BaseException:
        if _undone(log, entry, registry, dataset, before):
            if created:
                remove_bundle(paths, dataset, version)
            intents.clear()
        raise
    intents.clear()
    return PromotionResult(PromotionRecord.from_entry(entry), to, bundle)


def recover(paths: PlatformPaths, registry: Registry, dataset: str) -> str | None:
    """Finish or undo a promotion a crash cut short (call under the release lock); returns what
    was done, None when nothing was pending. Every release command calls it first."""
    intents = Intents(paths, dataset)
    intent = intents.read()
    if intent is None:
        return None
    log = promotions_log(paths, dataset)
    entries = log.verify()
    if _rollback_logged(intent, entries):  # a crash after recovery's own append, before it cleared the intent
        registry.restore(dataset, intent.before)
        intents.clear()
        return (f"an interrupted promotion of {intent.version} to {intent.to} was rolled back "
                "(already recorded in the promotions log); run the promotion again")
    _refuse_stale(intents, intent, entries)
    if entries and entries[-1].get(SHA) == intent.entry.get(SHA):
        registry.apply_stage_state(dataset, intent.planned)
        registry.set_version_tags(intent.registered_model, intent.registered_version, intent.version_tags)
        outcome = f"an interrupted promotion of {intent.version} to {intent.to} was completed (it was logged)"
    else:
        registry.restore(dataset, intent.before)
        log.append(RecoveryRecord(dataset=dataset, version=intent.version, to=intent.to,
                                  interrupted_promoted_at=intent.entry.get("promoted_at"),
                                  recovered_at=utc_now(), requested_by=getpass.getuser()).document())
        outcome = (f"an interrupted promotion of {intent.version} to {intent.to} was rolled back "
                   "(recorded in the promotions log); run the promotion again")
    intents.clear()
    return outcome


def _undone(log: KeyedLog, entry: dict[str, Any], registry: Registry, dataset: str, before: RegistrySnapshot) -> bool:
    """After a promotion failed: the entry is not in the log and the registry reads as it did before,
    so nothing is left to recover. Seen, not assumed from the exception: the transaction's restore can
    fail too (the registry unreachable), and an append can fail after its line and checkpoint landed.
    Anything else keeps the intent, and the next release command's recovery completes or undoes the
    promotion and records which."""
    try:
        entries = log.verify()
        logged = bool(entries) and entries[-1].get(SHA) == entry.get(SHA)
        return not logged and registry.snapshot(dataset) == before
    except Exception:  # cannot tell: leave it to recovery
        return False


def unsigned(entry: dict[str, Any]) -> dict[str, Any]:
    """A drafted log entry without its MAC: it names the entry (its hash) but cannot be appended."""
    return {field: value for field, value in entry.items() if field != MAC}


def _rollback_logged(intent: PromotionIntent, entries: list[dict[str, Any]]) -> bool:
    """The log's head is the recovery record of this intent's promotion (it follows the head the
    intent's entry followed, and names that promotion)."""
    head = entries[-1] if entries else None
    return (head is not None and head.get("kind") == "recovery" and head.get(PREV) == intent.entry.get(PREV)
            and head.get("version") == intent.version and head.get("to") == intent.to
            and head.get("interrupted_promoted_at") == intent.entry.get("promoted_at"))


def _refuse_stale(intents: Intents, intent: PromotionIntent, entries: list[dict[str, Any]]) -> None:
    """An intent is written just before its entry is appended, and every release command recovers
    first: its entry is the log's head (the crash came after the append) or follows it (before).
    Anything else is an old intent put back, which would restore an old registry state and log a
    rollback that never happened."""
    head = entries[-1] if entries else None
    if head is not None and head.get(SHA) == intent.entry.get(SHA):
        return
    if intent.entry.get(PREV) == (head[SHA] if head else GENESIS):
        return
    raise IntentError(f"{intents.path} is an old promotion intent: its entry (seq {intent.entry.get(SEQ)}) neither "
                      f"is nor follows the promotions log's head (seq {head[SEQ] if head else 0}); refusing to roll a "
                      "promotion forward or back from it (an operator must inspect and remove it)")


def _shadow_evidence(
    paths: PlatformPaths, registry: Registry, record: VersionRecord, production: str | None,
) -> ShadowRecord | None:
    """The shadow evidence production needs when the dataset's `operations.shadow` policy requires it
    (None when it does not: the default): the decision log's comparison of this version (its config)
    beside the version now in production. Refused naming what is missing. A first production version
    has nothing to be compared with; a rollback returns to a version production already served."""
    catalog = DatasetCatalog(paths)
    if record.dataset not in catalog.entries():  # without its spec, whether shadow evidence is required is unknown
        raise ReleaseRefused(f"{record.label} cannot go to production: the dataset is not in the catalogue "
                             f"{catalog.directory} (or its entry does not verify), so its operations.shadow policy "
                             "cannot be read; run its graph (demo --dataset SPEC) to register it")
    policy = catalog.spec(record.dataset).operations.shadow
    if not policy.required:
        return None
    current = semver_of(registry, record.dataset, production)
    if current is None:
        return ShadowRecord(required=True, production_version=None, passed=True,
                            reasons=["nothing in production to shadow"])
    evidence = read_evidence(paths, record.dataset, current, record.version, record.config.config_hash)
    passed, reasons = shadow_gate(evidence, policy)
    if not passed:
        raise ReleaseRefused(
            f"{record.label} lacks the shadow evidence production requires "
            f"(operations.shadow: min_days {policy.min_days}, min_decisions {policy.min_decisions}, "
            f"max_flip_rate {policy.max_flip_rate}) beside production {current}: " + "; ".join(reasons))
    assert evidence is not None
    return ShadowRecord(required=True, production_version=current, passed=True, reasons=[],
                        shadowed=evidence.shadowed, scored=evidence.scored, days=evidence.days,
                        flip_rate=evidence.flip_rate, first_at=evidence.first_at, last_at=evidence.last_at)


def semver_of(registry: Registry, dataset: str, registered_version: str | None) -> str | None:
    if registered_version is None:
        return None
    version = registry.client.get_model_version(ensemble_model_name(dataset), registered_version)
    return version.tags.get(SEMVER_TAG)
