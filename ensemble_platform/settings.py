"""Where the platform writes: one home directory holds Dagster, MLflow, reports and bundles."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "ENSEMBLE_PLATFORM_HOME"
DATASET_ENV = "ENSEMBLE_PLATFORM_DATASET"
DEFAULT_HOME = ".ensemble_platform"
# Run tag naming the dataset spec a run works on: one code location serves every dataset the
# platform knows (sensors and schedules set it; without it a run uses the configured spec).
DATASET_TAG = "ensemble_platform/dataset_spec"
# Run tag saying what started a run (member_version, batch, drift, schedule, retraining).
TRIGGER_TAG = "ensemble_platform/trigger"
# "off" creates sensors and schedules stopped (tests, or a home that must not act on its own).
AUTOMATION_ENV = "ENSEMBLE_PLATFORM_AUTOMATION"
# Where MLflow tracking + registry live. The platform's own setting wins over MLflow's standard
# variable; with neither, the embedded sqlite store under the home (`make demo`). A tracking server
# (`http(s)://...`, started with `--serve-artifacts`) also keeps the artifacts; a database URI
# (`postgresql://...`) keeps the artifacts under the home.
MLFLOW_URI_ENV = "ENSEMBLE_PLATFORM_MLFLOW_URI"
MLFLOW_STANDARD_URI_ENV = "MLFLOW_TRACKING_URI"
# The artifact root a tracking server started with `--serve-artifacts` proxies to its storage.
SERVED_ARTIFACTS_ROOT = "mlflow-artifacts:"
# Where the decision log lives: unset, the keyed SQLite file under the home; a `postgresql://` URL
# (credentials in the URL or libpq's environment, never written under the home), the shared
# PostgreSQL store every service replica appends to.
DECISION_STORE_ENV = "ENSEMBLE_PLATFORM_DECISION_STORE"
DECISION_STORE_SCHEMES = ("postgresql://", "postgres://")
# "1": a member version registered without a safe artefact (logged from a notebook as MLflow's
# cloudpickle) may be loaded, which runs whatever code its file holds. Unset, such versions are
# refused with the reason: anyone who can write the MLflow store (under the home by default) could
# otherwise have the member-version sensor run their code. Set it where only trusted people write it.
TRUST_PICKLED_MEMBERS_ENV = "ENSEMBLE_PLATFORM_TRUST_PICKLED_MEMBERS"
# A Dagster instance directory (its dagster.yaml: storage, run queue, launcher) for the CLI to use, e.g.
# the stack's PostgreSQL instance. It must lie outside the home (settings there are writable by the
# threat model's attacker and can make Dagster run code). Unset: the platform's own settings with
# storage under `<home>/dagster` (`instance_settings`).
DAGSTER_INSTANCE_ENV = "ENSEMBLE_PLATFORM_DAGSTER_INSTANCE"


# MLflow's own variable as the process was started: `mlflow.set_tracking_uri` rewrites it in the
# process environment, so a later read would see whatever home was connected last.
_STARTED_WITH_MLFLOW_URI = os.environ.get(MLFLOW_STANDARD_URI_ENV, "").strip()
_MLFLOW_URI_VARIABLES = (MLFLOW_STANDARD_URI_ENV, "MLFLOW_REGISTRY_URI")
_STARTED_MLFLOW_ENV = {name: os.environ.get(name) for name in _MLFLOW_URI_VARIABLES}


def restore_started_mlflow_env() -> None:
    """Put MLflow's URI variables back as the process started with them. `mlflow.set_tracking_uri`
    writes the URI into `os.environ`, and every child process (serve, Dagster run workers, the shadow
    scorer) would then take the last home this process connected to as *the* deployment's store,
    instead of choosing from its own `--home`."""
    for name, value in _STARTED_MLFLOW_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def configured_mlflow_uri() -> str | None:
    """The MLflow URI the deployment chooses, or None for the embedded default."""
    return os.environ.get(MLFLOW_URI_ENV, "").strip() or _STARTED_WITH_MLFLOW_URI or None


def masked_url(url: str) -> str:
    """`url` with its password (if any) replaced by `***`: how a store URL is named in messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = urllib.parse.quote(parts.username or "", safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def configured_decision_store() -> str | None:
    """The PostgreSQL URL `ENSEMBLE_PLATFORM_DECISION_STORE` names, or None (unset: SQLite under the home).
    Raises `ValueError` naming the setting for any other value."""
    value = os.environ.get(DECISION_STORE_ENV, "").strip()
    if not value:
        return None
    if not value.startswith(DECISION_STORE_SCHEMES):
        raise ValueError(f"{DECISION_STORE_ENV}={masked_url(value)!r} is not a store this platform knows: expected "
                         f"unset (the SQLite decision log under the platform home) or a PostgreSQL URL "
                         f"(postgresql://user:password@host:port/database)")
    return value


def trust_pickled_members() -> bool:
    return os.environ.get(TRUST_PICKLED_MEMBERS_ENV, "").strip() == "1"


def automation_enabled() -> bool:
    return os.environ.get(AUTOMATION_ENV, "").strip().lower() != "off"


@dataclass(frozen=True)
class PlatformPaths:
    """All locations under the platform home; nothing is written outside it."""

    home: Path

    @classmethod
    def from_env(cls, home: str | os.PathLike[str] | None = None) -> PlatformPaths:
        chosen = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
        return cls(Path(chosen).expanduser().resolve())

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        """`ENSEMBLE_PLATFORM_MLFLOW_URI`, else `MLFLOW_TRACKING_URI` (at start), else sqlite under the home."""
        return configured_mlflow_uri() or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        """Artifacts go through a tracking server when there is one, else under the home."""
        if self.mlflow_tracking_uri.startswith(("http://", "https://")):
            return SERVED_ARTIFACTS_ROOT
        return (self.mlflow_dir / "artifacts").as_uri()

    def reports_dir(self, dataset: str) -> Path:
        return self.home / "reports" / dataset

    def version_reports_dir(self, dataset: str, version: str) -> Path:
        """Reports and the model card of one ensemble version."""
        return self.reports_dir(dataset) / version

    def data_validation_path(self, dataset: str, data_hash: str) -> Path:
        """The Great Expectations result for one version of the data, keyed by its content hash."""
        return self.reports_dir(dataset) / "data_validation" / f"{data_hash}.json"

    def predictions_dir(self, dataset: str) -> Path:
        return self.home / "predictions" / dataset

    def parity_dir(self, dataset: str, version: str) -> Path:
        """The holdout rows as an operator would send them and the scores validation gave them:
        what an exported bundle must reproduce exactly."""
        return self.predictions_dir(dataset) / "versions" / version

    def reference_dir(self, dataset: str) -> Path:
        """The latest training split's rows and schema: what new batches are checked against."""
        return self.home / "reference" / dataset

    def monitoring_dir(self, dataset: str) -> Path:
        """Drift reports and performance on new batches."""
        return self.home / "reports" / dataset / "monitoring"

    def audit_dir(self, dataset: str) -> Path:
        """Append-only approval and promotion logs of one dataset."""
        return self.home / "audit" / dataset

    def configs_dir(self, dataset: str) -> Path:
        return self.home / "configs" / dataset

    def bundles_dir(self, dataset: str) -> Path:
        return self.home / "bundles" / dataset

    @property
    def datasets_dir(self) -> Path:
        """The dataset catalogue: one entry per dataset the platform has built."""
        return self.home / "datasets"

    def asset_storage(self, dataset: str) -> Path:
        """Dagster asset values of one dataset (each dataset has its own split, members, ...)."""
        return self.dagster_home / "storage" / dataset

    def ensure(self) -> PlatformPaths:
        for path in (self.home, self.dagster_home, self.mlflow_dir):
            path.mkdir(parents=True, exist_ok=True)
        return self
