"""Scale-out benchmark: datasets x members on the PostgreSQL stack (scripts/stack.sh) with 1, 2 and
4 concurrent runs, against the same lifecycles run sequentially in-process on sqlite (`demo`).

For each concurrency level a fresh stack is started (PostgreSQL, MLflow server, Dagster daemon with
`max_concurrent_runs` = N, process launcher); the datasets' stage jobs are submitted to the run
queue stage by stage (all member partitions of all datasets at once), and timed from the first
submission to the last run's end. Registry write latency: for every member version, from its
MLflow run's start (logging the member and its model) to the version's creation in the registry
(what `Registry.register_member` spends), read back from the tracking server.

Datasets: the test slice of credit_data (600 rows, folds 3) under different names and seeds.
Results: markdown table on stdout, JSON in bench/results/stack.json.

Usage: .venv/bin/python bench/bench_stack.py [--datasets 4] [--concurrency 1 2 4] [--out PATH]
(Needs PostgreSQL or root + apt-get, like `make stack`.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ENSEMBLE_PLATFORM_AUTOMATION", "off")
os.environ.setdefault("ENSEMBLE_PLATFORM_KEY_FILE", str(Path(tempfile.mkdtemp(prefix="bench-keys-")) / "signing.key"))

from ensemble_platform.members.catalogue import MEMBER_NAMES  # noqa: E402
from ensemble_platform.settings import MLFLOW_URI_ENV  # noqa: E402
from ensemble_platform_tests.conftest import slice_table, write_spec  # noqa: E402
from ensemble_platform_tests.stack_driver import Queue, most_at_once, start_stack, stop_stack  # noqa: E402


def write_specs(root: Path, count: int) -> dict[str, Path]:
    table = slice_table()
    return {f"bench_{i}": write_spec(root / f"d{i}", table, name=f"bench_{i}", seed=i) for i in range(count)}


def registry_latencies(uri: str, datasets: list[str]) -> list[float]:
    client = MlflowClient(uri, uri)
    seconds = []
    for dataset in datasets:
        for member in MEMBER_NAMES:
            for version in client.search_model_versions(f"name = '{dataset}.{member}'"):
                run = client.get_run(version.run_id)
                seconds.append((version.creation_timestamp - run.info.start_time) / 1000)
    return seconds


def on_stack(specs: dict[str, Path], concurrency: int) -> dict:
    stack = start_stack(concurrency)
    if isinstance(stack, str):
        raise SystemExit(stack)
    try:
        queue = Queue(stack)
        started = time.time()
        queue.wait([queue.submit("data_job", spec) for spec in specs.values()], timeout=3600)
        members = [queue.submit("members_job", spec, m) for spec in specs.values() for m in MEMBER_NAMES]
        queue.wait(members, timeout=3600)
        queue.wait([queue.submit("ensemble_job", spec) for spec in specs.values()], timeout=3600)
        queue.wait([queue.submit("governance_job", spec) for spec in specs.values()], timeout=3600)
        wall = time.time() - started
        latencies = registry_latencies(stack.mlflow_uri, list(specs))
        return {"wall_seconds": wall, "member_runs_at_once": most_at_once(queue.intervals(members)),
                "registry_write_median_seconds": statistics.median(latencies),
                "registry_write_max_seconds": max(latencies), "member_versions": len(latencies)}
    finally:
        stop_stack(stack)


def sequential_sqlite(specs: dict[str, Path]) -> dict:
    from ensemble_platform import cli

    os.environ.pop(MLFLOW_URI_ENV, None)
    home = Path(tempfile.mkdtemp(prefix="bench-sqlite-"))
    started = time.time()
    for spec in specs.values():
        assert cli.main(["--home", str(home), "demo", "--dataset", str(spec)]) == 0
    wall = time.time() - started
    latencies = registry_latencies(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}", list(specs))
    return {"wall_seconds": wall, "registry_write_median_seconds": statistics.median(latencies),
            "registry_write_max_seconds": max(latencies), "member_versions": len(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "stack.json"))
    args = parser.parse_args()
    specs = write_specs(Path(tempfile.mkdtemp(prefix="bench-stack-specs-")), args.datasets)
    results = {"datasets": args.datasets, "members": len(MEMBER_NAMES), "cpus": os.cpu_count(),
               "sqlite_sequential": sequential_sqlite(specs)}
    for n in args.concurrency:
        results[f"stack_{n}"] = on_stack(specs, n)
    base = results["sqlite_sequential"]["wall_seconds"]
    print("| setup | wall (s) | vs sqlite sequential | member runs at once | registry write median / max (s) |")
    print("|---|---|---|---|---|")
    for key, row in results.items():
        if isinstance(row, dict):
            print(f"| {key} | {row['wall_seconds']:.0f} | {row['wall_seconds'] / base:.2f} | "
                  f"{row.get('member_runs_at_once', 1)} | {row['registry_write_median_seconds']:.1f} / "
                  f"{row['registry_write_max_seconds']:.1f} |")
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
