"""Decision-log benchmark: durable appends per second into the keyed SQLite chain store, or (`--store
postgres`) into `PostgresChainStore` on a PostgreSQL started alone for the run (scripts/stack.sh postgres,
loopback, default settings: fsync on, synchronous_commit on).

Variants (each in a fresh process, on a fresh store in a temporary directory, `--repeats` times,
alternating order):
  single      one transaction + checkpoint per record: `store.append_many([record])` in a loop
  group-1     `GroupCommitWriter`, 1 closed-loop submitter (submit, wait for the ack, repeat)
  group-4     the same with 4 concurrent submitter threads
  group-16    the same with 16 concurrent submitter threads
Every append is durable when acknowledged: WAL with synchronous=FULL (fsync per commit) and a signed
checkpoint written with temp file + fsync + rename + directory fsync after every commit.

A record (~600 bytes of JSON) looks like a decision: ids, dataset, ensemble version, strategy,
feature hash, six member outputs, score, threshold, decision. After timing, each child verifies the
whole chain and its checkpoint and checks the count.

Reported per variant (median run by throughput): appends/s, p50/p99 submit->ack latency (ms), mean
batch size, peak RSS of the child (`resource.getrusage(RUSAGE_SELF).ru_maxrss`; Linux carries the
parent's high-water mark across fork+exec, and the parent here is a small stdlib-only process).
Results: markdown on stdout, JSON in bench/results/decision_log.json.

Usage: .venv/bin/python bench/bench_decision_log.py [--repeats N (default 3)] [--records N] [--out PATH]
       [--store sqlite|postgres] (postgres results go to bench/results/decision_log_postgres.json by default)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results" / "decision_log.json"
DEFAULT_OUT_POSTGRES = BENCH_DIR / "results" / "decision_log_postgres.json"
VARIANTS = {"single": 0, "group-1": 1, "group-4": 4, "group-16": 16}
DEFAULT_RECORDS = {"single": 2_000, "group": 12_000}
WARMUP = 50
TARGET_APPENDS_PER_S = 5_000
MEMBERS = ("logistic_spline", "hist_gradient_boosting", "xgboost", "random_forest", "extra_trees", "knn")


def decision_record(i: int, prefix: str) -> dict:
    return {
        "id": f"{prefix}-{i:08d}",
        "kind": "decision",
        "created_at": _dt.datetime(2026, 11, 24, tzinfo=_dt.UTC).isoformat(),
        "dataset": "credit_data",
        "ensemble_version": "1.2.0",
        "strategy": "weighted_average",
        "request_id": f"req-{prefix}-{i:012d}",
        "features_sha256": f"{i:064x}",
        "members": {name: {"version": str(3 + k), "p_bad": round(0.1 + 0.01 * k + (i % 97) / 1000, 6)}
                    for k, name in enumerate(MEMBERS)},
        "score": round(0.2 + (i % 89) / 1000, 6),
        "threshold": 0.5,
        "decision": "approve",
    }


def _open_store(workdir: Path, url: str | None = None):
    from ensemble_platform.integrity import CheckpointStore, PostgresChainStore, SigningKey, SqliteChainStore
    from ensemble_platform.settings import PlatformPaths

    key = SigningKey.generate("bench")
    paths = PlatformPaths((workdir / "home").resolve())
    checkpoints = CheckpointStore(key, workdir / "checkpoints", paths)
    if url:  # a fresh table per run: the store name is unique
        return PostgresChainStore(url, f"bench/{workdir.name}", key, checkpoints, paths=paths)
    return SqliteChainStore(paths.home / "decisions" / "credit_data.db", "credit_data/decisions", key, checkpoints)


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _run_single(store, n: int) -> tuple[float, list[float], int]:
    for i in range(WARMUP):
        store.append_many([decision_record(i, "warm")])
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        record = decision_record(i, "s")
        t0 = time.perf_counter()
        store.append_many([record])
        latencies.append(time.perf_counter() - t0)
    return time.perf_counter() - started, latencies, n


def _run_group(store, n: int, submitters: int) -> tuple[float, list[float], int]:
    from ensemble_platform.integrity import GroupCommitWriter

    writer = GroupCommitWriter(store)
    for future in writer.submit_many([decision_record(i, "warm") for i in range(WARMUP)]):
        future.result()
    per_thread = n // submitters
    latencies: list[list[float]] = [[] for _ in range(submitters)]
    start = threading.Barrier(submitters + 1)

    def submitter(t: int) -> None:
        records = [decision_record(i, f"t{t}") for i in range(per_thread)]
        start.wait()
        for record in records:
            t0 = time.perf_counter()
            writer.submit(record).result()
            latencies[t].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(submitters)]
    for thread in threads:
        thread.start()
    batches_before = writer.batches
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    batches = writer.batches - batches_before
    writer.close()
    return wall, [x for chunk in latencies for x in chunk], batches


def run_child(args: argparse.Namespace) -> int:
    submitters = VARIANTS[args.variant]
    n = args.records or DEFAULT_RECORDS["group" if submitters else "single"]
    with tempfile.TemporaryDirectory(prefix="bench_decision_log_", dir=args.workdir) as tmp:
        store = _open_store(Path(tmp), args.url)
        if submitters:
            wall, latencies, batches = _run_group(store, n, submitters)
        else:
            wall, latencies, batches = _run_single(store, n)
        appended = len(latencies)
        verified = store.verify()
        record_bytes = len(json.dumps(decision_record(0, "t0"), separators=(",", ":")))
        entry_bytes = len(json.dumps(store.head(), separators=(",", ":")))
        store.close()
    latencies_ms = sorted(x * 1000 for x in latencies)
    result = {
        "variant": args.variant,
        "store": "postgres" if args.url else "sqlite",
        "submitters": submitters,
        "appends": appended,
        "wall_seconds": round(wall, 4),
        "appends_per_second": round(appended / wall, 1),
        "latency_ms_p50": round(statistics.median(latencies_ms), 3),
        "latency_ms_p99": round(latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))], 3),
        "latency_ms_max": round(latencies_ms[-1], 3),
        "batches": batches,
        "mean_batch": round(appended / batches, 2) if batches else None,
        "verified_entries": verified,
        "verified_ok": verified == appended + WARMUP,
        "record_bytes": record_bytes,
        "entry_bytes": entry_bytes,
        "peak_rss_mb_getrusage": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mb_vmhwm": _vm_hwm_mb(),
    }
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


def spawn(variant: str, workdir: Path, records: int | None, url: str | None = None) -> dict:
    result_path = workdir / f"{variant}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--result", str(result_path),
           "--workdir", str(workdir)]
    if records:
        cmd += ["--records", str(records)]
    if url:
        cmd += ["--url", url]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"  running {variant} ...", file=sys.stderr, flush=True)
    completed = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"variant {variant} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(result_path.read_text())


def _median_run(runs: list[dict]) -> dict:
    ordered = sorted(runs, key=lambda r: r["appends_per_second"])
    return ordered[len(ordered) // 2]


def markdown(doc: dict) -> str:
    lines = [
        "| variant | submitters | appends/s (median) | min–max appends/s | p50 ack (ms) | p99 ack (ms) "
        "| mean batch | peak RSS (MB) | chain + checkpoint verify |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, summary in doc["variants"].items():
        best = summary["median_run"]
        lines.append(
            f"| {name} | {best['submitters'] or '1 (no writer thread)'} | {best['appends_per_second']:,.0f} "
            f"| {summary['min_appends_per_second']:,.0f}–{summary['max_appends_per_second']:,.0f} "
            f"| {best['latency_ms_p50']:.2f} | {best['latency_ms_p99']:.2f} | {best['mean_batch'] or 1:.1f} "
            f"| {summary['peak_rss_mb']:.0f} | {'yes' if summary['all_verified'] else 'NO'} |")
    target = doc["target"]
    lines.append("")
    lines.append(f"Target: >= {target['appends_per_second']:,} durable appends/s with group commit; best group-commit "
                 f"median {target['best_group_commit']:,.0f}/s -> {'met' if target['met'] else 'NOT met'}.")
    return "\n".join(lines)


def run_parent(args: argparse.Namespace) -> int:
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    postgres = None
    if args.store == "postgres":
        sys.path.insert(0, str(REPO))
        from ensemble_platform_tests.stack_driver import start_postgres

        postgres = start_postgres()
        if isinstance(postgres, str):
            raise SystemExit(postgres)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_decision_log_") as tmp:
            for repeat in range(args.repeats):
                order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
                for name in order:
                    runs[name].append(spawn(name, Path(tmp), args.records,
                                            postgres.url() if postgres else None))
    finally:
        if postgres is not None:
            from ensemble_platform_tests.stack_driver import stop_postgres

            stop_postgres(postgres)
    variants = {}
    for name, results in runs.items():
        rates = [r["appends_per_second"] for r in results]
        variants[name] = {
            "median_run": _median_run(results),
            "min_appends_per_second": min(rates),
            "max_appends_per_second": max(rates),
            "peak_rss_mb": max(r["peak_rss_mb_getrusage"] for r in results),
            "all_verified": all(r["verified_ok"] for r in results),
            "runs": results,
        }
    best_group = max(v["median_run"]["appends_per_second"] for k, v in variants.items() if k != "single")
    doc = {
        "benchmark": "decision_log",
        "store": args.store,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "sqlite": __import__("sqlite3").sqlite_version},
        "repeats": args.repeats,
        "variants": variants,
        "target": {"appends_per_second": TARGET_APPENDS_PER_S, "best_group_commit": best_group,
                   "met": best_group >= TARGET_APPENDS_PER_S},
    }
    sys.path.insert(0, str(REPO))
    from ensemble_platform.files import write_json

    write_json(doc, Path(args.out))
    print(markdown(doc))
    print(f"\nresults: {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", type=int, default=None, help="records per run (default 2,000 single, "
                                                                   "12,000 group commit)")
    parser.add_argument("--out", default=None, help=f"default {DEFAULT_OUT} ({DEFAULT_OUT_POSTGRES} for postgres)")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return run_child(args)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.out = args.out or str(DEFAULT_OUT_POSTGRES if args.store == "postgres" else DEFAULT_OUT)
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
