"""One ensemble version as the release path reads it, from its four stores at once: the config
file, the registry entry (tags), the release gates (gates.json) and the validation report
(validation.json). Approve, promote, export and status all read a version through `read_version`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from ensemble_platform.ensemble.config import ConfigStore, EnsembleConfig
from ensemble_platform.ensemble.validation import VALIDATION_FILE, ValidationReport
from ensemble_platform.errors import PlatformError
from ensemble_platform.files import write_json
from ensemble_platform.governance.approvals import ReleaseRefused
from ensemble_platform.governance.gates import GateReport
from ensemble_platform.governance.registry import Registry
from ensemble_platform.integrity.documents import sign_document, verify_document
from ensemble_platform.integrity.keys import SigningKey, load_signing_key
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import CONFIG_HASH_TAG

GATES_FILE = "gates.json"
MIN_HASH_PREFIX = 12
GATES_MAC = "mac"
_GATES_PURPOSE = b"ensemble_platform.gates.v1"


@dataclass(frozen=True)
class VersionRecord:
    """One ensemble version: its config as the file holds it now, its registry entry (None when
    read without it), its gates and its validation report (None until written)."""

    config: EnsembleConfig
    registered: ModelVersion | None
    gates: GateReport | None
    validation: ValidationReport | None

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.version}"

    @property
    def validated_hash(self) -> str | None:
        """The config hash validation.json was written for."""
        return None if self.validation is None else self.validation.config_hash

    @property
    def entry(self) -> ModelVersion:
        """The registry entry (read with `registered=True`, the default)."""
        if self.registered is None:
            raise PlatformError(f"{self.label} was read without its registry entry")
        return self.registered


def write_gates(path: Path, gates: GateReport, key: SigningKey) -> Path:
    """gates.json with an HMAC under the signing key: approval and promotion act on these pass/fail
    results, and the file lives under the home, where anyone could mark a failing gate passed."""
    document = gates.model_dump(mode="json")
    return write_json({**document, GATES_MAC: sign_document(key, _GATES_PURPOSE, document)}, path)


def read_gates(path: Path, key: SigningKey) -> GateReport | None:
    """The gates written by `write_gates` (None when there is no file); refused, naming the file, when
    unreadable or not signed by `key`."""
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        mac = document.pop(GATES_MAC, None)
        gates = GateReport.model_validate(document)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise PlatformError(f"release gates {path} are unreadable ({str(exc)[:300]}); rerun the version's "
                            "governance (its ensemble job) to compute them again") from exc
    if not verify_document(key, _GATES_PURPOSE, document, mac):
        raise PlatformError(f"release gates {path} are not signed with the platform's signing key: changed after "
                            "they were computed, or written before gates were signed. Rerun the version's "
                            "governance (its ensemble job) to compute them again")
    return gates


def read_version(
    paths: PlatformPaths, registry: Registry, dataset: str, version: str, *,
    store: ConfigStore | None = None, registered: bool = True,
) -> VersionRecord:
    """The version from its config file, registry entry (unless `registered=False`), gates.json and
    validation.json. Refused, naming the versions there are, when no config has that version."""
    store = store or ConfigStore(paths.configs_dir(dataset))
    if version not in store.versions():
        raise PlatformError(f"{dataset} has no ensemble version {version}; versions: {store.versions() or 'none'}")
    config = store.load(version)
    entry = registry.ensemble_version(dataset, version) if registered else None
    reports = paths.version_reports_dir(dataset, version)
    validation_path = reports / VALIDATION_FILE
    validation = ValidationReport.read(validation_path) if validation_path.is_file() else None
    return VersionRecord(config, entry, read_gates(reports / GATES_FILE, load_signing_key(paths)), validation)


def check_current(record: VersionRecord, claimed_hash: str | None = None) -> None:
    """Refuse a version whose config is not the one that was validated and gated, or not the
    one the reviewer says they reviewed."""
    label, current = record.label, record.config.config_hash
    if record.validated_hash is None or record.gates is None:
        raise ReleaseRefused(f"{label} has not been validated and gated; run ensemble_job and governance_job")
    recorded = {"validation report": record.validated_hash, "release gates": record.gates.config_hash,
                "registry tag": record.entry.tags.get(CONFIG_HASH_TAG)}
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
