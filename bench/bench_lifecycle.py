"""Lifecycle benchmark: the platform against scikit-learn's StackingClassifier, in one run.

Every measured variant runs in its own fresh Python process (this same script with `--variant`),
so each peak RSS belongs to that variant alone: the parent reaps each child with `os.wait4`,
whose rusage carries the child's own peak resident set size (and that of anything it spawned).

Variants (all on the default dataset spec shipped in the package, same split, same folds, same
member pipelines, same seed):

- `stacking`  scikit-learn `StackingClassifier` over the catalogue's member pipelines, `cv=` the
              platform's shared folds, `final_estimator=LogisticRegression()`,
              `stack_method="predict_proba"`, `n_jobs=1`. Timed: `fit`. The baseline.
- `core`      the platform's domain core without orchestration: `split_dataset`, `fit_member`
              for every member (out-of-fold on the shared folds + refit), `select_strategy` over
              `strategy_catalogue`. Training time = sum of member `fit_seconds` + sum of strategy
              `fit_seconds` (exactly the platform's own timers).
- `member`    the best single member on holdout log loss (picked from the `core` fits), refitted
              alone in its own process for an honest peak RSS and time.
- `dagster`   the whole asset graph (`materialize_lifecycle`) into a fresh temporary platform
              home with a sqlite Dagster instance configured by the repo's dagster.yaml, as
              `make demo` does. Training time is read back from the asset values it stored.

Ratios are taken against the StackingClassifier fit time measured in the same run, because the
machine is noisy. Results: markdown table on stdout, JSON in bench/results/lifecycle.json.

Usage: .venv/bin/python bench/bench_lifecycle.py [--repeats N (default 3)] [--keep-home] [--out PATH]
(`make bench` runs it with the defaults; about 2 minutes on 2 cores.)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform as _platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results" / "lifecycle.json"
# Targets from the issue.
TRAINING_TIME_RATIO_TARGET = 1.5  # platform training time <= 1.5 x StackingClassifier fit time
DEMO_SECONDS_TARGET = 120.0  # whole graph on the default dataset in under 2 minutes
GOVERNANCE_SHARE_TARGET = 0.25  # the reporting stage adds at most 25% to the rest of the graph


# --------------------------------------------------------------------------------------------
# helpers usable in parent and children


def _kb_to_mb(kb: float) -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes; this bench targets Linux).
    return round(kb / 1024.0, 1)


def _current_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def _self_peak_mb() -> float:
    return _kb_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _metrics(y, proba) -> dict[str, float]:
    from ensemble_platform.evaluation.metrics import binary_metrics

    return {k: round(float(v), 6) for k, v in binary_metrics(y, proba).items()}


def _save_holdout(args: argparse.Namespace, y, proba) -> None:
    """Holdout labels and probabilities, for the parent's paired bootstrap (not part of the JSON)."""
    import numpy as np

    np.savez(Path(args.result).with_suffix(".holdout.npz"), y=np.asarray(y), proba=np.asarray(proba, dtype=float))


def paired_bootstrap(y, p_platform, p_baseline, n: int = 2000, seed: int = 0) -> dict:
    """Holdout differences platform minus baseline with 95% percentile intervals (rows resampled
    with replacement, the same rows for both models)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    eps = 1e-15
    pp, pb = np.clip(p_platform, eps, 1 - eps), np.clip(p_baseline, eps, 1 - eps)
    d_auc, d_ll = [], []

    def _ll(yy, p):  # same value as sklearn's log_loss on clipped probabilities, without its checks
        return float(-np.mean(yy * np.log(p) + (1 - yy) * np.log1p(-p)))

    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        d_auc.append(roc_auc_score(y[idx], pp[idx]) - roc_auc_score(y[idx], pb[idx]))
        d_ll.append(_ll(y[idx], pp[idx]) - _ll(y[idx], pb[idx]))
    d_auc, d_ll = np.array(d_auc), np.array(d_ll)
    return {
        "resamples": int(len(d_auc)),
        "roc_auc_diff": float(roc_auc_score(y, pp) - roc_auc_score(y, pb)),
        "roc_auc_diff_ci95": [float(np.percentile(d_auc, 2.5)), float(np.percentile(d_auc, 97.5))],
        "roc_auc_share_platform_not_worse": float((d_auc >= 0).mean()),
        "log_loss_diff": _ll(y, pp) - _ll(y, pb),
        "log_loss_diff_ci95": [float(np.percentile(d_ll, 2.5)), float(np.percentile(d_ll, 97.5))],
        "log_loss_share_platform_not_worse": float((d_ll <= 0).mean()),
    }


def _load_split():
    from ensemble_platform.data.loading import load_dataset
    from ensemble_platform.data.spec import load_spec
    from ensemble_platform.data.splitting import split_dataset

    spec = load_spec()
    table = load_dataset(spec)
    started = time.perf_counter()
    split = split_dataset(table, spec)
    return spec, table, split, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# variants (each runs in a fresh child process)


def variant_stacking(args: argparse.Namespace) -> dict:
    from sklearn.ensemble import StackingClassifier
    from sklearn.linear_model import LogisticRegression

    from ensemble_platform.members.catalogue import MEMBER_NAMES, get_member_spec

    spec, _, split, _ = _load_split()
    X_train, y_train = split.X_train(), split.y_train
    X_holdout, y_holdout = split.X_holdout(), split.y_holdout
    rss_before = _current_rss_mb()
    model = StackingClassifier(
        estimators=[(name, get_member_spec(name).build(split.schema, spec.seed)) for name in MEMBER_NAMES],
        final_estimator=LogisticRegression(),
        cv=list(split.folds()),  # the platform's shared folds, as a list (re-iterable per member)
        stack_method="predict_proba",
        n_jobs=1,
    )
    started = time.perf_counter()
    model.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - started
    classes = list(model.classes_)
    proba = model.predict_proba(X_holdout)[:, classes.index(1)]
    _save_holdout(args, y_holdout, proba)
    return {
        "fit_seconds": fit_seconds,
        "rss_before_fit_mb": rss_before,
        "holdout": _metrics(y_holdout, proba),
        "final_estimator_coef": [round(float(c), 6) for c in model.final_estimator_.coef_[0]],
    }


def variant_core(args: argparse.Namespace) -> dict:
    import numpy as np

    from ensemble_platform.ensemble.selection import select_strategy
    from ensemble_platform.ensemble.strategies import strategy_catalogue
    from ensemble_platform.members.catalogue import MEMBER_NAMES
    from ensemble_platform.members.training import fit_member

    wall_started = time.perf_counter()
    spec, _, split, split_seconds = _load_split()
    load_and_split_seconds = time.perf_counter() - wall_started
    rss_before = _current_rss_mb()

    fits = {}
    members_started = time.perf_counter()
    for name in MEMBER_NAMES:
        fits[name] = fit_member(name, split, spec.seed)
    members_wall = time.perf_counter() - members_started

    P = np.column_stack([fits[n].oof_proba for n in MEMBER_NAMES])
    X_train = split.X_train()
    selection_started = time.perf_counter()
    candidates = select_strategy(
        strategy_catalogue(split.schema, spec.seed), P, split.y_train, split.fold_of_row, X=X_train
    )
    selection_wall = time.perf_counter() - selection_started
    core_wall = time.perf_counter() - wall_started

    X_holdout, y_holdout = split.X_holdout(), split.y_holdout
    H = np.column_stack([fits[n].holdout_proba for n in MEMBER_NAMES])
    chosen = candidates.chosen_evidence
    ensemble_proba = chosen.combiner.positive_proba(H, X_holdout if chosen.combiner.needs_features else None)
    _save_holdout(args, y_holdout, ensemble_proba)
    members = {
        n: {"fit_seconds": fits[n].fit_seconds, "holdout": _metrics(y_holdout, fits[n].holdout_proba),
            "oof": {k: round(float(v), 6) for k, v in fits[n].oof_metrics.items()}}
        for n in MEMBER_NAMES
    }
    strategies = {
        n: {"fit_seconds": ev.fit_seconds,
            "cv": {k: round(float(v), 6) for k, v in ev.cv_metrics.items()},
            "holdout": _metrics(y_holdout, ev.combiner.positive_proba(
                H, X_holdout if ev.combiner.needs_features else None))}
        for n, ev in candidates.candidates.items()
    }
    member_seconds = sum(f.fit_seconds for f in fits.values())
    strategy_seconds = sum(ev.fit_seconds for ev in candidates.candidates.values())
    best_member = min(members, key=lambda n: members[n]["holdout"]["log_loss"])
    return {
        "dataset": split.dataset,
        "rows": {"total": len(split.train) + len(split.holdout), "train": len(split.train),
                 "holdout": len(split.holdout)},
        "folds": split.n_folds,
        "seed": spec.seed,
        "load_and_split_seconds": load_and_split_seconds,
        "split_seconds": split_seconds,
        "member_fit_seconds": member_seconds,
        "strategy_selection_seconds": strategy_seconds,
        "training_seconds": member_seconds + strategy_seconds,
        "members_wall_seconds": members_wall,
        "selection_wall_seconds": selection_wall,
        "core_wall_seconds": core_wall,
        "rss_before_fit_mb": rss_before,
        "chosen": candidates.chosen,
        "criterion": candidates.criterion,
        "holdout": _metrics(y_holdout, ensemble_proba),
        "best_member": best_member,
        "members": members,
        "strategies": strategies,
    }


def variant_member(args: argparse.Namespace) -> dict:
    from ensemble_platform.members.training import fit_member

    spec, _, split, _ = _load_split()
    rss_before = _current_rss_mb()
    fit = fit_member(args.member, split, spec.seed)
    return {
        "member": args.member,
        "fit_seconds": fit.fit_seconds,
        "rss_before_fit_mb": rss_before,
        "holdout": _metrics(split.y_holdout, fit.holdout_proba),
    }


def variant_dagster(args: argparse.Namespace) -> dict:
    home = Path(args.home).resolve()
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    # As `make demo`: the repo's dagster.yaml (sqlite storage, telemetry off) in $DAGSTER_HOME.
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ["ENSEMBLE_PLATFORM_HOME"] = str(home)
    os.environ.pop("ENSEMBLE_PLATFORM_DATASET", None)  # the default spec

    imports_started = time.perf_counter()
    import dagster as dg

    from ensemble_platform.definitions import build_definitions
    from ensemble_platform.defs.runner import materialize_lifecycle
    from ensemble_platform.integrity.keys import load_signing_key
    from ensemble_platform.integrity.sealed_values import read_sealed
    from ensemble_platform.members.catalogue import MEMBER_NAMES
    from ensemble_platform.settings import PlatformPaths

    imports_seconds = time.perf_counter() - imports_started
    rss_before = _current_rss_mb()

    # Count the processes the run spawns (their peak RSS lands in RUSAGE_CHILDREN, not ours).
    spawned: list[str] = []

    def _audit(event: str, event_args: tuple) -> None:
        if event == "subprocess.Popen":
            argv = event_args[1] if len(event_args) > 1 else None
            words = [str(w) for w in argv] if isinstance(argv, (list, tuple)) else str(argv).split()
            # program, plus the script or -m module for Python: e.g. "python watch_orphans.py".
            kind = [Path(words[0]).name] if words else ["?"]
            if words and kind[0].startswith("python") and len(words) > 1:
                kind.append(words[2] if words[1] == "-m" and len(words) > 2 else Path(words[1]).name)
            spawned.append(" ".join(kind))

    sys.addaudithook(_audit)

    # Timing-only wrappers (behaviour unchanged): how much of the run is MLflow registration, and
    # how much of that is MLflow inferring pip requirements in a subprocess per logged model.
    import functools

    import mlflow.utils.requirements_utils as requirements_utils

    from ensemble_platform.governance.registry import Registry

    timers: dict[str, list[float]] = {}

    def _timed(label: str, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timers.setdefault(label, []).append(time.perf_counter() - t0)
        return wrapper

    Registry.register_member = _timed("registry.register_member", Registry.register_member)
    Registry.register_ensemble = _timed("registry.register_ensemble", Registry.register_ensemble)
    requirements_utils._capture_imported_modules = _timed(
        "mlflow requirements inference (_capture_imported_modules)", requirements_utils._capture_imported_modules
    )

    started = time.perf_counter()
    defs = build_definitions(str(home), None)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    run = materialize_lifecycle(defs, instance, echo=lambda msg: print(msg, flush=True))
    wall = time.perf_counter() - started
    validation = run.validation
    assert validation is not None, "the ensemble job returned no validation report"

    # Read the stored asset values back (sealed pickles under <home>/dagster/storage/<dataset>/).
    dataset = validation["dataset"]
    key = load_signing_key(PlatformPaths.from_env(home))

    def stored(relative: str):
        return read_sealed(dagster_home / "storage" / dataset / relative, key, f"{dataset}/{relative}")

    member_seconds = {name: stored(f"member_model/{name}").fit_seconds for name in MEMBER_NAMES}
    candidates = stored("ensemble_candidates")
    strategy_seconds = {n: ev.fit_seconds for n, ev in candidates.candidates.items()}
    best = validation["best_member"]
    return {
        "wall_seconds": wall,
        "imports_seconds": imports_seconds,
        "subprocesses_spawned": len(spawned),
        "timed_calls": {k: {"calls": len(v), "seconds": sum(v)} for k, v in timers.items()},
        "subprocess_kinds": {k: spawned.count(k) for k in sorted(set(spawned))},
        "step_seconds": run.seconds,
        "member_fit_seconds": sum(member_seconds.values()),
        "strategy_selection_seconds": sum(strategy_seconds.values()),
        "training_seconds": sum(member_seconds.values()) + sum(strategy_seconds.values()),
        "member_fit_seconds_by_member": member_seconds,
        "strategy_seconds_by_strategy": strategy_seconds,
        "rss_before_fit_mb": rss_before,
        "chosen": validation["chosen"],
        "ensemble_version": validation["ensemble_version"],
        "holdout": {k: round(float(v), 6) for k, v in validation["ensemble"].items()},
        "best_member": best,
        "best_member_holdout": {k: round(float(v), 6) for k, v in validation["members"][best].items()},
        "lift_over_best_member": {k: round(float(v), 6) for k, v in validation["lift_over_best_member"].items()},
    }


VARIANTS = {"stacking": variant_stacking, "core": variant_core, "member": variant_member,
            "dagster": variant_dagster}


def run_child(args: argparse.Namespace) -> int:
    result = VARIANTS[args.variant](args)
    result["child_self_peak_rss_mb"] = _self_peak_mb()
    result["child_descendants_peak_rss_mb"] = _kb_to_mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    Path(args.result).write_text(json.dumps(result, indent=2, default=float))
    return 0


# --------------------------------------------------------------------------------------------
# parent: spawn each variant, reap it with wait4, compare


class TreeRssSampler:
    """Samples the summed RSS of a process and all its live descendants every `interval` seconds.

    ru_maxrss gives each process's own peak; this shows what a process tree holds *at once* (e.g.
    the Dagster process while a helper process it spawned is alive). RSS sums count shared pages
    once per process, so this is an upper estimate of the tree's footprint.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        import threading

        self.pid, self.interval = pid, interval
        self.peak_kb = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _ppid_and_rss() -> dict[int, tuple[int, int]]:
        table: dict[int, tuple[int, int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = rss = 0
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("PPid:"):
                        ppid = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                table[int(entry.name)] = (ppid, rss)
            except (OSError, ValueError, IndexError):
                continue
        return table

    def _sample(self) -> None:
        table = self._ppid_and_rss()
        tree, frontier = {self.pid}, [self.pid]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        total = sum(table[p][1] for p in tree if p in table)
        self.peak_kb = max(self.peak_kb, total)
        self.max_processes = max(self.max_processes, sum(1 for p in tree if p in table))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRssSampler:
        if Path("/proc/self/status").is_file():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def spawn(variant: str, workdir: Path, env: dict[str, str], extra: list[str] | None = None,
          label: str | None = None, script: Path | None = None) -> dict:
    """Run `script --variant VARIANT` (default: this script) in a fresh process; its result JSON
    plus the child's own peak RSS and the process tree's sampled RSS."""
    label = label or variant
    result_path = workdir / f"{label}.json"
    log_path = workdir / f"{label}.log"
    cmd = [sys.executable, str(script or Path(__file__).resolve()), "--variant", variant, "--result", str(result_path)]
    cmd += extra or []
    print(f"  running {label} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        with TreeRssSampler(proc.pid) as sampler:
            # wait4 returns the rusage of exactly this child (plus descendants it reaped): its peak RSS.
            _, status, usage = os.wait4(proc.pid, 0)
    process_wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_path.is_file():
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        raise SystemExit(f"variant {label} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_wall_seconds"] = process_wall
    result["peak_rss_mb"] = _kb_to_mb(usage.ru_maxrss)
    result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    result["tree_rss_peak_sampled_mb"] = _kb_to_mb(sampler.peak_kb)
    result["tree_max_processes_sampled"] = sampler.max_processes
    print(f"  {label} done in {process_wall:.1f}s (peak RSS {result['peak_rss_mb']} MB)", file=sys.stderr, flush=True)
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": _platform.python_version()}
    for pkg in ("ensemble_platform", "scikit-learn", "xgboost", "dagster", "mlflow", "numpy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "n/a"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or "unknown"


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def run_parent(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    # As the Makefile: keep BLAS from oversubscribing the two cores next to the models' n_jobs=2.
    env.setdefault("OMP_NUM_THREADS", "2")
    env.setdefault("PYTHONHASHSEED", "0")
    env.pop("ENSEMBLE_PLATFORM_DATASET", None)
    workdir = Path(tempfile.mkdtemp(prefix="ep_bench_"))
    home = workdir / "platform_home"
    total_started = time.perf_counter()
    try:
        stacking_runs, core_runs = [], []
        for r in range(args.repeats):
            suffix = f"_{r + 1}" if args.repeats > 1 else ""
            # Alternate the order so drift on a noisy machine does not favour one side.
            order = ["stacking", "core"] if r % 2 == 0 else ["core", "stacking"]
            for variant in order:
                res = spawn(variant, workdir, env, label=variant + suffix)
                (stacking_runs if variant == "stacking" else core_runs).append(res)
        core = core_runs[0]
        stacking = stacking_runs[0]
        member = spawn("member", workdir, env, ["--member", core["best_member"]])
        dagster = spawn("dagster", workdir, env, ["--home", str(home)])
        import numpy as np

        first = "_1" if args.repeats > 1 else ""
        ens_npz = np.load(workdir / f"core{first}.holdout.npz")
        stk_npz = np.load(workdir / f"stacking{first}.holdout.npz")
        assert np.array_equal(ens_npz["y"], stk_npz["y"]), "stacking and core scored different holdouts"
        bootstrap = paired_bootstrap(ens_npz["y"], ens_npz["proba"], stk_npz["proba"])
    finally:
        if args.keep_home:
            print(f"  kept work dir (logs, platform home): {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    bench_seconds = time.perf_counter() - total_started

    stacking_fit = _median([s["fit_seconds"] for s in stacking_runs])
    stacking_process = _median([s["process_wall_seconds"] for s in stacking_runs])
    stacking_peak = max(s["peak_rss_mb"] for s in stacking_runs)
    core_training = _median([c["training_seconds"] for c in core_runs])
    core_wall = _median([c["core_wall_seconds"] for c in core_runs])
    core_process = _median([c["process_wall_seconds"] for c in core_runs])
    core_peak = max(c["peak_rss_mb"] for c in core_runs)
    ens, stk = core["holdout"], stacking["holdout"]
    ratios = {
        "platform_core_training_over_stacking_fit": core_training / stacking_fit,
        "platform_dagster_training_over_stacking_fit": dagster["training_seconds"] / stacking_fit,
        "platform_core_wall_over_stacking_fit": core_wall / stacking_fit,
        "platform_dagster_wall_over_stacking_fit": dagster["wall_seconds"] / stacking_fit,
        "platform_dagster_process_over_stacking_process": dagster["process_wall_seconds"] / stacking_process,
        "best_member_fit_over_stacking_fit": member["fit_seconds"] / stacking_fit,
        "platform_core_peak_rss_over_stacking": core_peak / stacking_peak,
        # The governance job (calibration, fairness, agreement reports, model card) against
        # everything before it in the same run (data, members, ensemble).
        "governance_reports_over_rest_of_graph": dagster["step_seconds"]["governance"]
        / (sum(dagster["step_seconds"].values()) - dagster["step_seconds"]["governance"]),
        "platform_dagster_peak_rss_over_stacking": dagster["peak_rss_mb"] / stacking_peak,
    }
    targets = {
        "ensemble_auc_at_least_stacking": ens["roc_auc"] >= stk["roc_auc"],
        "ensemble_log_loss_at_most_stacking": ens["log_loss"] <= stk["log_loss"],
        "training_time_at_most_1_5x_stacking_fit": ratios["platform_core_training_over_stacking_fit"] <= TRAINING_TIME_RATIO_TARGET,
        "dagster_run_training_time_at_most_1_5x_stacking_fit": ratios["platform_dagster_training_over_stacking_fit"] <= TRAINING_TIME_RATIO_TARGET,
        "whole_graph_under_2_minutes": dagster["wall_seconds"] < DEMO_SECONDS_TARGET,
        "whole_graph_process_incl_imports_under_2_minutes": dagster["process_wall_seconds"] < DEMO_SECONDS_TARGET,
        "governance_reports_add_at_most_25_percent": ratios["governance_reports_over_rest_of_graph"]
        <= GOVERNANCE_SHARE_TARGET,
    }
    consistency = {
        "dagster_chosen_equals_core_chosen": dagster["chosen"] == core["chosen"],
        "dagster_holdout_auc_minus_core": dagster["holdout"]["roc_auc"] - ens["roc_auc"],
        "dagster_holdout_log_loss_minus_core": dagster["holdout"]["log_loss"] - ens["log_loss"],
        "dagster_best_member_equals_core": dagster["best_member"] == core["best_member"],
        "repeats_identical_metrics": all(s["holdout"] == stk for s in stacking_runs)
        and all(c["holdout"] == ens and c["chosen"] == core["chosen"] for c in core_runs),
        "member_rerun_log_loss_minus_core": member["holdout"]["log_loss"] - core["members"][core["best_member"]]["holdout"]["log_loss"],
    }

    rows = [
        {"variant": "sklearn StackingClassifier (baseline)", "key": "stacking", "tree_rss_peak_sampled_mb": max(x["tree_rss_peak_sampled_mb"] for x in stacking_runs),
         "training_seconds": stacking_fit, "wall_seconds": stacking_fit,
         "process_wall_seconds": stacking_process, "peak_rss_mb": stacking_peak,
         "rss_before_fit_mb": stacking["rss_before_fit_mb"], **stk},
        {"variant": f"platform core: ensemble ({core['chosen']})", "key": "core", "tree_rss_peak_sampled_mb": max(x["tree_rss_peak_sampled_mb"] for x in core_runs),
         "training_seconds": core_training, "wall_seconds": core_wall,
         "process_wall_seconds": core_process, "peak_rss_mb": core_peak,
         "rss_before_fit_mb": core["rss_before_fit_mb"], **ens},
        {"variant": f"best single member ({member['member']})", "key": "member", "tree_rss_peak_sampled_mb": member["tree_rss_peak_sampled_mb"],
         "training_seconds": member["fit_seconds"], "wall_seconds": member["fit_seconds"],
         "process_wall_seconds": member["process_wall_seconds"], "peak_rss_mb": member["peak_rss_mb"],
         "rss_before_fit_mb": member["rss_before_fit_mb"], **core["members"][member["member"]]["holdout"]},
        {"variant": f"platform Dagster whole graph ({dagster['chosen']} {dagster['ensemble_version']})", "key": "dagster", "tree_rss_peak_sampled_mb": dagster["tree_rss_peak_sampled_mb"],
         "training_seconds": dagster["training_seconds"], "wall_seconds": dagster["wall_seconds"],
         "process_wall_seconds": dagster["process_wall_seconds"], "peak_rss_mb": dagster["peak_rss_mb"],
         "rss_before_fit_mb": dagster["rss_before_fit_mb"], **dagster["holdout"]},
    ]
    for row in rows:
        row["training_over_stacking_fit"] = row["training_seconds"] / stacking_fit
        row["wall_over_stacking_fit"] = row["wall_seconds"] / stacking_fit

    machine = {"cpus": os.cpu_count(), "cpu_model": _cpu_model(), "platform": _platform.platform(),
               "omp_num_threads": env.get("OMP_NUM_THREADS")}
    dagster["overhead_seconds"] = dagster["wall_seconds"] - dagster["training_seconds"]
    document = {
        "schema_version": 1,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": _versions(),
        "dataset": {"name": core["dataset"], "rows": core["rows"], "folds": core["folds"], "seed": core["seed"]},
        "repeats": args.repeats,
        "bench_seconds": bench_seconds,
        "definitions": {
            "training_seconds": "platform: sum of member fit_seconds (out-of-fold fits + refit + holdout "
                                "predict) + sum of strategy fit_seconds (cross-validated selection + refit); "
                                "StackingClassifier: StackingClassifier.fit; best member: its fit_member time",
            "wall_seconds": "platform core: load + split + member fits + selection; Dagster: "
                            "materialize_lifecycle (what `make demo` prints as 'whole graph'); others: fit",
            "process_wall_seconds": "the child process from spawn to exit, incl. interpreter start and imports",
            "peak_rss_mb": "ru_maxrss of that child process from os.wait4 (its own peak, plus any descendants)",
            "rss_before_fit_mb": "VmRSS after imports and data loading, before any fit",
            "tree_rss_peak_sampled_mb": "peak of the summed VmRSS of the child and its live descendants, "
                                        "sampled every 0.1 s (shared pages counted per process: upper estimate)",
            "timings_with_repeats": "with --repeats > 1, stacking and core times are medians over the "
                                    "repeats and their peak RSS the maximum; metrics come from the first",
            "dagster_overhead_seconds": "Dagster whole-graph wall minus the training time inside that run: "
                                        "orchestration, storage, MLflow logging/registration, validation",
        },
        "rows": rows,
        "ratios": ratios,
        "targets": targets,
        "holdout_paired_bootstrap_core_ensemble_minus_stacking": bootstrap,
        "consistency": consistency,
        "variants": {"stacking": stacking_runs, "core": core_runs, "member": member, "dagster": dagster},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False, default=float))
    tmp.replace(out)

    print(markdown(document))
    print(f"\nJSON: {out}")
    return 0


def markdown(doc: dict) -> str:
    lines = [
        f"Lifecycle bench, {doc['date']}, {doc['machine']['cpus']} cores ({doc['machine']['cpu_model']}), "
        f"dataset {doc['dataset']['name']} ({doc['dataset']['rows']['train']} train / "
        f"{doc['dataset']['rows']['holdout']} holdout rows, {doc['dataset']['folds']} folds); StackingClassifier "
        f"and platform core: median time / max peak RSS of {doc['repeats']} alternating run(s)",
        "",
        "| variant | training time (s) | wall (s) | process wall (s) | peak RSS (MB) | process-tree RSS, sampled (MB) "
        "| RSS before fit (MB) "
        "| train / stacking fit | wall / stacking fit | ROC AUC | log loss | ECE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['variant']} | {r['training_seconds']:.1f} | {r['wall_seconds']:.1f} | "
            f"{r['process_wall_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['tree_rss_peak_sampled_mb']:.0f} | "
            f"{_fmt(r['rss_before_fit_mb'], 0)} | "
            f"{r['training_over_stacking_fit']:.2f}x | {r['wall_over_stacking_fit']:.2f}x | "
            f"{r['roc_auc']:.4f} | {r['log_loss']:.4f} | {r['ece']:.4f} |"
        )
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in doc["ratios"].items()]
    lines += ["", "| target | met |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else '**no**'} |" for k, v in doc["targets"].items()]
    core = doc["variants"]["core"][0]
    dag = doc["variants"]["dagster"]
    lines += [
        "",
        f"Platform core training time split: members {core['member_fit_seconds']:.1f}s + strategy selection "
        f"{core['strategy_selection_seconds']:.1f}s. Dagster run: members {dag['member_fit_seconds']:.1f}s + "
        f"selection {dag['strategy_selection_seconds']:.1f}s; steps "
        + ", ".join(f"{k} {v:.1f}s" for k, v in dag["step_seconds"].items()) + ".",
        f"Dagster run: {dag['overhead_seconds']:.1f}s of its {dag['wall_seconds']:.1f}s wall is not training "
        f"(orchestration, storage, MLflow logging and registration, validation); imports took "
        f"{dag['imports_seconds']:.1f}s more. Peak RSS of the Dagster process itself "
        f"{dag['child_self_peak_rss_mb']:.0f} MB; the largest of the {dag['subprocesses_spawned']} "
        f"subprocess(es) it spawned peaked at {dag['child_descendants_peak_rss_mb']:.0f} MB ("
        + ", ".join(f"{n}x {k}" for k, n in dag["subprocess_kinds"].items()) + ").",
        "Inside the Dagster run: " + ", ".join(
            f"{k} {v['seconds']:.1f}s over {v['calls']} call(s)" for k, v in dag["timed_calls"].items()) + ".",
        "Holdout, platform ensemble minus StackingClassifier (paired bootstrap, {r} resamples): ROC AUC "
        "{a:+.4f} [95% {a0:+.4f}, {a1:+.4f}], log loss {l:+.4f} [95% {l0:+.4f}, {l1:+.4f}].".format(
            r=doc["holdout_paired_bootstrap_core_ensemble_minus_stacking"]["resamples"],
            a=doc["holdout_paired_bootstrap_core_ensemble_minus_stacking"]["roc_auc_diff"],
            a0=doc["holdout_paired_bootstrap_core_ensemble_minus_stacking"]["roc_auc_diff_ci95"][0],
            a1=doc["holdout_paired_bootstrap_core_ensemble_minus_stacking"]["roc_auc_diff_ci95"][1],
            l=doc["holdout_paired_bootstrap_core_ensemble_minus_stacking"]["log_loss_diff"],
            l0=doc["holdout_paired_bootstrap_core_ensemble_minus_stacking"]["log_loss_diff_ci95"][0],
            l1=doc["holdout_paired_bootstrap_core_ensemble_minus_stacking"]["log_loss_diff_ci95"][1]),
        "Consistency: " + ", ".join(f"{k}={_fmt(v, 6)}" for k, v in doc["consistency"].items()),
        f"Bench total: {doc['bench_seconds']:.0f}s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeat the stacking and core variants (alternating order); medians are reported")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON output (default {DEFAULT_OUT})")
    parser.add_argument("--keep-home", action="store_true", help="keep the temp work dir (logs, platform home)")
    # internal: child mode
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--member", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    return dispatch(parser, argv, run_child, run_parent)


def dispatch(parser: argparse.ArgumentParser, argv, child, parent) -> int:
    """A bench script is its own child: `--variant` runs one measured variant, otherwise the parent."""
    args = parser.parse_args(argv)
    if args.variant:
        return child(args)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
