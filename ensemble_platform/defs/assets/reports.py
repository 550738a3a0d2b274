"""Governance stage: calibration, fairness and agreement reports and the model card of the
current ensemble version, under `reports/<dataset>/<version>/` and on the version's MLflow run."""

import json
from pathlib import Path

import dagster as dg

from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.defs.assets.members import member_model
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.ensemble.build import EnsembleBuild
from ensemble_platform.ensemble.predictions import MemberPredictions, matrix
from ensemble_platform.evaluation.agreement_report import agreement_report as agreement_numbers
from ensemble_platform.evaluation.fairness import fairness_report as fairness_numbers
from ensemble_platform.evaluation.fairness import fit_sensitive_binning
from ensemble_platform.governance.model_card import MemberEntry, ModelCardInputs, model_card as model_card_document
from ensemble_platform.governance.rendering import ReportDocument, md_table, write_report
from ensemble_platform.governance.reports import (
    ENSEMBLE, ReportContext, agreement_document, calibration_data, calibration_document, fairness_document,
    segment_labels,
)
from ensemble_platform.members.catalogue import key_params
from ensemble_platform.members.training import MemberFit

GROUP = "governance"


def _holdout(build: EnsembleBuild, predictions: MemberPredictions, split: TrainHoldoutSplit):
    """Member, uncalibrated and calibrated holdout probabilities, from the validated member
    predictions (no second prediction pass)."""
    P = matrix(predictions.holdout, predictions.names)
    before, after = build.runtime.proba_from_members(P, split.X_holdout())
    return P, before, after


def _publish(
    context: dg.AssetExecutionContext, platform: PlatformResource, build: EnsembleBuild, stem: str,
    document: ReportDocument, data: dict | None, metrics: dict[str, float],
) -> dict[str, dg.MetadataValue]:
    """Write the report beside the version's others, log it to the version's MLflow run."""
    config = build.config
    directory = platform.paths.version_reports_dir(config.dataset, config.version)
    paths = write_report(document, directory, stem, data)
    registry = platform.registry()
    run_id = registry.ensemble_run_id(config)
    documents = [p for k, p in paths.items() if not k.startswith("figure:")]
    registry.log_to_run(run_id, {f"{stem}_{k}": v for k, v in metrics.items()}, documents, artifact_path="reports")
    registry.log_to_run(run_id, {}, [p for k, p in paths.items() if k.startswith("figure:")],
                        artifact_path="reports/figures")
    context.log.info(f"{stem} of {config.dataset} {config.version}: {paths['html']}")
    return {
        "ensemble_version": dg.MetadataValue.text(config.version),
        "html_path": dg.MetadataValue.path(str(paths["html"])),
        **({"json_path": dg.MetadataValue.path(str(paths["json"]))} if "json" in paths else {}),
    }


@dg.asset(group_name=GROUP, pool="mlflow", kinds={"html"})
def calibration_report(
    context: dg.AssetExecutionContext,
    ensemble_config: EnsembleBuild,
    ensemble_validation: dict,
    oof_predictions: MemberPredictions,
    train_holdout_split: TrainHoldoutSplit,
    platform: PlatformResource,
) -> dg.Output[dict]:
    """ECE (two binnings), MCE, Brier decomposition, reliability diagrams, and the post-hoc
    calibrator chosen out of fold with holdout ECE before and after."""
    split, build = train_holdout_split, ensemble_config
    P, before, after = _holdout(build, oof_predictions, split)
    report_context = ReportContext.of(build.config, len(split.y_holdout))
    members = {name: P[:, j] for j, name in enumerate(oof_predictions.names)}
    data = calibration_data(report_context, split.y_holdout, before, after, members, build.calibration,
                            build.config.governance.calibration_bins)
    head = data["headline"]
    metadata = _publish(context, platform, build, "calibration", calibration_document(data, report_context), data,
                        {k: v for k, v in head.items() if k != "calibrator"})
    return dg.Output(data, metadata={
        **metadata, "calibrator": head["calibrator"], "ece_before": head["ece_before"], "ece_after": head["ece_after"],
        "brier_after": head["brier_after"],
    })


@dg.asset(group_name=GROUP, pool="mlflow", kinds={"html"})
def fairness_report(
    context: dg.AssetExecutionContext,
    ensemble_config: EnsembleBuild,
    ensemble_validation: dict,
    oof_predictions: MemberPredictions,
    train_holdout_split: TrainHoldoutSplit,
    platform: PlatformResource,
) -> dg.Output[dict]:
    """Per-group rates and the parity / odds / opportunity gaps of the ensemble and each member,
    judged against the version's thresholds; thin groups flagged, not judged."""
    split, build, spec = train_holdout_split, ensemble_config, platform.spec()
    P, _, after = _holdout(build, oof_predictions, split)
    binnings = [fit_sensitive_binning(split.train, column, spec.sensitive_bins) for column in spec.sensitive]
    data = {
        **ReportContext.of(build.config, len(split.y_holdout)).header(),
        "binning": {b.column: b.describe() for b in binnings},
        **fairness_numbers(
            split.y_holdout,
            {ENSEMBLE: after, **{name: P[:, j] for j, name in enumerate(oof_predictions.names)}},
            segment_labels(split.holdout, binnings),
            build.config.governance.fairness,
            build.config.decision_threshold,
            calibration_bins=build.config.governance.calibration_bins,
        ),
    }
    summary = data["summary"]
    document = fairness_document(data, ReportContext.of(build.config, len(split.y_holdout)))
    metadata = _publish(context, platform, build, "fairness", document, data, {})
    ensemble_gaps = {
        f"{attribute}: {gap}": g for attribute, block in data["attributes"].items()
        for gap, g in block["gaps"][ENSEMBLE].items()
    }
    return dg.Output(data, metadata={
        **metadata,
        "ensemble_worst_status": summary["ensemble_worst_status"],
        "worst_status_all_models": summary["worst_status"],
        "ensemble_gaps": dg.MetadataValue.md(
            md_table(["attribute: gap", "value", "status"],
                     [[k, g["value"], g["status"]] for k, g in ensemble_gaps.items()], digits=3)
        ),
    })


@dg.asset(group_name=GROUP, pool="mlflow", kinds={"html"})
def agreement_report(
    context: dg.AssetExecutionContext,
    ensemble_config: EnsembleBuild,
    ensemble_validation: dict,
    oof_predictions: MemberPredictions,
    train_holdout_split: TrainHoldoutSplit,
    platform: PlatformResource,
) -> dg.Output[dict]:
    """Vote-share and probability-spread distributions, review share, accuracy at high versus
    low agreement, agreement by sensitive group and categorical feature, member error correlation."""
    split, build, spec = train_holdout_split, ensemble_config, platform.spec()
    P, _, after = _holdout(build, oof_predictions, split)
    columns = list(dict.fromkeys([*spec.sensitive, *split.schema.categorical]))
    binnings = [fit_sensitive_binning(split.train, column, spec.sensitive_bins) for column in columns]
    report_context = ReportContext.of(build.config, len(split.y_holdout))
    data = {
        **report_context.header(),
        **agreement_numbers(
            P, list(oof_predictions.names), split.y_holdout, after, build.config.agreement_threshold,
            build.config.decision_threshold, segment_labels(split.holdout, binnings),
            min_segment_rows=build.config.governance.fairness.min_group_size,
        ),
    }
    acc = data["accuracy_by_agreement"]
    metadata = _publish(context, platform, build, "agreement", agreement_document(data, report_context), data,
                        {"review_share": data["review"]["share"], "mean_vote_share": data["vote_share"]["mean"]})
    return dg.Output(data, metadata={
        **metadata,
        "review_share": data["review"]["share"],
        "accuracy_high_agreement": acc["high"]["accuracy"],
        "accuracy_low_agreement": acc["low"]["accuracy"],
        "unanimous_share": data["vote_share"]["unanimous_share"],
    })


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
    metadata = _publish(context, platform, ensemble_config, "model_card", document, None, {})
    return dg.Output(document.markdown(figure_dir=None), metadata={
        **metadata,
        "model_card": dg.MetadataValue.md(document.markdown(figure_dir=None)),
        "markdown_path": dg.MetadataValue.path(str(Path(metadata["html_path"].value).with_suffix(".md"))),
        "approval_status": "pending",
    })
