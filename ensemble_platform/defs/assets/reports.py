"""Governance stage: calibration, fairness and agreement reports and the model card of the
current ensemble version, under `reports/<dataset>/<version>/` and on the version's MLflow run."""

import json
from collections.abc import Callable

import dagster as dg

from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.defs.assets.members import member_model
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.ensemble.build import EnsembleBuild
from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.ensemble.predictions import MemberPredictions
from ensemble_platform.governance.model_card import MemberEntry, ModelCardInputs, model_card as model_card_document
from ensemble_platform.governance.rendering import write_report
from ensemble_platform.governance.reports import (
    HoldoutView, Report, build_agreement_report, build_calibration_report, build_fairness_report,
)
from ensemble_platform.members.catalogue import key_params
from ensemble_platform.members.training import MemberFit

GROUP = "governance"


def _publish(
    context: dg.AssetExecutionContext, platform: PlatformResource, build: EnsembleBuild, report: Report
) -> dict[str, dg.MetadataValue]:
    """Write the report beside the version's others and log it to the version's MLflow run."""
    config = build.config
    directory = platform.paths.version_reports_dir(config.dataset, config.version)
    paths = write_report(report.document, directory, report.stem, report.data or None)
    registry = platform.registry()
    run_id = registry.ensemble_run_id(config)
    numeric = {f"{report.stem}_{k}": v for k, v in report.headline.items() if isinstance(v, (int, float))}
    registry.log_to_run(run_id, numeric, [p for k, p in paths.items() if not k.startswith("figure:")],
                        artifact_path="reports")
    registry.log_to_run(run_id, {}, [p for k, p in paths.items() if k.startswith("figure:")],
                        artifact_path="reports/figures")
    context.log.info(f"{report.stem} of {config.dataset} {config.version}: {paths['html']}")
    return {
        "ensemble_version": dg.MetadataValue.text(config.version),
        "html_path": dg.MetadataValue.path(str(paths["html"])),
        "markdown_path": dg.MetadataValue.path(str(paths["markdown"])),
        **({"json_path": dg.MetadataValue.path(str(paths["json"]))} if "json" in paths else {}),
        **{k: v for k, v in report.headline.items() if v is not None},
        **{k: dg.MetadataValue.md(v) for k, v in report.tables.items()},
    }


def _report_asset(stem: str, build_report: Callable[[HoldoutView, DatasetSpec], Report], description: str):
    """One report asset: same inputs (the validated version and its holdout), its own numbers."""

    @dg.asset(name=f"{stem}_report", group_name=GROUP, pool="mlflow", kinds={"html"}, description=description)
    def _asset(
        context: dg.AssetExecutionContext,
        ensemble_config: EnsembleBuild,
        ensemble_validation: dict,  # reports follow validation: a version is validated before it is reviewed
        oof_predictions: MemberPredictions,
        train_holdout_split: TrainHoldoutSplit,
        platform: PlatformResource,
    ) -> dg.Output[dict]:
        report = build_report(HoldoutView.of(ensemble_config, oof_predictions, train_holdout_split), platform.spec())
        return dg.Output(report.data, metadata=_publish(context, platform, ensemble_config, report))

    return _asset


calibration_report = _report_asset(
    "calibration", build_calibration_report,
    "ECE (equal-width and equal-frequency bins), MCE, Brier decomposition and reliability diagrams of the "
    "ensemble and every member; the post-hoc calibrator chosen out of fold, holdout ECE before and after.",
)
fairness_report = _report_asset(
    "fairness", build_fairness_report,
    "Per-group rates and the parity / odds / opportunity gaps of the ensemble and each member, judged "
    "against the version's thresholds; statistically thin groups flagged, not judged.",
)
agreement_report = _report_asset(
    "agreement", build_agreement_report,
    "Vote-share and probability-spread distributions, review share, accuracy at high versus low "
    "agreement, agreement by sensitive group and categorical feature, member error correlation.",
)


@dg.asset(group_name=GROUP, pool="mlflow", kinds={"html"},
          ins={"member_model": dg.AssetIn(key=member_model.key)})
def model_card(
    context: dg.AssetExecutionContext,
    ensemble_config: EnsembleBuild,
    ensemble_validation: dict,
    calibration_report: dict,
    fairness_report: dict,
    agreement_report: dict,
    member_model: dict[str, MemberFit],
    platform: PlatformResource,
) -> dg.Output[str]:
    """The version's model card (Markdown and self-contained HTML), generated from the reports."""
    config, spec = ensemble_config.config, platform.spec()
    gx_path = platform.paths.data_validation_path(config.dataset, config.data_hash)
    inputs = ModelCardInputs(
        config=config,
        spec=spec,
        members=[MemberEntry(m.name, m.family, m.registered_model, m.version, m.run_id,
                             key_params(member_model[m.name].pipeline)) for m in config.members],
        validation=ensemble_validation,
        calibration=calibration_report,
        fairness=fairness_report,
        agreement=agreement_report,
        data_validation=json.loads(gx_path.read_text()) if gx_path.is_file() else None,
        report_files={name: f"{name}.html" for name in ("calibration", "fairness", "agreement")},
    )
    document = model_card_document(inputs)
    report = Report("model_card", {}, document, {"approval_status": "pending"})
    return dg.Output(document.markdown(figure_dir=None), metadata={
        **_publish(context, platform, ensemble_config, report),
        "model_card": dg.MetadataValue.md(document.markdown(figure_dir=None)),
    })
