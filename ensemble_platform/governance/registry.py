"""MLflow model registry: registration of member versions and ensemble versions with lineage tags.

Registration is idempotent: a member (or ensemble config) whose fingerprint equals that of an
existing version reuses that version, so re-running on unchanged inputs changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from ensemble_platform import __version__, blas_kernel, safe_format
from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.ensemble.runtime import EnsembleRuntime, RegisteredMember, load_member_artefact, payload_digest
from ensemble_platform.governance.registry_connection import (
    RegistryConnection,
    ensemble_model_name,
    member_model_name,
    runtime_requirements,
)
from ensemble_platform.governance.registry_downloads import RegistryDownloads, member_artefact_mac, member_tag_problem
from ensemble_platform.governance.registry_stages import MEMBER_STAGE_ALIASES, RegistrySnapshot, RegistryStages
from ensemble_platform.integrity.keys import load_signing_key
from ensemble_platform.members.training import MemberFit
from ensemble_platform.serving.pyfunc import DATA_PATH, LOADER_MODULE
from ensemble_platform.serving.signature import ensemble_signature
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import (
    BLAS_KERNEL_TAG,
    CONFIG_HASH_TAG,
    FAMILY_TAG,
    FINGERPRINT_TAG,
    MEMBER_ARTEFACT,
    MEMBER_MAC_TAG,
    MEMBER_SHA256_TAG,
    PAYLOAD_MAC_TAG,
    PAYLOAD_SHA256_TAG,
    PREDICT_COST_TAG,
    SEMVER_TAG,
    TRAIN_HASH_TAG,
)

__all__ = [
    "MEMBER_STAGE_ALIASES",
    "Registry",
    "RegistryConnection",
    "RegistrySnapshot",
    "ensemble_model_name",
    "member_model_name",
    "register_outside_member",
    "runtime_requirements",
]

# Which registered versions a fingerprint lookup may return.
Accept = Callable[[ModelVersion], bool]

SIGNATURE_ROWS = 5  # rows scored to infer the registered ensemble's output signature


class Registry(RegistryStages, RegistryDownloads):
    """The platform's view of one MLflow tracking store + registry. Split by reason to change:
    the connection and plain reads (`registry_connection`), stage state and transactions
    (`registry_stages`), downloads (`registry_downloads`), and here registration of members and
    ensembles with their lineage."""

    def find_version(self, model_name: str, fingerprint: str, accept: Accept | None = None) -> ModelVersion | None:
        """The version carrying `fingerprint` (and passing `accept`, if given): the lowest one, the one
        concurrent writers keep."""
        matching = self._versions_with(model_name, fingerprint, accept)
        return matching[0] if matching else None

    def _versions_with(self, model_name: str, fingerprint: str, accept: Accept | None = None) -> list[ModelVersion]:
        try:
            versions = self.client.search_model_versions(f"name = '{model_name}'")
        except MlflowException:
            return []
        return sorted((v for v in versions if v.tags.get(FINGERPRINT_TAG) == fingerprint and (accept is None or accept(v))),
                      key=lambda v: int(v.version))

    def _signed_member(self, model_name: str, digest: str) -> Accept:
        """Accepts a member version only if its tags are signed for its model and run and record `digest`:
        a fingerprint tag alone (anyone who can write the store can set one) never makes a version reused."""
        key = load_signing_key(self.paths)
        return lambda v: (v.tags.get(MEMBER_SHA256_TAG) == digest
                          and member_tag_problem(key, model_name, str(v.run_id), dict(v.tags)) is None)

    def register_member(
        self, fit: MemberFit, dataset: str, lineage: dict[str, object], X_example: pd.DataFrame,
        dagster_run_id: str | None = None,
    ) -> MemberFit:
        """Log the member's run and register it as a new version unless an identical one exists;
        returns the fit with its registered model, version and run id."""
        name = member_model_name(dataset, fit.name)
        safe = safe_format.dumps(fit.pipeline)
        digest = hashlib.sha256(safe).hexdigest()
        signed_member = self._signed_member(name, digest)
        existing = self.find_version(name, fit.fingerprint, signed_member)
        if existing is not None:
            return dataclasses.replace(fit, registered_model=name, version=str(existing.version),
                                       run_id=existing.run_id)
        tags = {
            FINGERPRINT_TAG: fit.fingerprint,
            MEMBER_SHA256_TAG: digest,
            "ensemble_platform.member": fit.name,
            FAMILY_TAG: fit.family,
            PREDICT_COST_TAG: f"{fit.predict_seconds_per_row:.6g}",
            "ensemble_platform.code_version": __version__,
            # The OpenBLAS kernel the fit ran on: its bits depend on it (blas_kernel.py).
            BLAS_KERNEL_TAG: blas_kernel.kernels(),
            "ensemble_platform.dagster_run_id": dagster_run_id or "",
            **{f"ensemble_platform.{k}": str(v) for k, v in lineage.items()},
        }
        with mlflow.start_run(experiment_id=self.experiment_id(dataset), run_name=f"member:{fit.name}") as run:
            mlflow.set_tags(tags)
            mlflow.log_params({k: str(v)[:500] for k, v in fit.params.items()})
            mlflow.log_metrics({f"oof_{k}": v for k, v in fit.oof_metrics.items()} | {"fit_seconds": fit.fit_seconds})
            mlflow.log_dict(fit.definition, "member_definition.json")
            _log_safe_artefact(safe)
            example = X_example.head(5)
            info = mlflow.sklearn.log_model(
                fit.pipeline,
                name="model",
                # Trees and XGBoost do not load from skops without a trusted-types list.
                serialization_format="cloudpickle",
                signature=infer_signature(example, fit.fitted().predict_proba(example)),
                pip_requirements=runtime_requirements(),
            )
        signed = {MEMBER_MAC_TAG: member_artefact_mac(load_signing_key(self.paths), name, run.info.run_id, tags),
                  "ensemble_platform.run_id": run.info.run_id}
        created = str(mlflow.register_model(info.model_uri, name, tags=tags | signed).version)
        # A racer that registered the same fit first keeps its version: the run is that (signed) version's,
        # as `_keep_lowest` accepted it, not one read back again.
        kept = self._keep_lowest(name, fit.fingerprint, created, signed_member)
        version, run_id = (created, run.info.run_id) if kept is None else (str(kept.version), str(kept.run_id))
        return dataclasses.replace(fit, registered_model=name, version=version, run_id=run_id)

    def register_ensemble(
        self, config: EnsembleConfig, runtime: EnsembleRuntime, example: pd.DataFrame,
        dagster_run_id: str | None = None, member_proba: np.ndarray | None = None,
    ) -> EnsembleConfig:
        """Register the config as a version of `<dataset>.ensemble` (pyfunc of members + combiner).
        The output signature is the runtime's score of the first rows of `example`; `member_proba`:
        the members' probabilities of those rows (stored, bit-identical: then the members need not
        be loaded, and `runtime` may hold `RegisteredMember` references)."""
        name = ensemble_model_name(config.dataset)
        existing = self.find_version(name, config.config_hash)
        if existing is not None:
            return config.model_copy(update={"registered_model": name, "registered_version": str(existing.version)})
        tags = {
            FINGERPRINT_TAG: config.config_hash,
            SEMVER_TAG: config.version,
            "ensemble_platform.strategy": config.strategy,
            CONFIG_HASH_TAG: config.config_hash,
            "ensemble_platform.members": json.dumps(config.member_versions(), sort_keys=True),
            "ensemble_platform.code_version": __version__,
            "ensemble_platform.dagster_run_id": dagster_run_id or "",
            "ensemble_platform.data_hash": config.data_hash,
        }
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(
            experiment_id=self.experiment_id(config.dataset), run_name=f"ensemble:{config.version}"
        ) as run:
            runtime_path = Path(tmp) / DATA_PATH.name
            # The served members are their registered artefacts, copied byte for byte (not serialised
            # again: the same bytes, as safe_format's output is canonical, at a file copy's cost).
            files = self.member_artefacts(config.members, Path(tmp) / "artefacts")
            runtime = self._load_members_without_artefact(runtime, config, files)
            runtime.save(runtime_path, files)
            digest = payload_digest(runtime_path)
            tags |= {PAYLOAD_SHA256_TAG: digest, PAYLOAD_MAC_TAG: self.payload_mac(name, config.config_hash, digest)}
            config_path = Path(tmp) / "ensemble_config.json"
            config_path.write_text(config.model_dump_json(indent=2))
            mlflow.set_tags(tags)
            mlflow.log_params({"strategy": config.strategy, "semver": config.version,
                               "calibration": config.calibration.get("method", "none"),
                               "agreement_threshold": config.agreement_threshold,
                               "decision_threshold": config.decision_threshold})
            mlflow.log_artifact(str(config_path))
            info = mlflow.pyfunc.log_model(
                name="ensemble",
                loader_module=LOADER_MODULE,
                data_path=str(runtime_path),
                signature=ensemble_signature(runtime.schema, runtime.score(
                    example.head(SIGNATURE_ROWS),
                    member_proba=None if member_proba is None else member_proba[:SIGNATURE_ROWS])),
                pip_requirements=runtime_requirements(),
            )
        version = self._register(info.model_uri, name, tags | {"ensemble_platform.run_id": run.info.run_id})
        return config.model_copy(update={"registered_model": name, "registered_version": version})

    def _load_members_without_artefact(
        self, runtime: EnsembleRuntime, config: EnsembleConfig, files: dict[str, Path]
    ) -> EnsembleRuntime:
        """A served member registered without a safe artefact (adopted from outside the platform)
        has nothing to copy: the runtime gets it loaded from its MLflow model and serialises it."""
        missing = [m for m in config.members
                   if m.name not in files and isinstance(runtime.members.get(m.name), RegisteredMember)]
        if not missing:
            return runtime
        members = dict(runtime.members)
        for member in missing:
            members[member.name], _ = self.load_member(member.registered_model, member.version)
        return dataclasses.replace(runtime, members=members)

    def _register(self, model_uri: str, name: str, tags: dict[str, str], accept: Accept | None = None) -> str:
        """One registry call creates the version together with its tags: a failure before it
        leaves no version, and no version ever exists without its lineage. Then the duplicate rule
        makes concurrent writers of the same fingerprint agree on one version (among those `accept`
        passes: for members, the signed ones)."""
        created = str(mlflow.register_model(model_uri, name, tags=tags).version)
        kept = self._keep_lowest(name, tags[FINGERPRINT_TAG], created, accept)
        return created if kept is None else str(kept.version)

    def _keep_lowest(self, name: str, fingerprint: str, created: str, accept: Accept | None = None
                     ) -> ModelVersion | None:
        """Create-then-dedupe, correct on any store and through a tracking server (no lock seam):
        among versions with one fingerprint the lowest number stays; a writer that finds a lower
        one deletes its own version (and soft-deletes its run) and returns the lower (None: its own
        stays). Version numbers are assigned in commit order, so the lowest is never deleted by
        anyone, and every racer returns it."""
        lowest = self.find_version(name, fingerprint, accept)
        if lowest is None or int(lowest.version) >= int(created):
            return None
        mine = self.client.get_model_version(name, created)
        self.client.delete_model_version(name, created)
        if mine.run_id:
            self.client.delete_run(mine.run_id)
        return lowest

    def ensemble_run_id(self, config: EnsembleConfig) -> str:
        if not (config.registered_model and config.registered_version):
            raise ValueError(f"ensemble config {config.version} of {config.dataset} is not registered")
        return str(self.client.get_model_version(config.registered_model, config.registered_version).run_id)

    def log_to_run(
        self, run_id: str, metrics: dict[str, float], files: list[Path], artifact_path: str | None = None
    ) -> None:
        for key, value in metrics.items():
            if value is not None and np.isfinite(value):
                self.client.log_metric(run_id, key, float(value))
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path)


def register_outside_member(model: object, model_name: str, train_hash: str,
                            tags: dict[str, str] | None = None, paths: PlatformPaths | None = None) -> str:
    """For a data scientist's notebook (MLflow's tracking URI set to the platform's store): log the
    fitted `model` as MLflow's scikit-learn model and as the platform's safe artefact, and register
    it as a new version of `model_name` (`<dataset>.<member>`) with the lineage tag, the artefact's
    SHA-256 and that digest's MAC under the signing key (so the caller must hold the key: `paths` or
    the environment finds it, as for every platform command). The platform then loads the safe
    artefact, never the pickle (`RegistryDownloads.load_member`). Returns the new version. A model
    with types outside the safe format's allow-list fails here (UnsupportedModelError/UnsafeModelError),
    naming the type."""
    # Before anything is logged: without the key (never a new one made here) nothing is registered.
    key = load_signing_key(paths, create=False)
    safe = safe_format.dumps(model)
    load_member_artefact(safe)  # types outside the allow-list fail here, not later in the platform
    with mlflow.start_run(run_name=f"outside member: {model_name}") as run:
        _log_safe_artefact(safe)
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle")
    lineage = {**(tags or {}), TRAIN_HASH_TAG: train_hash, MEMBER_SHA256_TAG: hashlib.sha256(safe).hexdigest()}
    lineage[MEMBER_MAC_TAG] = member_artefact_mac(key, model_name, run.info.run_id, lineage)
    return str(mlflow.register_model(info.model_uri, model_name, tags=lineage).version)


def _log_safe_artefact(safe: bytes) -> None:
    """A member's safe-format bytes as MEMBER_ARTEFACT of the active run (what `load_member` loads)."""
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / MEMBER_ARTEFACT).write_bytes(safe)
        mlflow.log_artifact(str(Path(scratch) / MEMBER_ARTEFACT))
