"""Deployment by configuration: the MLflow location comes from settings, the embedded default
stays sqlite under the home; the stack's and docker's files are consistent."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ensemble_platform.settings import MLFLOW_URI_ENV, SERVED_ARTIFACTS_ROOT, PlatformPaths


def test_embedded_sqlite_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv(MLFLOW_URI_ENV, raising=False)
    monkeypatch.setattr("ensemble_platform.settings._STARTED_WITH_MLFLOW_URI", "")
    paths = PlatformPaths.from_env(tmp_path / "home")
    assert paths.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"
    assert paths.mlflow_artifact_root == (tmp_path / "home" / "mlflow" / "artifacts").as_uri()


def test_mlflow_standard_variable_counts_as_the_process_started(tmp_path):
    """MLFLOW_TRACKING_URI chooses the store; mlflow.set_tracking_uri rewriting it later does not."""
    code = ("import mlflow; from ensemble_platform.settings import PlatformPaths; "
            "mlflow.set_tracking_uri('sqlite:////elsewhere.db'); "
            f"print(PlatformPaths.from_env({str(tmp_path)!r}).mlflow_tracking_uri)")
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://tracking:5000"}
    env.pop(MLFLOW_URI_ENV, None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "http://tracking:5000", result.stderr[-2000:]


def test_connecting_to_a_home_does_not_hand_its_store_to_child_processes(tmp_path):
    """A child (serve, a Dagster run worker) started after the parent connected to home A must choose
    its store from its own --home, not inherit A's through MLFLOW_TRACKING_URI."""
    code = ("import os; from ensemble_platform.governance.registry_connection import RegistryConnection; "
            "from ensemble_platform.settings import PlatformPaths; "
            f"RegistryConnection(PlatformPaths.from_env({str(tmp_path / 'a')!r})); "
            "print(os.environ.get('MLFLOW_TRACKING_URI'), os.environ.get('MLFLOW_REGISTRY_URI'))")
    env = {k: v for k, v in os.environ.items() if k not in (MLFLOW_URI_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "None None", result.stderr[-2000:]


def test_a_tracking_server_setting_chooses_server_and_proxied_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv(MLFLOW_URI_ENV, "http://mlflow:5000")
    paths = PlatformPaths.from_env(tmp_path / "home")
    assert paths.mlflow_tracking_uri == "http://mlflow:5000"
    assert paths.mlflow_artifact_root == SERVED_ARTIFACTS_ROOT


def test_a_database_uri_keeps_artifacts_under_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv(MLFLOW_URI_ENV, "postgresql+psycopg2://u@db:5432/mlflow")
    paths = PlatformPaths.from_env(tmp_path / "home")
    assert paths.mlflow_tracking_uri == "postgresql+psycopg2://u@db:5432/mlflow"
    assert paths.mlflow_artifact_root == (tmp_path / "home" / "mlflow" / "artifacts").as_uri()


# --- docker/: the compose file, the instance config and the k8s manifests refer to each other ----

DOCKER = Path(__file__).resolve().parents[1] / "docker"
SERVICES = {"postgres", "mlflow", "user_code", "webserver", "daemon", "decisions"}
SECRETS = {"POSTGRES_PASSWORD": "not-a-secret", "ENSEMBLE_PLATFORM_SIGNING_KEY": "00" * 32}


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def _has_compose() -> bool:
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _has_compose(), reason="no docker compose client here: the schema checks below stand in")
def test_docker_compose_config_accepts_the_file():
    result = subprocess.run(["docker", "compose", "-f", str(DOCKER / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True, env={**os.environ, **SECRETS}, timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_services_networks_volumes_and_dependencies_refer_to_each_other():
    compose = _compose()
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert set(service.get("networks", [])) <= set(compose["networks"]), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(("/", ".")) or source in compose["volumes"], (name, volume)
        assert set(service.get("depends_on", {})) <= set(services), name
        if name != "postgres":
            assert service["image"] == "ensemble-platform", name  # one image, built once (mlflow builds it)
    assert services["mlflow"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_compose_takes_secrets_from_the_environment_only():
    text = (DOCKER / "docker-compose.yml").read_text()
    for secret in SECRETS:
        assert f"${{{secret}:?" in text, secret  # compose refuses to start without it
    platform_env = _compose()["services"]["user_code"]["environment"]
    assert platform_env["ENSEMBLE_PLATFORM_SIGNING_KEY"].startswith("${ENSEMBLE_PLATFORM_SIGNING_KEY")
    assert "${POSTGRES_PASSWORD" in platform_env["DAGSTER_POSTGRES_URL"]


def test_mlflow_server_serves_artifacts_and_allows_the_host_the_platform_uses():
    compose = _compose()
    command = compose["services"]["mlflow"]["command"]
    assert "--serve-artifacts" in command and "postgresql+psycopg2://" in command[command.index("--backend-store-uri") + 1]
    artifacts = command[command.index("--artifacts-destination") + 1]
    assert any(v.endswith(f":{artifacts}") for v in compose["services"]["mlflow"]["volumes"])
    uri = compose["services"]["daemon"]["environment"]["ENSEMBLE_PLATFORM_MLFLOW_URI"]
    host_port = uri.removeprefix("http://")
    assert host_port in command[command.index("--allowed-hosts") + 1].split(",")
    assert host_port.split(":")[0] in compose["services"]


def test_dagster_instance_launches_runs_in_containers_on_the_compose_network():
    compose = _compose()
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    assert launcher["config"]["network"] in {n["name"] for n in compose["networks"].values()}
    named_volumes = {v["name"] for v in compose["volumes"].values() if v and "name" in v}
    for volume in launcher["config"]["container_kwargs"]["volumes"]:
        assert volume.split(":")[0] in named_volumes
    platform_env = compose["services"]["user_code"]["environment"]
    assert set(launcher["config"]["env_vars"]) <= set(platform_env)
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["grpc_server"]["host"] in compose["services"]


def test_the_images_dagster_settings_are_not_on_the_shared_volume():
    """Every Dagster process reads $DAGSTER_HOME/dagster.yaml and settings can run code: the image keeps
    them outside the volume mounted at /platform (the home), where the CLI finds the same instance."""
    dockerfile = (DOCKER / "Dockerfile").read_text()
    env = dict(re.findall(r"(\w+)=(\S+)", dockerfile[dockerfile.index("ENV PATH"):dockerfile.index("COPY docker")]))
    home = env["ENSEMBLE_PLATFORM_HOME"]
    assert env["DAGSTER_HOME"] == env["ENSEMBLE_PLATFORM_DAGSTER_INSTANCE"]
    assert not env["DAGSTER_HOME"].startswith(home.rstrip("/") + "/")
    assert f"COPY docker/dagster.yaml .{env['DAGSTER_HOME'].removeprefix('/opt/ensemble_platform')}/dagster.yaml" \
        in dockerfile
    assert "dagster.yaml" not in (DOCKER / "entrypoint.sh").read_text()
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    for section in ("local_artifact_storage", "compute_logs"):
        assert instance[section]["config"]["base_dir"].startswith(f"{home}/dagster")


def test_k8s_manifests_parse_and_probe_ready_and_metrics():
    documents = [d for path in sorted((DOCKER / "k8s").glob("*.yaml"))
                 for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = {(d.get("kind"), d.get("metadata", {}).get("name")) for d in documents if "kind" in d}
    assert {("Deployment", "mlflow"), ("Deployment", "decision-service"), ("Service", "mlflow")} <= kinds
    service = next(d for d in documents if d.get("kind") == "Deployment" and d["metadata"]["name"] == "decision-service")
    pod = service["spec"]["template"]
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    values = yaml.safe_load((DOCKER / "k8s" / "dagster-values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    requests = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]
    assert requests["requests"]["cpu"]
