"""The release path of ensemble versions: gates recorded, human decisions recorded, promotion
through the stages, and the serving bundle exported on promotion to production.

Every operation takes the dataset's release lock, checks everything it needs before it writes
anything, and writes registry changes inside a registry transaction whose last step is the
append to the audit log: on any failure the registry is restored and nothing is appended.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from pydantic import ValidationError

from ensemble_platform import __version__
from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.decisions.shadow import read_evidence, shadow_gate
from ensemble_platform.ensemble.config import ConfigStore, EnsembleConfig
from ensemble_platform.ensemble.runtime import EnsembleRuntime
from ensemble_platform.errors import PlatformError
from ensemble_platform.files import write_json
from ensemble_platform.governance.approvals import (
    CHAIN_FIELDS,
    ApprovalRecord,
    Approvals,
    Decision,
    ReleaseRefused,
    check_approvable,
    utc_now,
)
from ensemble_platform.governance.audit_log import release_lock
from ensemble_platform.governance.gate_text import gates_status
from ensemble_platform.governance.gates import GateReport
from ensemble_platform.governance.intents import Intents, PromotionIntent, crash_point
from ensemble_platform.governance.publishing import publish_model_card
from ensemble_platform.governance.registry import (
    Registry,
    ensemble_model_name,
    runtime_requirements,
)
from ensemble_platform.governance.stages import mark_candidate, plan_promotion
from ensemble_platform.integrity import KeyedLog
from ensemble_platform.serving.bundle import (
    BundleContents,
    BundleError,
    load_bundle,
    sha256_file,
    verify_bundle,
    write_archive,
    write_bundle,
)
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform.serving.pyfunc import DATA_PATH
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import APPROVAL_TAG, BUNDLE_TAGS, CONFIG_HASH_TAG, GATES_TAG, SEMVER_TAG

GATES_FILE = "gates.json"
PROMOTIONS_FILE = "promotions.jsonl"
MIN_HASH_PREFIX = 12
_log = logging.getLogger(__name__)


@dataclass
class VersionState:
    """One ensemble version as the release path sees it."""

    config: EnsembleConfig  # the config file as it is now
    registered: ModelVersion
    gates: GateReport | None
    validated_hash: str | None  # config hash validation.json was written for

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def version(self) -> str:
        return self.config.version


@dataclass
class PromotionResult:
    record: dict | None  # None when nothing changed
    stage: str
    bundle: dict = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.record is not None


class Release:
    def __init__(self, paths: PlatformPaths, registry: Registry | None = None):
        self.paths = paths
        self.registry = registry or Registry(paths)
        self.recovered: list[str] = []  # interrupted promotions this object finished or undid

    @contextlib.contextmanager
    def _locked(self, dataset: str) -> Iterator[None]:
        """The dataset's release lock, with any promotion a crash interrupted finished or undone first."""
        with release_lock(self.paths.audit_dir(dataset)):
            outcome = self.recover(dataset)
            if outcome:
                self.recovered.append(outcome)
                _log.warning("%s: %s", dataset, outcome)
            yield

    # --- reading --------------------------------------------------------------------------

    def promotions_log(self, dataset: str) -> KeyedLog:
        return KeyedLog(self.paths.audit_dir(dataset) / PROMOTIONS_FILE, f"{dataset}/promotions", paths=self.paths)

    def state(self, dataset: str, version: str) -> VersionState:
        store = ConfigStore(self.paths.configs_dir(dataset))
        if version not in store.versions():
            raise PlatformError(f"{dataset} has no ensemble version {version}; versions: {store.versions() or 'none'}")
        config = store.load(version)
        registered = self.registry.ensemble_version(dataset, version)
        reports = self.paths.version_reports_dir(dataset, version)
        gates_path, validation_path = reports / GATES_FILE, reports / "validation.json"
        gates = GateReport.model_validate_json(gates_path.read_text()) if gates_path.is_file() else None
        validated = json.loads(validation_path.read_text())["config_hash"] if validation_path.is_file() else None
        return VersionState(config, registered, gates, validated)

    def check_current(self, state: VersionState, claimed_hash: str | None = None) -> None:
        """Refuse a version whose config is not the one that was validated and gated, or not the
        one the reviewer says they reviewed."""
        label, current = f"{state.dataset} {state.version}", state.config.config_hash
        if state.validated_hash is None or state.gates is None:
            raise ReleaseRefused(f"{label} has not been validated and gated; run ensemble_job and governance_job")
        recorded = {"validation report": state.validated_hash, "release gates": state.gates.config_hash,
                    "registry tag": state.registered.tags.get(CONFIG_HASH_TAG)}
        stale = {where: h for where, h in recorded.items() if h != current}
        if stale:
            raise ReleaseRefused(
                f"the config of {label} changed since validation: the config file now hashes to {current[:12]}, "
                + ", ".join(f"the {where} has {str(h)[:12]}" for where, h in stale.items())
                + "; re-run ensemble_job and governance_job to validate the change as a new version"
            )
        if claimed_hash is not None:
            if len(claimed_hash) < MIN_HASH_PREFIX or not current.startswith(claimed_hash):
                raise ReleaseRefused(
                    f"--config-hash {claimed_hash} is not the config of {label} ({current}); the reviewed config "
                    f"is stale or belongs to another version (give at least {MIN_HASH_PREFIX} hex digits)"
                )

    # --- gates and candidates --------------------------------------------------------------

    def record_gates(self, config: EnsembleConfig, gates: GateReport) -> Path:
        """Write the gates of a freshly validated version and make it a candidate (a version
        already in a stage keeps it)."""
        path = write_json(gates.model_dump(mode="json"),
                          self.paths.version_reports_dir(config.dataset, config.version) / GATES_FILE)
        name = ensemble_model_name(config.dataset)
        summary = gates.summary()
        if config.registered_version is None:
            raise PlatformError(f"{config.dataset} {config.version} is not registered; its gates cannot be recorded")
        with self._locked(config.dataset), self.registry.transaction(config.dataset):
            self.registry.apply_stage_state(
                config.dataset, mark_candidate(self.registry.stage_state(config.dataset), config.registered_version))
            self.registry.set_version_tags(name, config.registered_version, {GATES_TAG: summary[:4000]})
        return path

    # --- approval ---------------------------------------------------------------------------

    def approve(
        self, dataset: str, version: str, reviewer: str, decision: Decision, note: str,
        waive: list[str] | tuple[str, ...] = (), config_hash: str | None = None,
    ) -> ApprovalRecord:
        approvals = Approvals(self.paths, dataset)
        with self._locked(dataset):
            state = self.state(dataset, version)
            self.check_current(state, config_hash)
            assert state.gates is not None
            check_approvable(state.gates, decision, list(waive))
            try:
                draft = ApprovalRecord(
                    dataset=dataset, version=version, config_hash=state.config.config_hash,
                    registered_model=state.registered.name, registered_version=str(state.registered.version),
                    decision=decision, reviewer=reviewer, note=note, waived=tuple(dict.fromkeys(waive)),
                    failing_gates=tuple(state.gates.failing), decided_at=utc_now(),
                )
            except ValidationError as exc:
                raise ReleaseRefused("decision not recorded: " + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
            entry = approvals.log.draft(draft.model_dump(mode="json", exclude=set(CHAIN_FIELDS)))
            record = ApprovalRecord(**entry)
            with self.registry.transaction(dataset):
                self.registry.set_version_tags(state.registered.name, str(state.registered.version), {
                    f"{APPROVAL_TAG}.{record.seq:04d}": _tag_json(record),
                    APPROVAL_TAG: record.summary()[:4000],
                })
                approvals.log.append(entry)
            publish_model_card(self.registry, state.config)
        return record

    # --- promotion --------------------------------------------------------------------------

    def promote(self, dataset: str, version: str, to: str, requested_by: str | None = None) -> PromotionResult:
        with self._locked(dataset):
            state = self.state(dataset, version)
            self.check_current(state)
            approval = self._admissible_approval(state, to)
            stages = self.registry.stage_state(dataset)
            members = {m.registered_model: m.version for m in state.config.members}
            planned, kind = plan_promotion(stages, str(state.registered.version), to, members, version)
            if kind == "unchanged":
                return PromotionResult(None, to)
            shadow = self._shadow_evidence(state, stages.aliases.get("production")) \
                if to == "production" and kind == "promotion" else None
            bundle, created = ({}, False) if to != "production" else self._export(state, approval)
            record = {
                "kind": kind, "dataset": dataset, "version": version, "to": to,
                "from": stages.stage_of(str(state.registered.version)),
                "replaced": _semver_of(self.registry, dataset, stages.aliases.get(to)),
                "config_hash": state.config.config_hash,
                "registered_model": state.registered.name, "registered_version": str(state.registered.version),
                "approval_sha256": approval.sha256 if approval else None,
                "bundle": bundle, "requested_by": requested_by or getpass.getuser(), "promoted_at": utc_now(),
                **({"shadow": shadow} if shadow is not None else {}),
            }
            log = self.promotions_log(dataset)
            entry = log.draft(record)
            tags: dict[str, str | None] = {BUNDLE_TAGS[0]: bundle["archive_sha256"],
                                           BUNDLE_TAGS[1]: bundle["manifest_sha256"]} if bundle else {}
            intents = Intents(self.paths, dataset)
            intents.write(PromotionIntent(
                dataset=dataset, version=version, to=to, entry=entry, before=self.registry.snapshot(dataset),
                planned=planned, version_tags=tags, registered_model=state.registered.name,
                registered_version=str(state.registered.version)))
            crash_point("intent_written")
            try:
                with self.registry.transaction(dataset):
                    self.registry.apply_stage_state(dataset, planned)
                    crash_point("aliases_moved")
                    self.registry.set_version_tags(state.registered.name, str(state.registered.version), tags)
                    crash_point("tags_written")
                    log.append(entry)
                    crash_point("logged")
            except BaseException:
                if created:
                    self._remove_bundle(dataset, version)
                intents.clear()  # the transaction restored the registry; nothing was appended
                raise
            intents.clear()
        return PromotionResult(entry, to, bundle)

    def recover(self, dataset: str) -> str | None:
        """Finish or undo a promotion a crash cut short (call under the release lock); returns what
        was done, None when nothing was pending. Every release command calls it first."""
        intents = Intents(self.paths, dataset)
        intent = intents.read()
        if intent is None:
            return None
        log = self.promotions_log(dataset)
        if any(e.get("sha256") == intent.entry.get("sha256") for e in log.verify()):
            self.registry.apply_stage_state(dataset, intent.planned)
            self.registry.set_version_tags(intent.registered_model, intent.registered_version, intent.version_tags)
            outcome = f"an interrupted promotion of {intent.version} to {intent.to} was completed (it was logged)"
        else:
            self.registry.restore(dataset, intent.before)
            log.append({"kind": "recovery", "action": "rolled_back", "dataset": dataset, "version": intent.version,
                        "to": intent.to, "interrupted_promoted_at": intent.entry.get("promoted_at"),
                        "recovered_at": utc_now(), "requested_by": getpass.getuser()})
            outcome = (f"an interrupted promotion of {intent.version} to {intent.to} was rolled back "
                       "(recorded in the promotions log); run the promotion again")
        intents.clear()
        return outcome

    def _admissible_approval(self, state: VersionState, to: str) -> ApprovalRecord | None:
        """The decision in force must allow the move: no rejection; production needs an
        approval of this very config; every failing gate waived by the approval in force."""
        assert state.gates is not None
        label = f"{state.dataset} {state.version}"
        approval = Approvals(self.paths, state.dataset).latest(state.version, state.config.config_hash)
        if approval is not None and approval.decision == "reject":
            raise ReleaseRefused(f"{label} was rejected by {approval.reviewer} at {approval.decided_at}: "
                                 f"{approval.note!r}; it cannot be promoted unless a later decision approves it")
        if to == "production" and approval is None:
            raise ReleaseRefused(
                f"{label} has no approval for config {state.config.config_hash[:12]}; production requires one "
                f"(ensemble-platform approve --dataset {state.dataset} --version {state.version} ...)")
        unwaived = state.gates.unwaived_failures(approval.waived if approval else ())
        if unwaived:
            raise ReleaseRefused(f"{label} fails gate(s) {unwaived} without a recorded waiver; it cannot be "
                                 f"promoted to {to}")
        if approval is not None:
            self._check_mirrored(state, approval)
        return approval

    def _shadow_evidence(self, state: VersionState, production: str | None) -> dict | None:
        """The shadow evidence production needs when the dataset's `operations.shadow` policy requires it
        (None when it does not: the default): the decision log's comparison of this version (its config)
        beside the version now in production. Refused naming what is missing. A first production version
        has nothing to be compared with; a rollback returns to a version production already served."""
        catalog = DatasetCatalog(self.paths)
        if state.dataset not in catalog.entries():
            return None
        policy = catalog.spec(state.dataset).operations.shadow
        if not policy.required:
            return None
        current = _semver_of(self.registry, state.dataset, production)
        if current is None:
            return {"required": True, "production_version": None, "passed": True,
                    "reasons": ["nothing in production to shadow"]}
        evidence = read_evidence(self.paths, state.dataset, current, state.version, state.config.config_hash)
        passed, reasons = shadow_gate(evidence, policy)
        if not passed:
            raise ReleaseRefused(
                f"{state.dataset} {state.version} lacks the shadow evidence production requires "
                f"(operations.shadow: min_days {policy.min_days}, min_decisions {policy.min_decisions}, "
                f"max_flip_rate {policy.max_flip_rate}) beside production {current}: " + "; ".join(reasons))
        assert evidence is not None
        return {"required": True, "production_version": current, "passed": True, "reasons": [],
                "shadowed": evidence.shadowed, "scored": evidence.scored, "days": evidence.days,
                "flip_rate": evidence.flip_rate, "first_at": evidence.first_at, "last_at": evidence.last_at}

    def _check_mirrored(self, state: VersionState, approval: ApprovalRecord) -> None:
        """The decision in force must stand, identical, in the registry's numbered approval tags too:
        a line the log holds but the registry never saw is not a decision anyone recorded."""
        tag = f"{APPROVAL_TAG}.{approval.seq or 0:04d}"
        if state.registered.tags.get(tag) != _tag_json(approval):
            raise ReleaseRefused(
                f"the approval in force for {state.dataset} {state.version} (approvals.jsonl entry {approval.seq}, "
                f"by {approval.reviewer}) is not mirrored in the registry tag {tag}: the log and the registry "
                "disagree; nothing was promoted (audit the approvals log)")

    # --- the serving bundle ---------------------------------------------------------------

    def export(self, dataset: str, version: str) -> dict:
        """The serving bundle of an approved version (reused when intact, rebuilt otherwise):
        for operators who need it again, e.g. after losing the bundles folder."""
        with self._locked(dataset):
            state = self.state(dataset, version)
            self.check_current(state)
            bundle, _ = self._export(state, self._admissible_approval(state, "production"))
        return bundle

    def serving_runtime(self, dataset: str) -> tuple[EnsembleRuntime, str]:
        """What decides for this dataset now, and a label saying which version that is: the
        production bundle (verified against the manifest hash the registry recorded), or, before
        anything is in production, the newest validated version from the registry."""
        bundle = self.production_bundle(dataset)
        if bundle is not None:
            directory, manifest_sha256, semver = bundle
            return load_bundle(directory, manifest_sha256), f"production {semver} (serving bundle)"
        latest = ConfigStore(self.paths.configs_dir(dataset)).latest()
        if latest is None or latest.registered_version is None:
            raise PlatformError(f"{dataset} has no validated ensemble version to score with; run its graph first")
        return self._registered_runtime(dataset, latest.registered_version), \
            f"{latest.version} (newest validated; nothing in production)"

    def production_bundle(self, dataset: str) -> tuple[Path, str, str] | None:
        """(bundle directory, manifest SHA-256 the registry recorded, semver) of the production
        version, None when nothing is in production. A production version without its recorded
        manifest hash is refused: its bundle could not be checked against anything."""
        with self._locked(dataset):
            name = ensemble_model_name(dataset)
            production = self.registry.aliases(name).get("production")
            if production is None:
                return None
            entry = self.registry.client.get_model_version(name, production)
            semver, manifest_sha256 = entry.tags.get(SEMVER_TAG), entry.tags.get(BUNDLE_TAGS[1])
            if not semver or not manifest_sha256:
                raise ReleaseRefused(
                    f"{dataset} production (registered version {production}) has no recorded manifest hash "
                    f"({BUNDLE_TAGS[1]}): its bundle cannot be verified; promote it again or export it")
            return self.bundle_paths(dataset, semver)[0], manifest_sha256, semver

    def _registered_runtime(self, dataset: str, registered_version: str) -> EnsembleRuntime:
        """The runtime registered with a version of `<dataset>.ensemble` (our own registry: trusted)."""
        with tempfile.TemporaryDirectory() as scratch:
            model = self.registry.download_model(ensemble_model_name(dataset), registered_version, Path(scratch))
            return EnsembleRuntime.load(model / DATA_PATH)

    def bundle_paths(self, dataset: str, version: str) -> tuple[Path, Path]:
        root = self.paths.bundles_dir(dataset)
        return root / version, root / f"{version}.tar.gz"

    def _export(self, state: VersionState, approval: ApprovalRecord | None) -> tuple[dict, bool]:
        """The version's bundle and archive: reused when an intact one exists for the approval in
        force, otherwise built (and parity-checked) anew. Returns (bundle facts, newly built)."""
        assert approval is not None
        directory, archive = self.bundle_paths(state.dataset, state.version)
        try:
            manifest = verify_bundle(directory)
            reusable = (manifest["approval"].get("sha256") == approval.sha256 and archive.is_file()
                        and archive.with_name(archive.name + ".sha256").read_text().split()[0] == sha256_file(archive))
        except (BundleError, FileNotFoundError):
            reusable = False
        created = not reusable
        if created:
            self._build_bundle(state, approval, directory, archive)
        return {"path": str(directory), "archive": str(archive), "archive_sha256": sha256_file(archive),
                "manifest_sha256": sha256_file(directory / "manifest.json")}, created

    def _build_bundle(self, state: VersionState, approval: ApprovalRecord, directory: Path, archive: Path) -> None:
        config = state.config
        reports = self.paths.version_reports_dir(config.dataset, config.version)
        with tempfile.TemporaryDirectory() as scratch:
            runtime = self._registered_runtime(config.dataset, str(state.registered.version))
            member_files = {}
            for member in config.members:
                local = self.registry.download_member_artefact(member.registered_model, member.version,
                                                               Path(scratch) / member.name)
                if local is not None:  # otherwise the runtime stores the member it holds
                    member_files[member.name] = local
            contents = BundleContents(
                config=config, runtime=runtime, member_files=member_files,
                approval=approval.model_dump(mode="json"),
                model_card={"html": reports / "model_card.html", "md": reports / "model_card.md"},
                created_at=approval.decided_at,
                requirements=[*runtime_requirements(), f"ensemble_platform=={__version__}"],
            )
            write_bundle(contents, directory, ParitySet.read(self.paths.parity_dir(config.dataset, config.version)))
        try:
            write_archive(directory, archive, approval.decided_at)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def _remove_bundle(self, dataset: str, version: str) -> None:
        directory, archive = self.bundle_paths(dataset, version)
        shutil.rmtree(directory, ignore_errors=True)
        for path in (archive, archive.with_name(archive.name + ".sha256")):
            path.unlink(missing_ok=True)

    # --- status -----------------------------------------------------------------------------

    def status(self, dataset: str) -> dict:
        """Every version with its stage, gates and decision in force; aliases; recent promotions."""
        with self._locked(dataset):
            return self._status(dataset)

    def cross_check_approvals(self, dataset: str) -> int:
        """Every decision the registry's numbered tags record must be the same entry of the
        approvals log: a log shortened or rewritten together with its checkpoint (a lost checkpoint
        re-anchored after the fact) is still caught. Returns how many tags were checked."""
        entries = {e["seq"]: e for e in Approvals(self.paths, dataset).log.verify()}
        checked = 0
        for version in self.registry.model_versions(ensemble_model_name(dataset)):
            for key, value in version.tags.items():
                if not key.startswith(APPROVAL_TAG + "."):
                    continue
                mirrored, seq = json.loads(value), int(key.rsplit(".", 1)[1])
                entry = entries.get(seq)
                if entry is None or entry.get("sha256") != mirrored.get("sha256"):
                    raise ReleaseRefused(
                        f"the registry records approval {seq} of {dataset} ({mirrored.get('decision')} by "
                        f"{mirrored.get('reviewer')}) but approvals.jsonl "
                        + ("has no such entry (shortened)" if entry is None else "holds a different entry (rewritten)"))
                checked += 1
        return checked

    def _status(self, dataset: str) -> dict:
        store = ConfigStore(self.paths.configs_dir(dataset))
        stages = self.registry.stage_state(dataset)
        approvals = Approvals(self.paths, dataset)
        self.cross_check_approvals(dataset)
        rows = []
        for version in store.versions():
            config = store.load(version)
            reports = self.paths.version_reports_dir(dataset, version)
            gates_path = reports / GATES_FILE
            gates = GateReport.model_validate_json(gates_path.read_text()) if gates_path.is_file() else None
            decision = approvals.latest(version, config.config_hash)
            rows.append({
                "version": version, "registered_version": config.registered_version, "strategy": config.strategy,
                "config_hash": config.config_hash, "stage": stages.stage_of(str(config.registered_version)) or "-",
                "gates": None if gates is None else gates_status(
                    gates, decision.waived if decision and decision.decision == "approve" else ()),
                "decision": decision.summary() if decision else "pending",
            })
        by_version = {row["registered_version"]: row["version"] for row in rows}
        return {
            "dataset": dataset,
            "versions": rows,
            "aliases": {alias: by_version.get(v, f"registered {v}") for alias, v in sorted(stages.aliases.items())},
            "promotions": self.promotions_log(dataset).verify(),
            "approvals": [r.model_dump(mode="json") for r in approvals.records()],
        }


def _tag_json(record: ApprovalRecord) -> str:
    body = record.model_dump(mode="json", include={"decision", "reviewer", "decided_at", "config_hash", "waived",
                                                   "note", "seq", "sha256"})
    body["note"] = body["note"][:500]
    return json.dumps(body, sort_keys=True)


def _semver_of(registry: Registry, dataset: str, registered_version: str | None) -> str | None:
    if registered_version is None:
        return None
    version = registry.client.get_model_version(ensemble_model_name(dataset), registered_version)
    return version.tags.get(SEMVER_TAG)

