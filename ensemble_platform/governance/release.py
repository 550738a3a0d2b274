"""The release path of ensemble versions: gates recorded, human decisions recorded, promotion
through the stages, and the serving bundle exported on promotion to production.

Every operation takes the dataset's release lock, first finishes or undoes any promotion a crash
interrupted, checks everything it needs before it writes anything, and writes registry changes
inside a registry transaction whose last step is the append to the audit log: on any failure the
registry is restored and nothing is appended.

`Release` is the facade the CLI, the service and the Dagster jobs call; the work is split by
reason to change: the version record (`version_record`), approval (`approving`), promotion and
crash recovery (`promotion`), the serving bundle (`release_bundle`) and status (`release_status`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.ensemble.runtime import EnsembleRuntime
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance import approving, promotion, release_bundle, release_status
from ensemble_platform.governance.approvals import ApprovalRecord, Decision, ReleaseRefused
from ensemble_platform.governance.audit_log import release_lock
from ensemble_platform.governance.gates import GateReport
from ensemble_platform.governance.promotion import PROMOTIONS_FILE, PromotionRecord, PromotionResult
from ensemble_platform.governance.registry import Registry, ensemble_model_name
from ensemble_platform.governance.release_bundle import BundleFacts
from ensemble_platform.governance.release_status import ReleaseStatus
from ensemble_platform.governance.stages import mark_candidate
from ensemble_platform.governance.version_record import (
    GATES_FILE,
    MIN_HASH_PREFIX,
    VersionRecord,
    check_current,
    read_version,
    write_gates,
)
from ensemble_platform.integrity import KeyedLog
from ensemble_platform.integrity.keys import load_signing_key
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import BUNDLE_TAGS, GATES_TAG

__all__ = [
    "BUNDLE_TAGS",
    "GATES_FILE",
    "MIN_HASH_PREFIX",
    "PROMOTIONS_FILE",
    "BundleFacts",
    "PromotionRecord",
    "PromotionResult",
    "Release",
    "ReleaseStatus",
    "VersionRecord",
]

_log = logging.getLogger(__name__)


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
        return promotion.promotions_log(self.paths, dataset)

    def state(self, dataset: str, version: str) -> VersionRecord:
        return read_version(self.paths, self.registry, dataset, version)

    def check_current(self, record: VersionRecord, claimed_hash: str | None = None) -> None:
        check_current(record, claimed_hash)

    # --- gates and candidates --------------------------------------------------------------

    def record_gates(self, config: EnsembleConfig, gates: GateReport) -> Path:
        """Write the gates of a freshly validated version and make it a candidate (a version
        already in a stage keeps it)."""
        path = write_gates(self.paths.version_reports_dir(config.dataset, config.version) / GATES_FILE, gates,
                           load_signing_key(self.paths))
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
        with self._locked(dataset):
            return approving.record_decision(self.paths, self.registry, self.state(dataset, version), reviewer,
                                             decision, note, waive, config_hash)

    # --- promotion --------------------------------------------------------------------------

    def promote(self, dataset: str, version: str, to: str, requested_by: str | None = None) -> PromotionResult:
        with self._locked(dataset):
            return promotion.promote(self.paths, self.registry, self.state(dataset, version), to, requested_by)

    def recover(self, dataset: str) -> str | None:
        """Finish or undo a promotion a crash cut short (call under the release lock); returns what
        was done, None when nothing was pending. Every release command calls it first."""
        return promotion.recover(self.paths, self.registry, dataset)

    def _admissible_approval(self, record: VersionRecord, to: str) -> ApprovalRecord | None:
        return approving.admissible_approval(self.paths, record, to)

    # --- the serving bundle ---------------------------------------------------------------

    def export(self, dataset: str, version: str) -> BundleFacts:
        """The serving bundle of an approved version (reused when intact, rebuilt otherwise):
        for operators who need it again, e.g. after losing the bundles folder."""
        with self._locked(dataset):
            record = self.state(dataset, version)
            check_current(record)
            approval = approving.admissible_approval(self.paths, record, "production")
            bundle, _ = release_bundle.export_bundle(self.paths, self.registry, record, approval,
                                                     promotion.signed_manifests(self.paths, dataset, version))
        return bundle

    def serving_runtime(self, dataset: str) -> tuple[EnsembleRuntime, str]:
        """What decides for this dataset now, and a label saying which version that is: the
        production bundle (verified against the manifest hash the registry recorded), or, before
        anything is in production, the newest validated version from the registry."""
        return release_bundle.serving_runtime(self.paths, self.registry, dataset, self.production_bundle(dataset))

    def production_bundle(self, dataset: str) -> tuple[Path, str, str] | None:
        """(bundle directory, manifest SHA-256 the registry recorded, semver) of the production
        version, None when nothing is in production; a production version without its recorded
        manifest hash, or whose record differs from the signed promotions log's, is refused."""
        with self._locked(dataset):
            found = release_bundle.production_bundle(self.paths, self.registry, dataset)
            # The registry's record must be the signed log's: otherwise a bundle and its tag swapped in the
            # registry's store would be served, or a deleted alias would send scoring elsewhere.
            if found is None:
                if promotion.production_moves(self.paths, dataset):
                    raise ReleaseRefused(f"{dataset}: the registry has no production version, but the signed promotions "
                                         "log moved one to production; the registry was changed outside a promotion "
                                         "(see `ensemble-platform audit`)")
                return None
            problem = promotion.signed_production_problem(self.paths, dataset, found[2], found[1])
            if problem:
                raise ReleaseRefused(f"{dataset} production cannot be served: {problem}; the registry was changed "
                                     "outside a promotion (see `ensemble-platform audit`)")
            return found

    def bundle_paths(self, dataset: str, version: str) -> tuple[Path, Path]:
        return release_bundle.bundle_paths(self.paths, dataset, version)

    # --- status -----------------------------------------------------------------------------

    def status(self, dataset: str) -> ReleaseStatus:
        """Every version with its stage, gates and decision in force; aliases; recent promotions."""
        with self._locked(dataset):
            return release_status.release_status(self.paths, self.registry, dataset)

    def cross_check_approvals(self, dataset: str) -> int:
        return release_status.cross_check_approvals(self.paths, self.registry, dataset)
