"""MLflow tracking and model registry: member versions and ensemble versions with lineage tags.

Registration is idempotent: a member (or ensemble config) whose fingerprint equals that of an
existing version reuses that version, so re-running on unchanged inputs changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from ensemble_platform import __version__, safe_format
from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.ensemble.runtime import EnsembleRuntime
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.stages import STAGE_TAG, StageState
from ensemble_platform.members.training import MemberFit
from ensemble_platform.serving.pyfunc import DATA_PATH, LOADER_MODULE
from ensemble_platform.serving.signature import ensemble_signature
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import (
    CONFIG_HASH_TAG,
    FAMILY_TAG,
    FINGERPRINT_TAG,
    MEMBER_ARTEFACT,
    MEMBER_SHA256_TAG,
    SEMVER_TAG,
)

# Member models carry only the stages a version can be served from.
MEMBER_STAGE_ALIASES = ("staging", "production")
# What a registered model needs at load time. Pinned to the running versions and passed
# explicitly: MLflow's inference would start a Python process per model (~2.5 s each).
_RUNTIME_PACKAGES = ("mlflow", "scikit-learn", "xgboost", "pandas", "numpy", "scipy", "cloudpickle", "skops")


def runtime_requirements() -> list[str]:
    return [f"{package}=={metadata.version(package)}" for package in _RUNTIME_PACKAGES]


def member_model_name(dataset: str, member: str) -> str:
    return f"{dataset}.{member}"


def ensemble_model_name(dataset: str) -> str:
    return f"{dataset}.ensemble"


class Registry:
    """The platform's view of one MLflow tracking store + registry."""

    def __init__(self, paths: PlatformPaths):
        paths.ensure()
        self.paths = paths
        self.tracking_uri = paths.mlflow_tracking_uri
        # Global URIs because mlflow.<flavor>.log_model works on the active run.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.client = MlflowClient(self.tracking_uri, self.tracking_uri)
        self._migrate_once()

    def _migrate_once(self) -> None:
        """Create/upgrade the sqlite schema under an exclusive lock: concurrent first use by
        several run processes would otherwise corrupt a fresh store."""
        with open(self.paths.mlflow_dir / ".migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.client.search_experiments(max_results=1)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def experiment_id(self, dataset: str) -> str:
        name = f"ensemble_platform/{dataset}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(
            name, artifact_location=f"{self.paths.mlflow_artifact_root}/{dataset}"
        )

    def find_version(self, model_name: str, fingerprint: str) -> ModelVersion | None:
        try:
            versions = self.client.search_model_versions(f"name = '{model_name}'")
        except MlflowException:
            return None
        for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
            if version.tags.get(FINGERPRINT_TAG) == fingerprint:
                return version
        return None

    def register_member(
        self, fit: MemberFit, dataset: str, lineage: dict[str, object], X_example: pd.DataFrame,
        dagster_run_id: str | None = None,
    ) -> MemberFit:
        """Log the member's run and register it as a new version unless an identical one exists."""
        name = member_model_name(dataset, fit.name)
        existing = self.find_version(name, fit.fingerprint)
        if existing is not None:
            fit.registered_model, fit.version, fit.run_id = name, str(existing.version), existing.run_id
            return fit
        safe = safe_format.dumps(fit.pipeline)
        tags = {
            FINGERPRINT_TAG: fit.fingerprint,
            MEMBER_SHA256_TAG: hashlib.sha256(safe).hexdigest(),
            "ensemble_platform.member": fit.name,
            FAMILY_TAG: fit.family,
            "ensemble_platform.code_version": __version__,
            "ensemble_platform.dagster_run_id": dagster_run_id or "",
            **{f"ensemble_platform.{k}": str(v) for k, v in lineage.items()},
        }
        with mlflow.start_run(experiment_id=self.experiment_id(dataset), run_name=f"member:{fit.name}") as run:
            mlflow.set_tags(tags)
            mlflow.log_params({k: str(v)[:500] for k, v in fit.params.items()})
            mlflow.log_metrics({f"oof_{k}": v for k, v in fit.oof_metrics.items()} | {"fit_seconds": fit.fit_seconds})
            mlflow.log_dict(fit.definition, "member_definition.json")
            with tempfile.TemporaryDirectory() as scratch:
                (Path(scratch) / MEMBER_ARTEFACT).write_bytes(safe)
                mlflow.log_artifact(str(Path(scratch) / MEMBER_ARTEFACT))
            example = X_example.head(5)
            info = mlflow.sklearn.log_model(
                fit.pipeline,
                name="model",
                # Trees and XGBoost do not load from skops without a trusted-types list.
                serialization_format="cloudpickle",
                signature=infer_signature(example, fit.pipeline.predict_proba(example)),
                pip_requirements=runtime_requirements(),
            )
        version = self._register(info.model_uri, name, tags | {"ensemble_platform.run_id": run.info.run_id})
        fit.registered_model, fit.version, fit.run_id = name, version, run.info.run_id
        return fit

    def register_ensemble(
        self, config: EnsembleConfig, runtime: EnsembleRuntime, X_example: pd.DataFrame,
        dagster_run_id: str | None = None,
    ) -> EnsembleConfig:
        """Register the config as a version of `<dataset>.ensemble` (pyfunc of members + combiner)."""
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
            runtime.save(runtime_path)
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
                signature=ensemble_signature(runtime.schema, runtime.score(X_example.head(5))),
                pip_requirements=runtime_requirements(),
            )
        version = self._register(info.model_uri, name, tags | {"ensemble_platform.run_id": run.info.run_id})
        return config.model_copy(update={"registered_model": name, "registered_version": version})

    def _register(self, model_uri: str, name: str, tags: dict[str, str]) -> str:
        """One registry call creates the version together with its tags: a failure before it
        leaves no version, and no version ever exists without its lineage."""
        return str(mlflow.register_model(model_uri, name, tags=tags).version)

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

    # --- release lifecycle: versions, aliases, stage tags -------------------------------------

    def model_versions(self, model_name: str) -> list[ModelVersion]:
        try:
            versions = self.client.search_model_versions(f"name = '{model_name}'")
        except MlflowException:
            return []
        return sorted(versions, key=lambda v: int(v.version))

    def ensemble_version(self, dataset: str, semver: str) -> ModelVersion:
        """The registered version of `<dataset>.ensemble` that carries ensemble semver `semver`."""
        name = ensemble_model_name(dataset)
        for version in self.model_versions(name):
            if version.tags.get(SEMVER_TAG) == semver:
                return version
        known = [v.tags.get(SEMVER_TAG) for v in self.model_versions(name)]
        raise PlatformError(f"no registered version of {name} has ensemble version {semver}; "
                            f"registered: {known or 'none'}")

    def aliases(self, model_name: str) -> dict[str, str]:
        # search_model_versions returns no aliases on the SQL store: read them from the model.
        try:
            return {alias: str(v) for alias, v in self.client.get_registered_model(model_name).aliases.items()}
        except MlflowException:
            return {}

    def member_model_names(self, dataset: str) -> list[str]:
        ensemble = ensemble_model_name(dataset)
        return sorted(m.name for m in self.client.search_registered_models(f"name LIKE '{dataset}.%'")
                      if m.name != ensemble and m.name.startswith(f"{dataset}."))

    def stage_state(self, dataset: str) -> StageState:
        name = ensemble_model_name(dataset)
        stages = {str(v.version): v.tags[STAGE_TAG] for v in self.model_versions(name) if v.tags.get(STAGE_TAG)}
        members = {m: {a: v for a, v in self.aliases(m).items() if a in MEMBER_STAGE_ALIASES}
                   for m in self.member_model_names(dataset)}
        return StageState(stages, self.aliases(name), members)

    def apply_stage_state(self, dataset: str, new: StageState) -> None:
        """Write the difference between the registry's stage state and `new`."""
        name = ensemble_model_name(dataset)
        old = self.stage_state(dataset)
        for version in sorted(set(old.stages) | set(new.stages), key=int):
            if old.stages.get(version) != new.stages.get(version):
                self._set_tag(name, version, STAGE_TAG, new.stages.get(version))
        self._apply_aliases(name, old.aliases, new.aliases)
        for model in sorted(set(old.member_aliases) | set(new.member_aliases)):
            self._apply_aliases(model, old.member_aliases.get(model, {}), new.member_aliases.get(model, {}))

    def _apply_aliases(self, model: str, old: dict[str, str], new: dict[str, str]) -> None:
        for alias in sorted(set(old) | set(new)):
            if old.get(alias) == new.get(alias):
                continue
            if alias in new:
                self.client.set_registered_model_alias(model, alias, new[alias])
            else:
                self.client.delete_registered_model_alias(model, alias)

    def set_version_tags(self, model_name: str, version: str, tags: dict[str, str | None]) -> None:
        for key, value in tags.items():
            self._set_tag(model_name, version, key, value)

    def _set_tag(self, model_name: str, version: str, key: str, value: str | None) -> None:
        if value is None:
            with contextlib.suppress(MlflowException):
                self.client.delete_model_version_tag(model_name, version, key)
        else:
            self.client.set_model_version_tag(model_name, version, key, value)

    def snapshot(self, dataset: str) -> RegistrySnapshot:
        name = ensemble_model_name(dataset)
        tags = {str(v.version): dict(v.tags) for v in self.model_versions(name)}
        return RegistrySnapshot(self.stage_state(dataset), tags)

    def restore(self, dataset: str, snapshot: RegistrySnapshot) -> None:
        """Put stage state and ensemble version tags back as they were in `snapshot`."""
        name = ensemble_model_name(dataset)
        current = self.snapshot(dataset)
        for version, before in snapshot.version_tags.items():
            now = current.version_tags.get(version, {})
            for key in sorted(set(before) | set(now)):
                if before.get(key) != now.get(key) and key != STAGE_TAG:
                    self._set_tag(name, version, key, before.get(key))
        self.apply_stage_state(dataset, snapshot.stages)

    @contextlib.contextmanager
    def transaction(self, dataset: str) -> Iterator[None]:
        """All-or-nothing registry changes of one dataset's release state: on any error inside,
        aliases and version tags are restored to what they were before."""
        before = self.snapshot(dataset)
        try:
            yield
        except BaseException:
            self.restore(dataset, before)
            raise

    def load_member(self, model_name: str, version: str) -> tuple[object, ModelVersion]:
        """A registered member version as a scikit-learn model, with its registry entry."""
        entry = self.client.get_model_version(model_name, str(version))
        try:
            model = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
        except Exception as exc:
            raise PlatformError(f"version {version} of {model_name} cannot be loaded as a scikit-learn model: "
                                f"{type(exc).__name__}: {exc}") from exc
        return model, entry

    def download_member_artefact(self, model_name: str, version: str, destination: Path) -> Path | None:
        """The member version's safe artefact, checked against its SHA-256 tag; None for a version
        registered without one (e.g. adopted from outside the platform)."""
        from mlflow.artifacts import download_artifacts

        entry = self.client.get_model_version(model_name, str(version))
        expected = entry.tags.get(MEMBER_SHA256_TAG)
        if not expected:
            return None
        destination.mkdir(parents=True, exist_ok=True)
        path = Path(download_artifacts(run_id=entry.run_id, artifact_path=MEMBER_ARTEFACT, dst_path=str(destination)))
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise PlatformError(f"{MEMBER_ARTEFACT} of {model_name} version {version} has SHA-256 {actual[:12]}, "
                                f"not the {expected[:12]} its registry tag records; the artefact was changed")
        return path

    def download_model(self, model_name: str, version: str, destination: Path) -> Path:
        from mlflow.artifacts import download_artifacts
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

        previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
        os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"  # a bar per model clutters CLI output
        try:
            return Path(download_artifacts(artifact_uri=f"models:/{model_name}/{version}",
                                           dst_path=str(destination)))
        finally:
            if previous is None:
                os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
            else:
                os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous


@dataclass(frozen=True)
class RegistrySnapshot:
    stages: StageState
    version_tags: dict[str, dict[str, str]]
