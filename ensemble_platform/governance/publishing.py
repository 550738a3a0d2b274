"""Publishing a report of an ensemble version: its files beside the version's other reports and
the same files (and its numeric headline) on the version's MLflow run."""

from __future__ import annotations

from pathlib import Path

from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.governance.approvals import Approvals
from ensemble_platform.governance.model_card import load_card_inputs, model_card
from ensemble_platform.governance.registry import Registry
from ensemble_platform.governance.rendering import ReportDocument, write_report
from ensemble_platform.governance.reports import Report


def publish_report(registry: Registry, config: EnsembleConfig, report: Report) -> dict[str, Path]:
    directory = registry.paths.version_reports_dir(config.dataset, config.version)
    paths = write_report(report.document, directory, report.stem, report.data or None)
    run_id = registry.ensemble_run_id(config)
    numeric = {f"{report.stem}_{k}": v for k, v in report.headline.items() if isinstance(v, (int, float))}
    registry.log_to_run(run_id, numeric, [p for k, p in paths.items() if not k.startswith("figure:")],
                        artifact_path="reports")
    registry.log_to_run(run_id, {}, [p for k, p in paths.items() if k.startswith("figure:")],
                        artifact_path="reports/figures")
    return paths


def publish_model_card(registry: Registry, config: EnsembleConfig) -> tuple[ReportDocument, dict[str, Path]]:
    """(Re)generate the version's model card from its stored documents, its gates and every
    decision recorded for its config, and publish it."""
    approvals = [r.model_dump(mode="json") for r in Approvals(registry.paths, config.dataset).records(config.version)
                 if r.config_hash == config.config_hash]
    document = model_card(load_card_inputs(registry.paths, config, approvals))
    status = approvals[-1]["decision"] if approvals else "pending"
    return document, publish_report(registry, config, Report("model_card", {}, document, {"approval_status": status}))
