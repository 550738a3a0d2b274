"""The lifecycle at growing row counts on a synthetic credit-like table (issue 18).

For each size: the whole asset graph (`ensemble-platform demo --dataset <synthetic spec>`) in a
fresh platform home, and scikit-learn's StackingClassifier over the same six members (bounded as
the catalogue bounds them at that size) on the platform's folds, each in its own child process.
Reported: wall time, CPU seconds and peak RSS (the child's own `ru_utime + ru_stime` and `ru_maxrss`, via `os.wait4`) of both, the
process-tree RSS sampled every 0.2 s, each Dagster step's wall time and the highest process-tree
RSS seen while it ran (read back from the run's event log), and the ratio graph / Stacking fit.

`--code DIR` runs the platform from another checkout (e.g. `git archive` of an older commit) to
compare before/after in the same conditions.

    .venv/bin/python bench/bench_scale.py --rows 10000 100000          # ~minutes per size on 2 cores
    .venv/bin/python bench/bench_scale.py --rows 10000 --code /tmp/old --stacking          # graph only

Writes bench/results/scale.json. Never part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "scale.json"
PYTHON = sys.executable
N_NUMERIC, N_CATEGORICAL = 10, 4


def synthetic_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """10 numeric + 4 categorical features (a few missing values), a sensitive `group` column and a
    binary `status` (about 28% `bad`) from a non-linear score: deterministic for (rows, seed)."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(rows, N_NUMERIC))
    levels = [rng.integers(0, k, size=rows) for k in (3, 5, 8, 12)]
    effects = [rng.normal(scale=0.6, size=k) for k in (3, 5, 8, 12)]
    score = (0.9 * numeric[:, 0] - 0.7 * numeric[:, 1] + 0.5 * numeric[:, 2] * numeric[:, 3]
             + 0.6 * np.tanh(2 * numeric[:, 4]) + 0.3 * numeric[:, 5] ** 2
             + sum(e[lv] for e, lv in zip(effects, levels, strict=True)))
    logit = score - np.quantile(score, 0.76) + rng.logistic(scale=0.8, size=rows)
    table = pd.DataFrame({f"num_{j}": numeric[:, j].round(4) for j in range(N_NUMERIC)})
    for j, lv in enumerate(levels):
        table[f"cat_{j}"] = np.array([f"c{j}_{v}" for v in range(int(lv.max()) + 1)])[lv]
    table.loc[rng.random(rows) < 0.02, "num_6"] = np.nan
    table.loc[rng.random(rows) < 0.02, "cat_1"] = None
    table["group"] = np.where(rng.random(rows) < 0.4, "a", "b")
    table["status"] = np.where(logit > 0, "bad", "good")
    return table


def write_dataset(directory: Path, rows: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    synthetic_table(rows).to_parquet(directory / "synthetic.parquet", index=False)
    spec = directory / "synthetic.yaml"
    spec.write_text(f"name: synthetic_{rows}\nsource: synthetic.parquet\ntarget: status\npositive_label: bad\n"
                    "sensitive: [group]\nholdout_fraction: 0.25\nfolds: 5\nseed: 0\n")
    return spec


class TreeSampler:
    """Process-tree RSS (child + live descendants, MB) every 0.2 s, with timestamps."""

    def __init__(self, pid: int):
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, frontier = [self.pid], [self.pid]
        while frontier:
            pid = frontier.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            pids += [int(c) for c in children]
            frontier += [int(c) for c in children]
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
            self.samples.append((time.time(), total / 1024))
            self._stop.wait(0.2)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def run_child(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict:
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
    samples = sampler.stop()
    return {"wall_seconds": round(time.perf_counter() - started, 1), "exit_status": status,
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            # CPU seconds of the child itself (all its threads; not its own children): over the
            # machine's cores, the wall time the work could take if it kept every core busy.
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "tree_peak_rss_mb": round(max((s[1] for s in samples), default=0.0), 1), "samples": samples}


def step_table(dagster_home: Path, samples: list[tuple[float, float]]) -> dict[str, dict]:
    """Each Dagster step's wall time and the highest process-tree RSS sampled while it ran."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    import dagster as dg

    instance = dg.DagsterInstance.get()
    steps: dict[str, dict] = {}
    for run in instance.get_runs():
        partition = run.tags.get("dagster/partition")
        starts = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None or not entry.step_key:
                continue
            if event.event_type_value == "STEP_START":
                starts[entry.step_key] = entry.timestamp
            elif event.event_type_value == "STEP_SUCCESS" and entry.step_key in starts:
                begin, end = starts[entry.step_key], entry.timestamp
                rss = [mb for t, mb in samples if begin <= t <= end]
                key = f"{entry.step_key}[{partition}]" if partition else entry.step_key
                steps[key] = {"seconds": round(end - begin, 1), "tree_peak_rss_mb": round(max(rss, default=0.0), 1)}
    return steps


STACKING_CHILD = """
import json, resource, sys, time
import ensemble_platform  # first: the OpenBLAS kernel the graph runs on (blas_kernel.py), not the CPU's own pick
from sklearn.ensemble import StackingClassifier
from sklearn.linear_model import LogisticRegression
from ensemble_platform.data.loading import load_dataset
from ensemble_platform.data.spec import load_spec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.evaluation.metrics import binary_metrics
from ensemble_platform.members.catalogue import MEMBER_NAMES, get_member_spec
try:
    from ensemble_platform.members.catalogue import build_for_rows
except ImportError:  # an older checkout: members unbounded
    build_for_rows = lambda name, schema, seed, rows: get_member_spec(name).build(schema, seed)
spec = load_spec(sys.argv[1]); split = split_dataset(load_dataset(spec), spec)
rows = len(split.y_train)
model = StackingClassifier(
    estimators=[(n, build_for_rows(n, split.schema, spec.seed, rows)) for n in MEMBER_NAMES],
    final_estimator=LogisticRegression(), cv=list(split.folds()), stack_method="predict_proba", n_jobs=1)
started = time.perf_counter()
if sys.argv[2] == "one_blas":  # every fit with one BLAS thread, as the platform fits its members
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(split.X_train(), split.y_train)
else:
    model.fit(split.X_train(), split.y_train)
fit = time.perf_counter() - started
proba = model.predict_proba(split.X_holdout())[:, list(model.classes_).index(1)]
print("RESULT " + json.dumps({"fit_seconds": fit, "holdout": binary_metrics(split.y_holdout, proba)}))
"""


# StackingClassifier as it runs by default (BLAS on the machine's threads: the reference), and
# with one BLAS thread for its fits, as the platform fits its members (`threads.single_threaded_blas`).
STACKING_VARIANTS = {"default": "stacking", "one_blas": "stacking_one_blas"}


def measure(rows: int, code: Path, stacking: list[str], keep: Path | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"bench-scale-{rows}-"))
    spec = write_dataset(root / "dataset", rows)
    home = root / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    env = {**os.environ, "PYTHONPATH": str(code), "ENSEMBLE_PLATFORM_HOME": str(home),
           "DAGSTER_HOME": str(home / "dagster"), "OMP_NUM_THREADS": "2"}
    result: dict = {"rows": rows, "code": str(code)}
    graph = run_child([PYTHON, "-m", "ensemble_platform.cli", "--home", str(home), "demo", "--dataset", str(spec)],
                      env, code, root / "demo.log")
    samples = graph.pop("samples")
    output = (root / "demo.log").read_text()
    result["graph"] = graph
    result["graph"]["config_line"] = next((line.strip() for line in output.splitlines() if "config" in line
                                           and "ensemble version" in line), "")
    result["steps"] = step_table(home / "dagster", samples)
    validation = sorted((home / "reports").glob("*/*/validation.json"))
    if validation:
        report = json.loads(validation[-1].read_text())
        result["holdout"] = {"ensemble": report["ensemble"], "members": report["members"]}
    for variant in stacking:
        key = STACKING_VARIANTS[variant]
        log = root / f"{key}.log"
        child = run_child([PYTHON, "-c", STACKING_CHILD, str(spec), variant], env, code, log)
        child.pop("samples")
        line = next(ln for ln in log.read_text().splitlines() if ln.startswith("RESULT "))
        result[key] = child | json.loads(line[len("RESULT "):])
        suffix = "" if variant == "default" else f"_{variant}"
        result[f"graph_over_stacking_fit{suffix}"] = round(graph["wall_seconds"] / result[key]["fit_seconds"], 2)
        result[f"peak_rss_ratio{suffix}"] = round(graph["peak_rss_mb"] / child["peak_rss_mb"], 2)
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)
    else:
        result["kept"] = str(root)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose ensemble_platform runs")
    parser.add_argument("--stacking", nargs="*", choices=sorted(STACKING_VARIANTS), default=sorted(STACKING_VARIANTS),
                        help="StackingClassifier runs to measure beside the graph (none: --stacking with no value)")
    parser.add_argument("--keep", action="store_true", help="keep the temp homes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = []
    for rows in args.rows:
        result = measure(rows, args.code.resolve(), args.stacking, args.out.parent if args.keep else None)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=1, default=str), flush=True)
        for step, figures in sorted(result["steps"].items(), key=lambda kv: -kv[1]["seconds"])[:16]:
            print(f"  {step:45s} {figures['seconds']:8.1f}s {figures['tree_peak_rss_mb']:9.0f} MB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.is_file() else []
    args.out.write_text(json.dumps(existing + results, indent=1, default=str))


if __name__ == "__main__":
    main()
