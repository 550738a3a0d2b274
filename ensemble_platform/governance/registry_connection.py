"""The MLflow connection: tracking store + registry of one platform home, its one-time schema
setup, per-dataset experiments, and the plain reads (versions, aliases, model names) every other
part of the registry builds on."""

from __future__ import annotations

import fcntl
from importlib import metadata

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.mlflow_schema import seed_sqlite_store
from ensemble_platform.settings import PlatformPaths, restore_started_mlflow_env
from ensemble_platform.tags import SEMVER_TAG

# What a registered model needs at load time. Pinned to the running versions and passed
# explicitly: MLflow's inference would start a Python process per model (~2.5 s each).
_RUNTIME_PACKAGES = ("mlflow", "scikit-learn", "xgboost", "pandas", "numpy", "scipy", "cloudpickle", "skops")


def runtime_requirements() -> list[str]:
    return [f"{package}=={metadata.version(package)}" for package in _RUNTIME_PACKAGES]


def member_model_name(dataset: str, member: str) -> str:
    return f"{dataset}.{member}"


def ensemble_model_name(dataset: str) -> str:
    return f"{dataset}.ensemble"


class RegistryConnection:
    """One MLflow tracking store + registry, connected and migrated; reads only."""

    def __init__(self, paths: PlatformPaths):
        paths.ensure()
        self.paths = paths
        self.tracking_uri = paths.mlflow_tracking_uri
        # Global URIs because mlflow.<flavor>.log_model works on the active run.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        restore_started_mlflow_env()  # ... without handing this home's store to child processes
        self.client = self._connect_once()

    def _connect_once(self) -> MlflowClient:
        """Create/upgrade the sqlite schema under an exclusive lock: concurrent first use by
        several run processes would otherwise corrupt a fresh store. A new sqlite store starts as
        the installation's empty schema (`mlflow_schema`), not as MLflow's migration chain."""
        with open(self.paths.mlflow_dir / ".migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                seed_sqlite_store(self.tracking_uri)
                client = MlflowClient(self.tracking_uri, self.tracking_uri)
                self._refuse_foreign_artifacts(client)
                return client
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _refuse_foreign_artifacts(self, client: MlflowClient) -> None:
        """MLflow's sqlite store keeps artifact locations as absolute paths: in a copied or moved home they
        still name the original, so a copy wrote its model cards into the original home's registry and,
        with the original gone, read every artifact as tampered. Refused, naming both places."""
        root = self.paths.mlflow_artifact_root.rstrip("/") + "/"
        if not root.startswith("file:"):
            return  # a tracking server keeps the artifacts
        foreign = [(e.name, e.artifact_location) for e in client.search_experiments(max_results=1000)
                   if e.name.startswith("ensemble_platform/") and not (e.artifact_location or "").startswith(root)]
        if foreign:
            name, location = foreign[0]
            raise PlatformError(
                f"this platform home's MLflow store ({self.tracking_uri}) keeps the artifacts of {name} under "
                f"{location}, not under this home's {root}: the home was copied or moved, and MLflow stores "
                "artifact paths as absolute, so it would read and write the original's files. Use the original "
                "home, or build a new home from the dataset spec (demo --dataset SPEC)")

    def experiment_id(self, dataset: str) -> str:
        name = f"ensemble_platform/{dataset}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=f"{self.paths.mlflow_artifact_root}/{dataset}"
            )
        except MlflowException:
            # Another process created it between the read and the write (concurrent runs).
            raced = self.client.get_experiment_by_name(name)
            if raced is None:
                raise
            return raced.experiment_id

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
