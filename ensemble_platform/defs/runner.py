"""Materialize the whole asset graph in-process: data, every member partition, ensemble,
governance reports.

Members are statically partitioned, so one Dagster run cannot materialize them together with
the unpartitioned stages; this runs the stage jobs in order against one instance, exactly as a
user would launch them from the UI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dagster as dg

from ensemble_platform.members.catalogue import MEMBER_NAMES


@dataclass
class LifecycleRun:
    run_ids: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    validation: dict | None = None
    model_card: str | None = None
    gates: dict | None = None


def materialize_lifecycle(
    defs: dg.Definitions, instance: dg.DagsterInstance, members: list[str] | None = None, echo=print,
    log_level: str = "INFO", tags: dict[str, str] | None = None,
) -> LifecycleRun:
    # Dagster's console logger defaults to DEBUG (every event); INFO keeps the progress lines.
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    run = LifecycleRun()
    steps: list[tuple[str, str, str | None]] = [("data", "data_job", None)]
    steps += [(f"member:{m}", "members_job", m) for m in (members or list(MEMBER_NAMES))]
    steps += [("ensemble", "ensemble_job", None), ("governance", "governance_job", None)]
    for i, (label, job_name, partition) in enumerate(steps, start=1):
        echo(f"[{i}/{len(steps)}] {label} ...")
        started = time.perf_counter()
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition, run_config=run_config, tags=tags
        )
        run.seconds[label] = time.perf_counter() - started
        run.run_ids[label] = result.run_id
        echo(f"[{i}/{len(steps)}] {label} done in {run.seconds[label]:.1f}s (run {result.run_id[:8]})")
        if label == "ensemble":
            run.validation = result.output_for_node("ensemble_validation")
        if label == "governance":
            run.model_card = result.output_for_node("model_card")
            run.gates = result.output_for_node("release_gates")
    return run
