"""The serving bundle of a released version: exported (reused when intact) on promotion to
production, found again for the version in production (checked against the manifest hash the
registry recorded), and what decides for a dataset now (`serving_runtime`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ensemble_platform import __version__
from ensemble_platform.ensemble.config import ConfigStore
from ensemble_platform.ensemble.runtime import EnsembleRuntime, member_file
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.approvals import ApprovalRecord, ReleaseRefused
from ensemble_platform.governance.registry import Registry, ensemble_model_name, runtime_requirements
from ensemble_platform.governance.version_record import VersionRecord
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
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import BUNDLE_TAGS, SEMVER_TAG


class BundleFacts(BaseModel):
    """Where a version's serving bundle and archive are, and their SHA-256s (recorded with the promotion)."""

    model_config = ConfigDict(frozen=True)

    path: str
    archive: str
    archive_sha256: str
    manifest_sha256: str

    def version_tags(self) -> dict[str, str | None]:
        """The registry tags a production promotion sets on the promoted version."""
        return {BUNDLE_TAGS[0]: self.archive_sha256, BUNDLE_TAGS[1]: self.manifest_sha256}


def bundle_paths(paths: PlatformPaths, dataset: str, version: str) -> tuple[Path, Path]:
    root = paths.bundles_dir(dataset)
    return root / version, root / f"{version}.tar.gz"


def export_bundle(
    paths: PlatformPaths, registry: Registry, record: VersionRecord, approval: ApprovalRecord | None,
    signed_manifests: frozenset[str] = frozenset(),
) -> tuple[BundleFacts, bool]:
    """The version's bundle and archive: reused when an intact one exists for the approval in force
    whose manifest the signed promotions log recorded for this version (`signed_manifests`: a bundle
    found under the home is otherwise anyone's), else built (and parity-checked) anew from the signed
    registered payload; builds are deterministic. Returns (bundle facts, newly built)."""
    assert approval is not None
    directory, archive = bundle_paths(paths, record.dataset, record.version)
    try:
        manifest = verify_bundle(directory)
        reusable = (manifest["approval"].get("sha256") == approval.sha256 and archive.is_file()
                    and sha256_file(directory / "manifest.json") in signed_manifests
                    and archive.with_name(archive.name + ".sha256").read_text().split()[0] == sha256_file(archive))
    except (BundleError, OSError, KeyError, AttributeError, IndexError, TypeError, ValueError):
        reusable = False  # anything found under the home that is not an intact bundle of ours is rebuilt
    created = not reusable
    if created:
        _build_bundle(paths, registry, record, approval, directory, archive)
    return BundleFacts(path=str(directory), archive=str(archive), archive_sha256=sha256_file(archive),
                       manifest_sha256=sha256_file(directory / "manifest.json")), created


def _build_bundle(paths: PlatformPaths, registry: Registry, record: VersionRecord, approval: ApprovalRecord,
                  directory: Path, archive: Path) -> None:
    config = record.config
    reports = paths.version_reports_dir(config.dataset, config.version)
    with tempfile.TemporaryDirectory() as scratch:
        # The bundle is the registered payload, checked against its signed digest: members, combiner and
        # calibrator as registered with the approved config (not the member runs' files, nor anything since).
        payload = registry.verified_payload(record.entry.name, str(record.entry.version), Path(scratch),
                                            config.config_hash)
        runtime = EnsembleRuntime.load(payload)
        member_files = {m.name: payload / member_file(m.name) for m in config.members
                        if (payload / member_file(m.name)).is_file()}
        contents = BundleContents(
            config=config, runtime=runtime, member_files=member_files,
            approval=approval.model_dump(mode="json"),
            model_card={"html": reports / "model_card.html", "md": reports / "model_card.md"},
            created_at=approval.decided_at,
            requirements=[*runtime_requirements(), f"ensemble_platform=={__version__}"],
        )
        write_bundle(contents, directory, ParitySet.read(paths.parity_dir(config.dataset, config.version)))
    try:
        write_archive(directory, archive, approval.decided_at)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def remove_bundle(paths: PlatformPaths, dataset: str, version: str) -> None:
    directory, archive = bundle_paths(paths, dataset, version)
    shutil.rmtree(directory, ignore_errors=True)
    for path in (archive, archive.with_name(archive.name + ".sha256")):
        path.unlink(missing_ok=True)


def production_bundle(paths: PlatformPaths, registry: Registry, dataset: str) -> tuple[Path, str, str] | None:
    """(bundle directory, manifest SHA-256 the registry recorded, semver) of the production
    version, None when nothing is in production (call under the release lock). A production
    version without its recorded manifest hash is refused: its bundle could not be checked."""
    name = ensemble_model_name(dataset)
    production = registry.aliases(name).get("production")
    if production is None:
        return None
    entry = registry.client.get_model_version(name, production)
    semver, manifest_sha256 = entry.tags.get(SEMVER_TAG), entry.tags.get(BUNDLE_TAGS[1])
    if not semver or not manifest_sha256:
        raise ReleaseRefused(
            f"{dataset} production (registered version {production}) has no recorded manifest hash "
            f"({BUNDLE_TAGS[1]}): its bundle cannot be verified; promote it again or export it")
    return bundle_paths(paths, dataset, semver)[0], manifest_sha256, semver


def serving_runtime(
    paths: PlatformPaths, registry: Registry, dataset: str, production: tuple[Path, str, str] | None,
) -> tuple[EnsembleRuntime, str]:
    """What decides for this dataset now, and a label saying which version that is: the
    production bundle `production` (verified against its recorded manifest hash), or, before
    anything is in production, the newest validated version from the registry."""
    if production is not None:
        directory, manifest_sha256, semver = production
        return load_bundle(directory, manifest_sha256), f"production {semver} (serving bundle)"
    latest = ConfigStore(paths.configs_dir(dataset)).latest()
    if latest is None or latest.registered_version is None:
        raise PlatformError(f"{dataset} has no validated ensemble version to score with; run its graph first")
    return registered_runtime(registry, dataset, latest.registered_version, latest.config_hash), \
        f"{latest.version} (newest validated; nothing in production)"


def registered_runtime(registry: Registry, dataset: str, registered_version: str, config_hash: str) -> EnsembleRuntime:
    """The runtime registered with a version of `<dataset>.ensemble` for `config_hash`, once its files
    are checked against the signed payload digest of its registration (`RegistryDownloads.verified_payload`)."""
    with tempfile.TemporaryDirectory() as scratch:
        return EnsembleRuntime.load(
            registry.verified_payload(ensemble_model_name(dataset), registered_version, Path(scratch), config_hash))
