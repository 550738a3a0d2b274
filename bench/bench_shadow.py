"""Shadow scoring's cost on production latency, over real HTTP (uvicorn on 127.0.0.1 in this process, one
client, sequential requests, the decision log on).

  off        production alone
  process    production with a staging candidate shadowing every request, the candidate deciding in a
             process of its own at nice +10 (`ProcessCandidate`: the default of `serve --shadow`)
  thread     the same, the candidate deciding in the scorer's worker thread (nice +10 on that thread),
             i.e. sharing production's GIL

Each mode serves single-row requests and 64-row batches; p50/p99 of the client-side latency, process CPU
per request (production + shadow, `getrusage`, the drain included), and the shadow's own counters (scored,
dropped, lag). Modes alternate in blocks of 100 (40) requests; the shadow is drained after each block so
`off` is never measured while a shadow still works. The drain scores the block's last linger window
outside the measured requests: its time is reported (`drain s`) so that share is visible.

Wiring: with `create_app(..., shadow=ShadowScorer)` (the service's integration) the scorer is handed to the
app. Until the app has that parameter, a bench-only shim hands each request's records to the scorer right
after the app builds them (before they are durable: the shadow starts slightly earlier than it will) and
the output says "shim".

The homes: a temporary one built like the tests' (`home_in_production` on a 600-row slice of credit_data,
then a PATCH candidate with decision threshold 0.35, approved and staged; ~35 s).
Results: markdown on stdout, JSON in bench/results/shadow.json (or --out).

Usage: .venv/bin/python bench/bench_shadow.py [--requests N (default 400)] [--batches N (default 80)] [--gc-freeze]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import inspect
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
from bench_service import percentile  # noqa: E402  (bench/ is the script's own directory on sys.path)

DEFAULT_OUT = BENCH_DIR / "results" / "shadow.json"
DATASET = "credit_slice"
PRODUCTION, CANDIDATE = "1.0.0", "1.0.1"
BATCH_ROWS = 64
BLOCKS = {"single": 100, "batch": 40}  # requests per block: several linger windows, so the drained tail is small
MODES = ("off", "process", "thread")


def build_home(root: Path) -> tuple[Any, Path, str]:
    """(paths, production bundle, its manifest SHA-256) of a home whose 1.0.1 is approved and in staging."""
    from ensemble_platform import cli
    from ensemble_platform_tests.conftest import home_in_production, slice_table, write_spec

    table = slice_table()
    paths, spec_path, release, result = home_in_production(root, table)
    write_spec(root / "dataset", table, governance={"decision_threshold": 0.35})
    assert cli.main(["--home", str(paths.home), "demo", "--dataset", str(spec_path)]) == 0
    release.approve(DATASET, CANDIDATE, "bench", "approve", "bench candidate",
                    release.state(DATASET, CANDIDATE).gates.failing)
    release.promote(DATASET, CANDIDATE, "staging")
    return paths, Path(result.bundle.path), result.bundle.manifest_sha256


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wired() -> bool:
    from ensemble_platform.service.app import create_app

    return "shadow" in inspect.signature(create_app).parameters


def install_shim(scorers: dict[int, Any]) -> Callable[[], None]:
    """Until `create_app(shadow=...)` exists: hand the records the app builds to the scorer of its decider."""
    from ensemble_platform.service import app as app_module

    original = app_module.decision_records

    def shadowed(decider, batch, *args, **kwargs):
        records = original(decider, batch, *args, **kwargs)
        scorer = scorers.get(id(decider))
        if scorer is not None:
            scorer.submit(batch.features, records)
        return records

    app_module.decision_records = shadowed

    def undo() -> None:
        app_module.decision_records = original

    return undo


def bench(paths: Any, bundle: Path, manifest_sha256: str, requests: int, batches: int, gc_freeze: bool) -> dict:
    import httpx
    import pandas as pd

    from ensemble_platform.service import DecisionLog, ServerThread, create_app, load_verified_bundle
    from ensemble_platform.service.shadow import ProcessCandidate, ShadowScorer, candidate_decider, staging_bundle
    from ensemble_platform.serving.decider import Decider

    manifest, runtime, sha = load_verified_bundle(bundle, manifest_sha256)
    holdout = pd.read_parquet(paths.parity_dir(DATASET, PRODUCTION) / "holdout_rows.parquet")
    rows = json.loads(holdout.to_json(orient="records"))
    candidate_bundle, candidate_sha = staging_bundle(paths, DATASET, CANDIDATE)
    log = DecisionLog(paths.home / "decisions" / f"bench-{os.getpid()}.sqlite", paths=paths,
                      name=f"bench-{os.getpid()}")
    deciders = {mode: Decider(runtime, manifest, member_timeout_s=30.0) for mode in MODES}
    candidates = {
        "process": ProcessCandidate(candidate_bundle, candidate_sha, member_timeout_s=30.0, max_missing_share=0.5),
        "thread": candidate_decider(candidate_bundle, candidate_sha, member_timeout_s=30.0, max_missing_share=0.5),
    }
    scorers = {mode: ShadowScorer(candidate, log, manifest_sha256=candidate_sha, nice=10 if mode == "thread" else 0)
               for mode, candidate in candidates.items()}
    real_wiring = wired()
    undo = (lambda: None) if real_wiring else install_shim({id(deciders[m]): s for m, s in scorers.items()})

    def app(mode: str) -> Any:
        extra = {"shadow": scorers[mode]} if real_wiring and mode in scorers else {}
        return create_app(deciders[mode], log, None, auth=False, manifest_sha256=sha, **extra)

    servers = {mode: ServerThread(app(mode)).start() for mode in MODES}
    latencies: dict[str, dict[str, list[float]]] = {m: {"single": [], "batch": []} for m in MODES}
    cpu: dict[str, dict[str, float]] = {m: {"single": 0.0, "batch": 0.0} for m in MODES}
    drained: dict[str, dict[str, float]] = {m: {"single": 0.0, "batch": 0.0} for m in MODES}
    try:
        with httpx.Client(timeout=120) as client:
            def post(mode: str, body: dict) -> float:
                started = time.perf_counter()
                response = client.post(f"{servers[mode].url}/v1/decisions", json=body)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                return elapsed

            def block(mode: str, kind: str, start: int, count: int) -> None:
                cpu_before = cpu_seconds()
                for i in range(start, start + count):
                    if kind == "single":
                        body = {"rows": [rows[i % len(rows)]]}
                    else:
                        first = (i * BATCH_ROWS) % (len(rows) - BATCH_ROWS)
                        body = {"rows": rows[first:first + BATCH_ROWS]}
                    latencies[mode][kind].append(post(mode, body) * 1000)
                if mode in scorers:
                    started = time.perf_counter()
                    scorers[mode].drain(120)  # the shadow's work belongs to this block, not the next
                    drained[mode][kind] += time.perf_counter() - started
                cpu[mode][kind] += cpu_seconds() - cpu_before

            for mode in MODES:  # warm up every path, the shadows included
                block(mode, "single", 0, 3)
                block(mode, "batch", 0, 2)
            if gc_freeze:  # what a service does after loading: no gen-2 pass over the import heap mid-request
                gc.collect()
                gc.freeze()
            for value in latencies.values():
                value["single"].clear()
                value["batch"].clear()
            for value in (*cpu.values(), *drained.values()):
                value["single"] = value["batch"] = 0.0
            for kind, total in (("single", requests), ("batch", batches)):
                size = BLOCKS[kind]
                for n, start in enumerate(range(0, total, size)):
                    order = MODES if n % 2 == 0 else tuple(reversed(MODES))
                    for mode in order:
                        block(mode, kind, start, min(size, total - start))
        stats = {mode: scorer.close(60).document() for mode, scorer in scorers.items()}
        shadow_entries = [e for e in log.store.iter_kinds(["shadow"])]
        verified = log.verify()
    finally:
        undo()
        for server in servers.values():
            server.stop()
        for decider in deciders.values():
            decider.close()
        log.close()
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(str(log.path) + suffix).unlink(missing_ok=True)
    counts = {"single": requests, "batch": batches}
    results = {mode: {kind: {"p50_ms": percentile(v, 50), "p90_ms": percentile(v, 90), "p95_ms": percentile(v, 95),
                             "p99_ms": percentile(v, 99), "max_ms": max(v), "mean_ms": statistics.fmean(v),
                             "over_250ms": sum(x > 250 for x in v),
                             "requests": len(v), "cpu_ms_per_request": cpu[mode][kind] * 1000 / counts[kind],
                             "drain_s": drained[mode][kind]}
                      for kind, v in kinds.items()} for mode, kinds in latencies.items()}
    lags = [e["lag_ms"] for e in shadow_entries]
    return {
        "benchmark": "shadow",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "wiring": "create_app(shadow=...)" if real_wiring else "shim (decision_records wrapped)",
        "production": {"dataset": DATASET, "version": PRODUCTION, "members": list(runtime.members)},
        "candidate": CANDIDATE, "batch_rows": BATCH_ROWS, "gc_freeze": gc_freeze,
        "results": results,
        "shadow": {"stats": stats, "records": len(shadow_entries), "lag_ms_p50": percentile(lags, 50) if lags else None,
                   "lag_ms_p99": percentile(lags, 99) if lags else None},
        "log_verified_entries": verified,
    }


def markdown(doc: dict) -> str:
    r = doc["results"]
    lines = [f"Shadow scoring, {doc['production']['dataset']} {doc['production']['version']} shadowed by "
             f"{doc['candidate']} ({len(doc['production']['members'])} members), {doc['machine']['cpus']} CPUs, "
             f"wiring: {doc['wiring']}, gc.freeze: {'yes' if doc['gc_freeze'] else 'no'}", "",
             "| request | mode | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | CPU per request (ms) | drain s "
             "| p50 / p99 vs off |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for kind, label in (("single", "1 row"), ("batch", f"{doc['batch_rows']} rows")):
        off = r["off"][kind]
        for mode in MODES:
            m = r[mode][kind]
            ratio = "" if mode == "off" else f"{m['p50_ms'] - off['p50_ms']:+.1f} / {m['p99_ms'] - off['p99_ms']:+.1f} ms"
            lines.append(f"| {label} | {mode} | {m['p50_ms']:.1f} | {m['p95_ms']:.1f} | {m['p99_ms']:.1f} | "
                         f"{m['max_ms']:.1f} | {m['cpu_ms_per_request']:.1f} | {m['drain_s']:.2f} | {ratio} |")
    shadow = doc["shadow"]
    for mode, s in shadow["stats"].items():
        lines.append(f"\n{mode}: shadow scored {s['scored']}, failed {s['failed']}, dropped {s['dropped']}, "
                     f"{s['batches']} batches, busy {s['busy_seconds']:.1f} s, nice {s['nice']}")
    if shadow["lag_ms_p50"] is not None:
        lines.append(f"shadow lag (answer -> shadow record) p50 {shadow['lag_ms_p50']:.1f} ms, "
                     f"p99 {shadow['lag_ms_p99']:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="single-row requests per mode")
    parser.add_argument("--batches", type=int, default=80, help=f"{BATCH_ROWS}-row requests per mode")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after warm-up (without it, gen-2 collections over the ~730k objects of "
                             "the imports stall a request now and then, shadow or not)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    os.environ.setdefault("ENSEMBLE_PLATFORM_AUTOMATION", "off")
    with tempfile.TemporaryDirectory(prefix="bench_shadow_") as tmp:
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # key and checkpoints of the temp home
        paths, bundle, sha = build_home(Path(tmp) / "root")
        doc = bench(paths, bundle, sha, args.requests, args.batches, args.gc_freeze)
    from ensemble_platform.files import write_json

    write_json(doc, Path(args.out))
    print(markdown(doc))
    print(f"\nresults: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
