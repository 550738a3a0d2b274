"""Member stage: one partition per member family, so one member can be retrained alone."""


import dagster as dg

from ensemble_platform import blas_kernel
from ensemble_platform.data.splitting import TrainHoldoutSplit
from ensemble_platform.defs.owners import owners
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.errors import PlatformError
from ensemble_platform.members.catalogue import MEMBER_NAMES
from ensemble_platform.members.memory import available_mb, estimated_peak_mb, memory_problem
from ensemble_platform.members.training import MemberFit, fit_member

GROUP = "members"
member_partitions = dg.StaticPartitionsDefinition(list(MEMBER_NAMES))


@dg.asset(
    group_name=GROUP, owners=owners(GROUP),
    partitions_def=member_partitions,
    pool="mlflow",  # registry writes on sqlite are serialised
    kinds={"scikitlearn", "mlflow"},
)
def member_model(
    context: dg.AssetExecutionContext, train_holdout_split: TrainHoldoutSplit, platform: PlatformResource
) -> dg.Output[MemberFit]:
    """Out-of-fold probabilities on the shared folds, refit on the training split, holdout
    probabilities, and a registered MLflow model version `<dataset>.<member>`. The stored value is
    the fit's record (predictions, metrics, registry coordinates), not the fitted model."""
    name = context.partition_key
    spec = platform.spec()
    split = train_holdout_split
    problem = memory_problem(split.dataset, len(split.y_train), len(split.schema.features), available_mb())
    if problem:
        raise PlatformError(problem)  # before anything is fitted
    context.log.info(f"member {name}: {len(split.y_train):,} training rows, estimated peak "
                     f"{estimated_peak_mb(len(split.y_train), len(split.schema.features)):,.0f} MB")
    if (unpinned := blas_kernel.unpinned_warning()) is not None:
        context.log.warning(f"member {name}: {unpinned}")
    fit = fit_member(name, train_holdout_split, spec.seed, log=context.log)
    fit = platform.registry().register_member(
        fit, spec.name, train_holdout_split.lineage(), train_holdout_split.X_train(), context.run_id
    )
    context.log.info(f"member {name}: registered {fit.registered_model} version {fit.version}")
    return dg.Output(
        fit.record(),  # predictions and registry coordinates; the fitted model is the registry's artefact
        metadata={
            "registered_model": fit.registered_model,
            "version": fit.version,
            "mlflow_run_id": fit.run_id,
            "fit_seconds": round(fit.fit_seconds, 2),
            **{f"oof_{k}": round(v, 4) for k, v in fit.oof_metrics.items()},
        },
    )
