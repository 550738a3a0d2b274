"""Governance reports and the model card from a real run (Dagster + MLflow on sqlite, temp home)."""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess

import dagster as dg
import numpy as np
import pytest
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from ensemble_platform.definitions import build_definitions
from ensemble_platform.ensemble.config import ConfigStore
from ensemble_platform.governance.model_card import NOT_PROVIDED, SECTIONS

DATASET = "credit_slice"
VERSION = "1.0.0"
REPORTS = ("calibration", "fairness", "agreement")


@pytest.fixture(scope="module")
def reports(lifecycle):
    paths, _ = lifecycle
    return paths.version_reports_dir(DATASET, VERSION)


def _load(reports, name):
    return json.loads((reports / f"{name}.json").read_text())


def test_every_report_is_written_for_the_version(reports):
    for name in REPORTS:
        for suffix in ("json", "html", "md"):
            assert (reports / f"{name}.{suffix}").is_file(), f"{name}.{suffix}"
        assert _load(reports, name)["ensemble_version"] == VERSION
    assert (reports / "validation.json").is_file()
    assert (reports / "model_card.html").is_file() and (reports / "model_card.md").is_file()
    assert {p.name for p in (reports / "figures").iterdir()} >= {
        "reliability.png", "vote_share.png", "error_correlation.png", "fairness_gaps_age.png",
        "fairness_gaps_marital.png"}
    assert not list(reports.rglob("*.tmp"))


def test_calibration_report_agrees_with_config_and_validation(lifecycle, reports):
    paths, _ = lifecycle
    config = ConfigStore(paths.configs_dir(DATASET)).load(VERSION)
    calibration, validation = _load(reports, "calibration"), _load(reports, "validation")
    chosen = calibration["calibrator"]["method"]
    assert chosen == config.calibration["method"] == validation["calibration"]
    evidence = calibration["calibrator"]["out_of_fold_evidence"]
    assert set(evidence) == {"none", "sigmoid", "isotonic"}
    assert chosen == min(evidence, key=lambda m: evidence[m]["log_loss"])
    metrics = calibration["metrics"]
    assert metrics["ensemble"]["brier"] == pytest.approx(validation["ensemble"]["brier"])
    assert metrics["ensemble (before calibration)"]["brier"] == pytest.approx(
        validation["ensemble_before_calibration"]["brier"])
    assert metrics["ensemble"]["ece_uniform"] == pytest.approx(validation["ensemble"]["ece"])
    assert set(metrics) >= {"ensemble", "ensemble (before calibration)", "xgboost", "logistic_regression"}
    rows = calibration["reliability"]["ensemble"]
    assert sum(r["count"] for r in rows) == calibration["holdout_rows"]
    # The HTML shows the JSON's numbers.
    html = (reports / "calibration.html").read_text()
    assert f"{calibration['headline']['ece_after']:.4f}" in html


def test_fairness_report_judges_every_sensitive_attribute_for_ensemble_and_members(reports):
    fairness = _load(reports, "fairness")
    assert set(fairness["attributes"]) == {"Age", "Marital"}
    age = fairness["attributes"]["Age"]
    assert set(age["gaps"]) == {"ensemble", "logistic_regression", "random_forest", "extra_trees",
                                "hist_gradient_boosting", "xgboost", "k_nearest_neighbours"}
    assert len(age["groups"]["ensemble"]) >= 4  # 4 quantile bins of the training rows (+ missing if any)
    assert sum(g["count"] for g in age["groups"]["ensemble"]) == fairness["holdout_rows"]
    for gap in age["gaps"]["ensemble"].values():
        assert gap["status"] in {"pass", "warn", "fail", "thin"}
    html = (reports / "fairness.html").read_text()
    value = age["gaps"]["ensemble"]["demographic_parity_difference"]["value"]
    assert value is None or f"{value:.3f}" in html


def test_agreement_report_accounts_for_every_holdout_row(reports):
    agreement = _load(reports, "agreement")
    assert sum(level["rows"] for level in agreement["vote_share"]["levels"]) == agreement["rows"]
    acc = agreement["accuracy_by_agreement"]
    assert acc["high"]["rows"] + acc["low"]["rows"] == agreement["rows"]
    assert acc["low"]["rows"] == agreement["review"]["rows"]
    assert set(agreement["segments"]) >= {"Age", "Marital", "Home", "Job"}  # sensitive + categorical
    n = len(agreement["members"])
    corr = np.array(agreement["error_correlation"], dtype=float)
    assert corr.shape == (n, n) and np.allclose(np.diag(corr), 1.0) and np.allclose(corr, corr.T)


def test_model_card_has_every_section_offline_and_pending_approval(lifecycle, reports):
    paths, _ = lifecycle
    config = ConfigStore(paths.configs_dir(DATASET)).load(VERSION)
    markdown, html = (reports / "model_card.md").read_text(), (reports / "model_card.html").read_text()
    for section in SECTIONS:
        assert f"## {section}" in markdown and f"<h2>{section}</h2>" in html, section
    assert not re.search(r"https?://", html)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]+)"', html))
    assert config.config_hash in markdown and "**Pending.**" in markdown
    assert NOT_PROVIDED in markdown  # the slice's spec gives no intended use or limitations
    for member in config.members:
        assert f"| {member.name} | {member.family} | {member.registered_model} | {member.version} |" in markdown
        assert member.run_id in markdown
    assert "Great Expectations | passed" in markdown


def test_reports_are_logged_to_the_ensemble_versions_mlflow_run(lifecycle):
    paths, _ = lifecycle
    client = MlflowClient(paths.mlflow_tracking_uri, paths.mlflow_tracking_uri)
    version = client.get_model_version(f"{DATASET}.ensemble", "1")
    logged = {a.path for a in client.list_artifacts(version.run_id, "reports")}
    for name in REPORTS:
        assert {f"reports/{name}.json", f"reports/{name}.html"} <= logged
    assert {"reports/model_card.md", "reports/model_card.html", "reports/validation.json"} <= logged
    assert "calibration_ece_after" in client.get_run(version.run_id).data.metrics


def test_model_card_is_markdown_metadata_in_dagster(lifecycle):
    paths, _ = lifecycle
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    event = instance.get_latest_materialization_event(dg.AssetKey("model_card"))
    metadata = event.asset_materialization.metadata
    assert isinstance(metadata["model_card"], dg.MarkdownMetadataValue)
    assert "## Fairness" in metadata["model_card"].value
    # Its figures are embedded (data URIs: Dagster's Markdown renderer allows `data:` image sources).
    figures = re.findall(r"!\[[^\]]*\]\((data:image/png;base64,[^)]+)\)", metadata["model_card"].value)
    assert len(figures) >= 2 and all(base64.b64decode(f.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    headline = instance.get_latest_materialization_event(dg.AssetKey("calibration_report")).asset_materialization
    assert {"ece_before", "ece_after", "calibrator"} <= set(headline.metadata)


def _digests(directory):
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_reports_are_deterministic(lifecycle, reports):
    paths, spec_path = lifecycle
    before = _digests(reports)
    defs = build_definitions(str(paths.home), str(spec_path))
    instance = dg.DagsterInstance.from_config(str(paths.dagster_home))
    assert defs.resolve_job_def("governance_job").execute_in_process(instance=instance).success
    assert _digests(reports) == before


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_model_card_renders_in_headless_chromium(reports, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("ENSEMBLE_PLATFORM_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium found but ENSEMBLE_PLATFORM_REQUIRE_BROWSER=1 (CI installs it)")
        pytest.skip("no Chromium on this machine and it could not be installed (make browser)")
    # Flags: no network of any kind, a fresh profile; the card must render from the file alone.
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    url = (reports / "model_card.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in dom, section
    shot = tmp_path / "model_card.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2400", url],
                   capture_output=True, timeout=120, check=True)
    pixels = imread(shot)
    assert pixels.shape[0] == 2400 and pixels.shape[1] == 1280
    # A page that rendered text, tables and figures is far from blank: many distinct colours.
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1])[:, :3], axis=0)) > 50
