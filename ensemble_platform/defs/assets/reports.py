"""Governance stage: calibration, fairness and agreement reports, the release gates and the model
card of the current ensemble version, under `reports/<dataset>/<version>/` and on the version's
MLflow run."""

import json

import dagster as dg

from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.defs.owners import owners
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.ensemble.build import EnsembleBuild
from ensemble_platform.ensemble.predictions import MemberPredictions
from ensemble_platform.governance.gate_text import gate_descriptions
from ensemble_platform.governance.gates import evaluate_gates, gate_names
from ensemble_platform.governance.model_card import MemberEntry, write_card_inputs
from ensemble_platform.governance.publishing import publish_model_card, publish_report
from ensemble_platform.governance.release import Release
from ensemble_platform.governance.rendering import md_table
from ensemble_platform.governance.reports import REPORTS, HoldoutView, Report, ReportKind
from ensemble_platform.members.catalogue import key_params
from ensemble_platform.members.training import MemberFit
from ensemble_platform.policy import GovernancePolicy

GROUP = "governance"


def _publish(
    context: dg.AssetExecutionContext, platform: PlatformResource, build: EnsembleBuild, report: Report
) -> dict[str, dg.MetadataValue]:
    """Write the report beside the version's others, log it to the version's MLflow run, and
    describe it for the UI."""
    paths = publish_report(platform.registry(), build.config, report)
    context.log.info(f"{report.stem} of {build.config.dataset} {build.config.version}: {paths['html']}")
    return _report_metadata(build, paths, report.headline, report.tables)


def _report_metadata(build: EnsembleBuild, paths: dict, headline: dict, tables: dict) -> dict[str, dg.MetadataValue]:
    return {
        "ensemble_version": dg.MetadataValue.text(build.config.version),
        "html_path": dg.MetadataValue.path(str(paths["html"])),
        "markdown_path": dg.MetadataValue.path(str(paths["markdown"])),
        **({"json_path": dg.MetadataValue.path(str(paths["json"]))} if "json" in paths else {}),
        **{k: v for k, v in headline.items() if v is not None},
        **{k: dg.MetadataValue.md(v) for k, v in tables.items()},
    }


def _report_asset(kind: ReportKind):
    """One report asset: same inputs (the validated version and its holdout), its own numbers."""

    @dg.asset(name=f"{kind.stem}_report", group_name=GROUP, owners=owners(GROUP), pool="mlflow", kinds={"html"},
              description=kind.description)
    def _asset(
        context: dg.AssetExecutionContext,
        ensemble_config: EnsembleBuild,
        ensemble_validation: dict,  # reports follow validation: a version is validated before it is reviewed
        oof_predictions: MemberPredictions,
        train_holdout_split: TrainHoldoutSplit,
        platform: PlatformResource,
    ) -> dg.Output[dict]:
        report = kind.build(HoldoutView.of(ensemble_config, oof_predictions, train_holdout_split), platform.spec())
        return dg.Output(report.data, metadata=_publish(context, platform, ensemble_config, report))

    return _asset


# One asset per report of governance.reports.REPORTS (`calibration_report`, `fairness_report`, ...).
REPORT_ASSETS = [_report_asset(kind) for kind in REPORTS]


# What each gate checks, and its threshold under the default policy (shown on each check in the UI).
GATE_DESCRIPTIONS = gate_descriptions(GovernancePolicy())


def gate_check_name(gate: str) -> str:
    """Dagster check names are identifiers: `fairness.x` becomes `gate_fairness_x`."""
    return "gate_" + gate.replace(".", "_")


@dg.asset(
    group_name=GROUP, owners=owners(GROUP), pool="mlflow", kinds={"mlflow"},
    check_specs=[dg.AssetCheckSpec(gate_check_name(name), asset="release_gates", description=GATE_DESCRIPTIONS[name])
                 for name in gate_names(GovernancePolicy())],
)
def release_gates(
    context: dg.AssetExecutionContext,
    ensemble_config: EnsembleBuild,
    ensemble_validation: dict,
    calibration_report: dict,
    fairness_report: dict,
    platform: PlatformResource,
):
    """The automated release gates of the version (one asset check each); the version becomes a
    `candidate` in the registry. Failing gates block approval unless a reviewer waives them."""
    config = ensemble_config.config
    gx_path = platform.paths.data_validation_path(config.dataset, config.data_hash)
    gates = evaluate_gates(config, ensemble_validation, calibration_report, fairness_report,
                           json.loads(gx_path.read_text()) if gx_path.is_file() else None)
    path = Release(platform.paths, platform.registry()).record_gates(config, gates)
    table = md_table(["gate", "threshold", "value", "passed", "detail"],
                     [[g.name, g.threshold, g.value, g.passed, g.detail] for g in gates.gates])
    yield dg.Output(gates.model_dump(mode="json"), metadata={
        "ensemble_version": config.version, "passed": gates.passed, "failing": ", ".join(gates.failing) or "none",
        "gates": dg.MetadataValue.md(table), "gates_path": dg.MetadataValue.path(str(path)),
    })
    for gate in gates.gates:
        yield dg.AssetCheckResult(
            check_name=gate_check_name(gate.name), passed=gate.passed, severity=dg.AssetCheckSeverity.ERROR,
            description=gate.detail or None,
            metadata={"threshold": gate.threshold, "value": gate.value if gate.value is not None else "none",
                      "waivable": gate.waivable},
        )


@dg.asset(group_name=GROUP, owners=owners(GROUP), pool="mlflow", kinds={"html"},
          deps=[f"{kind.stem}_report" for kind in REPORTS])
def model_card(
    context: dg.AssetExecutionContext,
    ensemble_config: EnsembleBuild,
    ensemble_validation: dict,
    release_gates: dict,
    oof_predictions: MemberPredictions,
    platform: PlatformResource,
) -> dg.Output[str]:
    """The version's model card (Markdown and self-contained HTML), generated from the reports,
    the release gates and the decisions recorded so far."""
    config = ensemble_config.config
    write_card_inputs(
        platform.paths.version_reports_dir(config.dataset, config.version),
        [MemberEntry(m.name, m.family, m.registered_model, m.version, m.run_id,
                     _key_params(oof_predictions.fits[m.name])) for m in config.members],
        platform.spec(),
    )
    document, paths = publish_model_card(platform.registry(), config)
    context.log.info(f"model card of {config.dataset} {config.version}: {paths['html']}")
    markdown = document.markdown(figure_dir=None)
    return dg.Output(markdown, metadata={
        **_report_metadata(ensemble_config, paths, {}, {}),
        # Figures embedded as base64 PNG data URIs: Dagster's Markdown renderer allows `data:` image sources.
        "model_card": dg.MetadataValue.md(document.markdown(embed_figures=True)),
    })


def _key_params(fit: MemberFit) -> dict[str, object]:
    """A record keeps its key parameters; a fit still holding its model computes them."""
    return fit.key_params if fit.key_params is not None else key_params(fit.fitted())
