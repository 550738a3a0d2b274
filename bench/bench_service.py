"""Decision-service benchmark, over real HTTP (uvicorn on 127.0.0.1, server in this process, one client).

  batch      POST /v1/decisions with 1,000 rows (log on: 1,000 durable records per request) vs the members'
             own `predict_proba` on the same 1,000 rows, summed over members (what scoring alone costs,
             one member after the other). Ratio = members' summed seconds / service seconds; target >= 0.9.
  single     single-row POST /v1/decisions, p50/p99 latency with the decision log on (keyed SQLite chain,
             group commit, fsync + signed checkpoint per commit) vs off (`DisabledDecisionLog`), sequential
             requests, alternating blocks. Target: the log adds <= 1 ms at p50.

The bundle: `--home H --bundle B --manifest-sha256 S` of an existing production home, or (default) a
temporary home built like the tests' (`home_in_production` on a 600-row slice of credit_data, ~20 s).
Results: markdown on stdout, JSON in bench/results/service.json.

Usage: .venv/bin/python bench/bench_service.py [--requests N (default 400)] [--repeats N (default 5)]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
DEFAULT_OUT = BENCH_DIR / "results" / "service.json"
BATCH_ROWS = 1000
TARGET_RATIO = 0.9
TARGET_LOG_P50_MS = 1.0


def build_home(root: Path) -> tuple[Path, Path, str]:
    from ensemble_platform_tests.conftest import home_in_production, slice_table

    table = slice_table()
    paths, _, _, result = home_in_production(root, table)
    return paths.home, Path(result.bundle.path), result.bundle.manifest_sha256


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bench(home: Path, bundle: Path, manifest_sha256: str, requests: int, repeats: int) -> dict:
    import httpx
    import pandas as pd

    from ensemble_platform.members.training import positive_proba
    from ensemble_platform.service import (
        DecisionLog,
        DisabledDecisionLog,
        ServerThread,
        create_app,
        load_verified_bundle,
    )
    from ensemble_platform.serving.decider import Decider
    from ensemble_platform.settings import PlatformPaths

    paths = PlatformPaths.from_env(home)
    manifest, runtime, sha = load_verified_bundle(bundle, manifest_sha256)
    holdout = pd.read_parquet(paths.parity_dir(manifest["dataset"], manifest["ensemble_version"]) / "holdout_rows.parquet")
    frame = pd.concat([holdout] * (BATCH_ROWS // len(holdout) + 1), ignore_index=True).iloc[:BATCH_ROWS]
    rows = json.loads(frame.to_json(orient="records"))
    X = runtime.model_input(frame)

    def members_seconds() -> float:
        started = time.perf_counter()
        for model in runtime.members.values():
            positive_proba(model, X)
        return time.perf_counter() - started

    decider = Decider(runtime, manifest, member_timeout_s=30.0)
    log = DecisionLog(paths.home / "decisions" / f"bench-{os.getpid()}.sqlite", paths=paths, name=f"bench-{os.getpid()}")
    servers = {"on": ServerThread(create_app(decider, log, None, auth=False, manifest_sha256=sha)).start(),
               "off": ServerThread(create_app(decider, DisabledDecisionLog(), None, auth=False,
                                              manifest_sha256=sha)).start()}
    try:
        with httpx.Client(timeout=120) as client:
            def post(mode: str, body: dict) -> float:
                started = time.perf_counter()
                response = client.post(f"{servers[mode].url}/v1/decisions", json=body)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                return elapsed

            for _ in range(2):  # warm up both paths
                members_seconds()
                post("on", {"rows": rows})
                post("off", {"rows": rows[:1]})
            member_runs, service_runs = [], []
            for _ in range(repeats):
                member_runs.append(members_seconds())
                service_runs.append(post("on", {"rows": rows}))
            latencies: dict[str, list[float]] = {"on": [], "off": []}
            block = 25
            for start in range(0, requests, block):
                order = ("on", "off") if (start // block) % 2 == 0 else ("off", "on")
                for mode in order:
                    for i in range(start, min(start + block, requests)):
                        latencies[mode].append(post(mode, {"rows": [rows[i % len(rows)]]}) * 1000)
        verified = log.verify()
    finally:
        for server in servers.values():
            server.stop()
        decider.close()
        log.close()
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(str(log.path) + suffix).unlink(missing_ok=True)
    members_s, service_s = statistics.median(member_runs), statistics.median(service_runs)
    single = {mode: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "mean_ms": statistics.fmean(v),
                     "requests": len(v)} for mode, v in latencies.items()}
    log_cost = single["on"]["p50_ms"] - single["off"]["p50_ms"]
    return {
        "benchmark": "service",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "bundle": {"dataset": manifest["dataset"], "ensemble_version": manifest["ensemble_version"],
                   "members": list(runtime.members), "strategy": manifest.get("strategy")},
        "batch": {"rows": BATCH_ROWS, "repeats": repeats, "members_summed_s": members_s, "service_s": service_s,
                  "members_rows_per_s": BATCH_ROWS / members_s, "service_rows_per_s": BATCH_ROWS / service_s,
                  "ratio": members_s / service_s, "member_runs_s": member_runs, "service_runs_s": service_runs},
        "single": single,
        "log_verified_entries": verified,
        "targets": {"batch_ratio": TARGET_RATIO, "batch_met": members_s / service_s >= TARGET_RATIO,
                    "log_p50_ms": TARGET_LOG_P50_MS, "log_p50_added_ms": log_cost,
                    "log_met": log_cost <= TARGET_LOG_P50_MS},
    }


def markdown(doc: dict) -> str:
    batch, single, targets = doc["batch"], doc["single"], doc["targets"]
    lines = [
        f"Decision service, {doc['bundle']['dataset']} {doc['bundle']['ensemble_version']} "
        f"({len(doc['bundle']['members'])} members, {doc['bundle']['strategy']}), {doc['machine']['cpus']} CPUs",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| members' summed predict_proba, {batch['rows']} rows | {batch['members_summed_s'] * 1000:.0f} ms "
        f"({batch['members_rows_per_s']:,.0f} rows/s) | |",
        f"| service POST /v1/decisions, {batch['rows']} rows, log on | {batch['service_s'] * 1000:.0f} ms "
        f"({batch['service_rows_per_s']:,.0f} rows/s) | |",
        f"| batch throughput ratio (service / members) | {batch['ratio']:.2f}x | >= {targets['batch_ratio']}x: "
        f"{'met' if targets['batch_met'] else 'NOT met'} |",
        f"| single row p50 / p99, log on | {single['on']['p50_ms']:.2f} / {single['on']['p99_ms']:.2f} ms | |",
        f"| single row p50 / p99, log off | {single['off']['p50_ms']:.2f} / {single['off']['p99_ms']:.2f} ms | |",
        f"| log cost at p50 | {targets['log_p50_added_ms']:+.2f} ms | <= {targets['log_p50_ms']} ms: "
        f"{'met' if targets['log_met'] else 'NOT met'} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home")
    parser.add_argument("--bundle")
    parser.add_argument("--manifest-sha256")
    parser.add_argument("--requests", type=int, default=400, help="single-row requests per mode")
    parser.add_argument("--repeats", type=int, default=5, help="batch measurements")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    os.environ.setdefault("ENSEMBLE_PLATFORM_AUTOMATION", "off")
    with tempfile.TemporaryDirectory(prefix="bench_service_") as tmp:
        if args.bundle:
            home, bundle, sha = Path(args.home), Path(args.bundle), args.manifest_sha256
        else:
            os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # key and checkpoints of the temp home
            home, bundle, sha = build_home(Path(tmp) / "root")
        doc = bench(home, bundle, sha, args.requests, args.repeats)
    from ensemble_platform.files import write_json

    write_json(doc, Path(args.out))
    print(markdown(doc))
    print(f"\nresults: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
