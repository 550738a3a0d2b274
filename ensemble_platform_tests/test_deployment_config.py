"""Deployment by configuration: the MLflow location comes from settings, the embedded default
stays sqlite under the home; the stack's and docker's files are consistent."""

from ensemble_platform.settings import MLFLOW_URI_ENV, SERVED_ARTIFACTS_ROOT, PlatformPaths


def test_embedded_sqlite_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv(MLFLOW_URI_ENV, raising=False)
    paths = PlatformPaths.from_env(tmp_path / "home")
    assert paths.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"
    assert paths.mlflow_artifact_root == (tmp_path / "home" / "mlflow" / "artifacts").as_uri()


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
