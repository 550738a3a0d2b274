"""Single-row (and 64-row) decision latency of the default ensemble, in-process, fast path on vs off.

The ensemble: the newest validated version of an existing platform home (`--home`, e.g. one built by
`ensemble-platform --home /tmp/x demo`), or, without `--home`, a fresh `demo` of the default dataset
(credit_data) into a temporary home (a few minutes on a loaded machine). Rows: the default dataset's
holdout, call i takes row(s) starting at i (the same rows for every variant).

Per call, for 1 and 64 rows (>= 300 calls each), interleaved in the same loop so machine load hits
every variant alike:

  members   each served member's own pipeline `predict_proba` (scikit-learn's path) on the model
            input, summed over members: what the members cost by themselves (the issue's baseline)
  runtime   `EnsembleRuntime.score` on the raw table rows (model input, members, combiner,
            calibrator, agreement, review flags)
  decider   `Decider.decide` on the rows as JSON-like dicts, as the service calls it (validation,
            member pools with deadlines, degraded-mode checks, per-row documents)
  http      (`--http`, single rows only) `POST /v1/decisions` over real HTTP to the service app in this
            process (uvicorn on 127.0.0.1, one client, decision log off: the log's cost is
            bench_service.py's subject), the fast path toggled in the same process

`runtime` and `decider` run twice per call: with the fast path (default) and with it turned off
(`ENSEMBLE_PLATFORM_FAST_PATH=off`, read per call: the plain scikit-learn path), in alternating
order; their outputs are checked to be identical bit for bit. cProfile then shows where 200 single-row
`EnsembleRuntime.score` calls spend their time in each mode (the runtime scores on one thread; the
decider's member pools would hide the members from the profiler).

    PYTHONPATH=. .venv/bin/python bench/bench_single_row.py [--home H] [--calls 300] [--http]

Prints a markdown table; writes bench/results/single_row.json.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
RESULTS = BENCH_DIR / "results" / "single_row.json"
FAST_PATH_ENV = "ENSEMBLE_PLATFORM_FAST_PATH"
MODES = ("fast", "plain")
TARGET_RATIO = 1.2
TARGET_P50_MS = 15.0


def build_home(root: Path) -> Path:
    """`ensemble-platform demo` of the default dataset into `root/home` (as `make demo`, temp homes)."""
    home = root / "home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_bytes((REPO / "dagster.yaml").read_bytes())
    env = {**os.environ, "ENSEMBLE_PLATFORM_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
           "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "ensemble_platform.cli", "--home", str(home), "demo"],
                   check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return home


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return (time.perf_counter() - started) * 1000, out


def set_mode(mode: str) -> None:
    os.environ[FAST_PATH_ENV] = "on" if mode == "fast" else "off"


def profile(fn: Callable[[], object], calls: int, top: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumtime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(lines[:3] + lines[start:])


def http_latencies(decider, records: list[dict], calls: int) -> dict[str, list[float]]:
    """Single-row POST /v1/decisions, fast and plain alternating by call, log off."""
    import httpx

    from ensemble_platform.service import DisabledDecisionLog, ServerThread, create_app

    server = ServerThread(create_app(decider, DisabledDecisionLog(), None, auth=False)).start()
    series: dict[str, list[float]] = {f"http_{mode}": [] for mode in MODES}
    try:
        with httpx.Client(timeout=120) as client:
            def post(row: dict) -> None:
                client.post(f"{server.url}/v1/decisions", json={"rows": [row]}).raise_for_status()

            for mode in MODES * 3:  # warm-up
                set_mode(mode)
                post(records[0])
            for i in range(calls):
                for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                    set_mode(mode)
                    series[f"http_{mode}"].append(timed(lambda i=i: post(records[(i * 7) % len(records)]))[0])
    finally:
        server.stop()
    return series


def bench(home: Path, calls: int, http: bool = False) -> dict:
    from ensemble_platform.data.loading import load_dataset
    from ensemble_platform.data.spec import load_spec
    from ensemble_platform.data.splitting import split_dataset
    from ensemble_platform.governance.release import Release
    from ensemble_platform.serving.decider import Decider
    from ensemble_platform.settings import PlatformPaths

    spec = load_spec()
    split = split_dataset(load_dataset(spec), spec)
    runtime, scored_by = Release(PlatformPaths.from_env(home)).serving_runtime(spec.name)
    holdout = split.holdout[runtime.schema.features].reset_index(drop=True)
    records = json.loads(holdout.to_json(orient="records"))
    X = runtime.model_input(holdout)
    decider = Decider(runtime, {}, member_timeout_s=30.0)

    def members(rows: slice) -> float:
        frame = X.iloc[rows]
        return sum(timed(lambda m=m: m.predict_proba(frame))[0] for m in runtime.members.values())

    results: dict[str, dict] = {}
    try:
        for n_rows in (1, 64):
            for _ in range(3):  # warm-up (imports, pools, caches) in both modes
                for mode in MODES:
                    set_mode(mode)
                    runtime.score(holdout.iloc[:n_rows])
                    decider.decide(records[:n_rows])
            series: dict[str, list[float]] = {"members": []}
            series.update({f"{what}_{mode}": [] for what in ("runtime", "decider") for mode in MODES})
            for i in range(calls):
                start = (i * 7) % (len(holdout) - n_rows)
                rows = slice(start, start + n_rows)
                series["members"].append(members(rows))
                outputs = {}
                for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                    set_mode(mode)
                    ms, scored = timed(lambda rows=rows: runtime.score(holdout.iloc[rows]))
                    series[f"runtime_{mode}"].append(ms)
                    ms, batch = timed(lambda rows=rows: decider.decide(records[rows]))
                    series[f"decider_{mode}"].append(ms)
                    outputs[mode] = (scored["probability"].to_numpy(),
                                     np.array([[r.probability, r.agreement] for r in batch.rows]),
                                     np.array([[m.probability for m in r.members.values()] for r in batch.rows]))
                for fast, plain in zip(outputs["fast"], outputs["plain"], strict=True):
                    if not np.array_equal(fast, plain):
                        raise AssertionError(f"fast and plain paths differ on rows {rows}: {fast} vs {plain}")
            summed = percentile(series["members"], 50)
            results[str(n_rows)] = {
                name: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "mean_ms": statistics.fmean(v),
                       "ratio_p50_to_members": percentile(v, 50) / summed, "calls": len(v)}
                for name, v in series.items()
            }
        if http:
            summed = results["1"]["members"]["p50_ms"]
            for name, v in http_latencies(decider, records, calls).items():
                results["1"][name] = {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99),
                                      "mean_ms": statistics.fmean(v), "ratio_p50_to_members": percentile(v, 50) / summed,
                                      "calls": len(v)}
        profiles = {}
        for mode in MODES:
            set_mode(mode)
            profiles[mode] = profile(lambda: runtime.score(holdout.iloc[:1]), 200)
    finally:
        decider.close()
        os.environ.pop(FAST_PATH_ENV, None)
    return {
        "benchmark": "single_row",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_after": os.getloadavg()},
        "ensemble": {"dataset": spec.name, "scored_by": scored_by, "members": list(runtime.members),
                     "combiner": type(runtime.combiner).__name__},
        "calls": calls,
        "results": results,
        "profiles_runtime_1_row": profiles,
        "targets": {"ratio_to_members": TARGET_RATIO, "p50_ms": TARGET_P50_MS},
    }


def markdown(report: dict) -> str:
    labels = {"members": "members' own `predict_proba`, summed", "runtime_plain": "`EnsembleRuntime.score`, plain",
              "runtime_fast": "`EnsembleRuntime.score`, fast path", "decider_plain": "`Decider.decide`, plain",
              "decider_fast": "`Decider.decide`, fast path", "http_plain": "`POST /v1/decisions` (log off), plain",
              "http_fast": "`POST /v1/decisions` (log off), fast path"}
    lines = ["| rows | measure | p50 (ms) | p99 (ms) | p50 / members' summed p50 |", "|---:|---|---:|---:|---:|"]
    for n_rows, measures in report["results"].items():
        for name, label in labels.items():
            if name not in measures:
                continue
            m = measures[name]
            lines.append(f"| {n_rows} | {label} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                         f"{m['ratio_p50_to_members']:.2f}x |")
    load = ", ".join(f"{x:.2f}" for x in report["machine"]["load_average_after"])
    lines.append(f"\n{report['calls']} calls per measure, {report['machine']['cpus']} CPUs, load average after: {load}; "
                 f"{report['ensemble']['combiner']} over {len(report['ensemble']['members'])} members "
                 f"({report['ensemble']['scored_by']}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="an existing platform home holding a validated default ensemble")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--http", action="store_true", help="also single rows over HTTP (log off)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-single-row-") as scratch:
        home = args.home or build_home(Path(scratch))
        report = bench(home, args.calls, args.http)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    for mode, text in report["profiles_runtime_1_row"].items():
        print(f"\n### cProfile, 200 single-row runtime.score calls, {mode}\n```\n{text}\n```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
