"""Ensemble stage: member matrices, candidate strategies, the versioned config, validation."""

import dagster as dg
import numpy as np

from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.defs.assets.members import member_model
from ensemble_platform.defs.owners import owners
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.ensemble.build import EnsembleBuild, build_ensemble, member_references
from ensemble_platform.ensemble.config import ConfigStore
from ensemble_platform.ensemble.predictions import (
    MemberPredictions,
    collect_member_predictions,
    matrix,
    member_costs,
    write_parquet,
)
from ensemble_platform.ensemble.selection import CandidateSet, select_strategy
from ensemble_platform.ensemble.strategies import strategy_catalogue
from ensemble_platform.ensemble.validation import VALIDATION_FILE, sampled_parity_problems, validation_report
from ensemble_platform.errors import LineageError, PlatformError
from ensemble_platform.evaluation.metrics import binary_metrics
from ensemble_platform.files import write_json
from ensemble_platform.governance.registry import member_model_name
from ensemble_platform.governance.release_bundle import registered_runtime
from ensemble_platform.governance.rendering import metrics_table
from ensemble_platform.members.adoption import adopt_member
from ensemble_platform.members.catalogue import MEMBER_NAMES
from ensemble_platform.members.training import MemberFit
from ensemble_platform.policy import SelectionPolicy
from ensemble_platform.serving.parity import ParitySet

GROUP = "ensemble"


class MemberVersions(dg.Config):
    """Registered member versions to use instead of the last trained ones (member name ->
    registry version); the member-version sensor sets this to re-validate with a new version."""

    member_versions: dict[str, str] = {}


@dg.asset(group_name=GROUP, owners=owners(GROUP), ins={"member_model": dg.AssetIn(key=member_model.key)},
          kinds={"parquet"})
def oof_predictions(
    context: dg.AssetExecutionContext,
    config: MemberVersions,
    member_model: dict[str, MemberFit],
    train_holdout_split: TrainHoldoutSplit,
    platform: PlatformResource,
) -> dg.Output[MemberPredictions]:
    """Out-of-fold (training rows) and holdout probability matrices of all members, as Parquet."""
    fits = dict(member_model)
    for name, version in sorted(config.member_versions.items()):
        if name not in MEMBER_NAMES:
            raise LineageError(f"member_versions names {name!r}, which is not a member; members: {list(MEMBER_NAMES)}")
        if name in fits and fits[name].version == str(version):
            continue
        model, entry = platform.registry().load_member(member_model_name(train_holdout_split.dataset, name), version)
        fits[name] = adopt_member(name, model, entry.tags, entry.name, str(version), entry.run_id,
                                  train_holdout_split, log=context.log)
    predictions = collect_member_predictions(fits, train_holdout_split, list(MEMBER_NAMES))
    predictions.fits = {name: fit.record() for name, fit in predictions.fits.items()}  # no fitted models
    paths = write_parquet(predictions, platform.paths.predictions_dir(train_holdout_split.dataset))
    return dg.Output(
        predictions,
        metadata={
            "members": dg.MetadataValue.md(
                "| member | registered model | version |\n|---|---|---|\n"
                + "\n".join(f"| {m.name} | {m.registered_model} | {m.version} |" for m in predictions.members)
            ),
            **{f"{k}_path": dg.MetadataValue.path(str(p)) for k, p in paths.items()},
        },
    )


@dg.asset(group_name=GROUP, owners=owners(GROUP), kinds={"scikitlearn"})
def ensemble_candidates(
    context: dg.AssetExecutionContext,
    oof_predictions: MemberPredictions,
    train_holdout_split: TrainHoldoutSplit,
    platform: PlatformResource,
) -> dg.Output[CandidateSet]:
    """Every strategy fitted on out-of-fold predictions only and chosen on out-of-fold evidence."""
    split, spec = train_holdout_split, platform.spec()
    costs = member_costs(oof_predictions, split.X_train())
    tolerance = spec.selection.cost_tolerance if spec.selection is not None else SelectionPolicy().cost_tolerance
    candidates = select_strategy(
        strategy_catalogue(split.schema, spec.seed, costs=tuple(float(c) for c in costs), tolerance=tolerance),
        matrix(oof_predictions.oof, oof_predictions.names),
        split.y_train,
        split.fold_of_row,
        X=split.X_train(),
        log=context.log,
        costs=costs,
        selection=spec.selection,
    )
    return dg.Output(
        candidates,
        metadata={
            "chosen": candidates.chosen,
            "best_out_of_fold": candidates.best,
            "model_selection": candidates.model_selection,
            "criterion": candidates.criterion,
            "out_of_fold_evidence": dg.MetadataValue.md(
                metrics_table(candidates.evidence_table(), highlight=candidates.chosen)
            ),
        },
    )


@dg.asset(group_name=GROUP, owners=owners(GROUP), pool="mlflow", kinds={"mlflow"})
def ensemble_config(
    context: dg.AssetExecutionContext,
    ensemble_candidates: CandidateSet,
    oof_predictions: MemberPredictions,
    train_holdout_split: TrainHoldoutSplit,
    platform: PlatformResource,
) -> dg.Output[EnsembleBuild]:
    """The chosen ensemble as a versioned config (semver) registered as `<dataset>.ensemble`."""
    split = train_holdout_split
    store = ConfigStore(platform.paths.configs_dir(split.dataset))
    previous = store.latest()
    # The members stay in the registry: registering copies their artefacts, and the output signature
    # is scored from their stored (bit-identical) holdout probabilities. Only the parity check in
    # `ensemble_validation` loads them, through the registered runtime.
    build = build_ensemble(ensemble_candidates, oof_predictions, None, split, previous,
                           governance=platform.spec().governance, load_models=member_references)
    served = [m.name for m in build.config.members]
    config = platform.registry().register_ensemble(
        build.config, build.runtime, split.holdout, context.run_id,
        member_proba=matrix(oof_predictions.holdout, served),
    )
    path = store.save(config)
    build.config = config
    build = build.document()  # the stored value: config, combiner, calibrator; members stay in the registry
    bumped = "unchanged" if previous and previous.version == config.version else f"from {previous.version if previous else 'none'}"
    context.log.info(f"ensemble config {config.version} ({bumped}): {config.strategy}")
    return dg.Output(
        build,
        metadata={
            "version": config.version,
            "previous_version": previous.version if previous else "none",
            "strategy": config.strategy,
            "served_members": ", ".join(m.name for m in config.members),
            "pruned_members": ", ".join(f"{m.name} ({m.reason})" for m in config.pruned) or "none",
            "config_hash": config.config_hash,
            "registered_model": config.registered_model or "",
            "registered_version": config.registered_version or "",
            "config_path": dg.MetadataValue.path(str(path)),
            "config": dg.MetadataValue.json(config.model_dump(mode="json")),
        },
    )


@dg.asset(group_name=GROUP, owners=owners(GROUP), pool="mlflow", kinds={"mlflow"})
def ensemble_validation(
    context: dg.AssetExecutionContext,
    ensemble_config: EnsembleBuild,
    ensemble_candidates: CandidateSet,
    oof_predictions: MemberPredictions,
    train_holdout_split: TrainHoldoutSplit,
    platform: PlatformResource,
) -> dg.Output[dict]:
    """Holdout metrics of every member and strategy, agreement and lift; validation.json."""
    split, build = train_holdout_split, ensemble_config
    served = [m.name for m in build.config.members]
    # From the members' stored holdout probabilities (bit-identical to predicting again), then a
    # seeded sample of rows through the registered runtime, members included, must match exactly.
    scored = build.runtime.score(split.holdout, member_proba=matrix(oof_predictions.holdout, served))
    _check_sampled_parity(context, platform, build, split, scored)
    member_holdout = {n: oof_predictions.holdout[n].to_numpy() for n in oof_predictions.names}
    uncalibrated, _ = build.runtime.proba_from_members(
        matrix(oof_predictions.holdout, served), split.X_holdout()
    )
    report = validation_report(
        build.config, ensemble_candidates, member_holdout, scored["probability"].to_numpy(), uncalibrated,
        split.y_holdout, split.X_holdout(), split.lineage(),
        members_oof={n: binary_metrics(split.y_train, oof_predictions.oof[n].to_numpy()) for n in oof_predictions.names},
        ensemble_oof=binary_metrics(split.y_train, build.calibration.cv_proba[build.calibration.chosen]),
    ).document()
    path = write_json(report, platform.paths.version_reports_dir(split.dataset, build.config.version) / VALIDATION_FILE)
    ParitySet(split.holdout[split.schema.features], scored).write(
        platform.paths.parity_dir(split.dataset, build.config.version))
    registry = platform.registry()
    registry.log_to_run(
        registry.ensemble_run_id(build.config),
        {f"holdout_{k}": v for k, v in report["ensemble"].items()}
        | {f"lift_{k}": v for k, v in report["lift_over_best_member"].items()},
        [path],
        artifact_path="reports",
    )
    rows = {"ensemble": report["ensemble"], **{f"member: {k}": v for k, v in report["members"].items()},
            **{f"strategy: {k}": v for k, v in report["strategies"].items()}}
    lift = report["lift_over_best_member"]
    return dg.Output(
        report,
        metadata={
            "ensemble_version": build.config.version,
            "chosen": build.config.strategy,
            "holdout_roc_auc": report["ensemble"]["roc_auc"],
            "holdout_log_loss": report["ensemble"]["log_loss"],
            "auc_lift_over_best_member": float(np.round(lift["roc_auc"], 5)),
            "review_share": report["agreement"]["review_share"],
            "holdout_metrics": dg.MetadataValue.md(metrics_table(rows, highlight="ensemble")),
            "report_path": dg.MetadataValue.path(str(path)),
        },
    )


def _check_sampled_parity(context, platform: PlatformResource, build: EnsembleBuild, split: TrainHoldoutSplit,
                          scored) -> None:
    """Scores derived from stored predictions must be what the registered runtime gives."""
    config = build.config
    if not config.registered_version:
        raise PlatformError(f"ensemble config {config.version} of {config.dataset} is not registered")
    runtime = registered_runtime(platform.registry(), config.dataset, config.registered_version, config.config_hash)
    problems = sampled_parity_problems(runtime.score, split.holdout, scored, platform.spec().seed)
    if problems:
        raise PlatformError(f"validation of {config.dataset} {config.version}: the scores derived from the stored "
                            "member predictions differ from the registered runtime's: " + "; ".join(problems))
    context.log.info(f"sampled parity: the registered runtime reproduces the validated scores of "
                     f"{min(len(split.holdout), 256)} holdout rows exactly")
