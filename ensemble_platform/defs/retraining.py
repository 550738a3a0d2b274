"""The retraining job: the whole graph of one dataset (data with the accepted batches its policy
includes, every member, ensemble, governance), ending with a new candidate. Drift and the
retraining schedule request it; production is never changed by it."""

import dagster as dg

from ensemble_platform.defs.lifecycle import lifecycle_definitions
from ensemble_platform.defs.resources import PlatformResource
from ensemble_platform.defs.runner import materialize_lifecycle
from ensemble_platform.ensemble.config import ConfigStore
from ensemble_platform.settings import DATASET_TAG, TRIGGER_TAG


class RetrainConfig(dg.Config):
    reason: str = "requested by hand"


@dg.op(description="Materialize data, every member, ensemble and governance for the run's dataset")
def retrain(context: dg.OpExecutionContext, config: RetrainConfig, platform: PlatformResource) -> dict:
    # Members are partitioned, so one Dagster run cannot hold the whole graph: this op runs the
    # stage jobs in order on the same instance, each a run of its own in the UI, tagged with this one.
    spec = platform.spec()
    previous = ConfigStore(platform.paths.configs_dir(spec.name)).latest()
    spec_path = str(spec.spec_path) if spec.spec_path else None
    tags = {"ensemble_platform/parent_run": context.run_id, TRIGGER_TAG: "retraining",
            **({DATASET_TAG: spec_path} if spec_path else {})}
    context.log.info(f"retraining {spec.name}: {config.reason}")
    run = materialize_lifecycle(lifecycle_definitions(str(platform.paths.home), spec_path), context.instance,
                                echo=context.log.info, tags=tags)
    validation = run.validation or {}
    changed = previous is None or validation.get("ensemble_version") != previous.version
    if not changed:
        # E.g. drift in a batch without labels: the data to learn from is the same, so is the version.
        context.log.warning(f"{spec.name}: retraining changed nothing (same data, same members): still "
                            f"{previous.version}; labelled batches are what a retraining learns from")
    summary = {"dataset": spec.name, "reason": config.reason, "changed": changed,
               "ensemble_version": validation.get("ensemble_version"),
               "strategy": validation.get("chosen"), "train_rows": validation.get("lineage", {}).get("train_rows"),
               "gates": "passed" if run.gates and all(g["passed"] for g in run.gates["gates"]) else "failing",
               "runs": run.run_ids}
    context.add_output_metadata({k: v for k, v in summary.items() if isinstance(v, (str, int, bool))})
    return summary


@dg.job(description="Retrain a dataset end to end (run tag ensemble_platform/dataset_spec picks the dataset)")
def retraining_job():
    retrain()
