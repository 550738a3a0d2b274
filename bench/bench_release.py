"""Release-path benchmark: what the governance path costs, and what the serving bundle costs to
load and run compared with the registered MLflow model of the same version, in one run.

Parent (one process, a fresh temporary platform home, the default dataset):
  the whole asset graph (as `make demo`), then `approve` (gates waived as the demo suggests),
  `promote --to staging`, `promote --to production` (bundle export: registry downloads, MLflow
  pyfunc, parity re-scoring of the holdout, archive), and `export` rebuilt from scratch
  (`--repeats` times, median).
Children (each a fresh process, alternating order, `--repeats` times each; peak RSS via wait4):
  `bundle`    `load_bundle` (verify every hash, then unpickle) and `mlflow.pyfunc.load_model` of
              the bundle; verification alone; predictions for 1 row (median of 50) and for the
              whole holdout.
  `registry`  the baseline: `mlflow.pyfunc.load_model("models:/<dataset>.ensemble/<v>")`, the
              registered model of the same version, and the same predictions.
Ratios are bundle / registry measured in the same run. Results: markdown on stdout, JSON in
bench/results/release.json.

Usage: .venv/bin/python bench/bench_release.py [--repeats N (default 3)] [--keep-home] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lifecycle import REPO, _cpu_model, _median, _self_peak_mb, _versions, dispatch, spawn

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "release.json"
SINGLE_ROW_REPEATS = 50


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def _holdout(home: Path, dataset: str, version: str):
    from ensemble_platform.serving.parity import ParitySet
    from ensemble_platform.settings import PlatformPaths

    return ParitySet.read(PlatformPaths.from_env(home).parity_dir(dataset, version))


def _predict_timings(model_predict, parity) -> dict:
    one = parity.rows.head(1)
    model_predict(one)  # warm caches (first call imports lazily inside the libraries)
    singles = []
    for _ in range(SINGLE_ROW_REPEATS):
        _, seconds = _timed(lambda: model_predict(one))
        singles.append(seconds)
    scored, whole = _timed(lambda: model_predict(parity.rows))
    exact = bool((scored["probability"].to_numpy() == parity.scores["probability"].to_numpy()).all())
    return {"predict_1_row_ms": 1000 * _median(singles), "predict_holdout_seconds": whole,
            "holdout_rows": len(parity.rows), "reproduces_validated_scores_exactly": exact}


def variant_bundle(args: argparse.Namespace) -> dict:
    import mlflow.pyfunc

    from ensemble_platform.serving.bundle import load_bundle, verify_bundle

    parity = _holdout(Path(args.home), args.dataset, args.version)
    bundle = Path(args.bundle)
    _, verify_seconds = _timed(lambda: verify_bundle(bundle))
    runtime, load_seconds = _timed(lambda: load_bundle(bundle))
    model, pyfunc_seconds = _timed(lambda: mlflow.pyfunc.load_model(str(bundle)))
    return {"verify_seconds": verify_seconds, "load_seconds": load_seconds, "pyfunc_load_seconds": pyfunc_seconds,
            **_predict_timings(model.predict, parity)}


def variant_registry(args: argparse.Namespace) -> dict:
    import mlflow
    import mlflow.pyfunc

    from ensemble_platform.settings import PlatformPaths

    paths = PlatformPaths.from_env(args.home)
    mlflow.set_tracking_uri(paths.mlflow_tracking_uri)
    mlflow.set_registry_uri(paths.mlflow_tracking_uri)
    parity = _holdout(Path(args.home), args.dataset, args.version)
    model, seconds = _timed(lambda: mlflow.pyfunc.load_model(f"models:/{args.dataset}.ensemble/{args.registered}"))
    return {"pyfunc_load_seconds": seconds, **_predict_timings(model.predict, parity)}


VARIANTS = {"bundle": variant_bundle, "registry": variant_registry}


def _hwm_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries a parent's high-water
    mark across fork + exec, and this parent holds a whole trained graph."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return _self_peak_mb()


def run_child(args: argparse.Namespace) -> int:
    result = VARIANTS[args.variant](args)
    result["child_self_peak_rss_mb"] = _hwm_mb()
    Path(args.result).write_text(json.dumps(result, indent=2, default=float))
    return 0


def release_path(home: Path, repeats: int) -> dict:
    """Build the default dataset's first version, then time the release path in this process."""
    import dagster as dg

    from ensemble_platform.definitions import build_definitions
    from ensemble_platform.defs.runner import materialize_lifecycle
    from ensemble_platform.governance.release import Release
    from ensemble_platform.settings import PlatformPaths

    paths = PlatformPaths.from_env(home).ensure()
    shutil.copy(REPO / "dagster.yaml", paths.dagster_home / "dagster.yaml")
    run, graph_seconds = _timed(lambda: materialize_lifecycle(
        build_definitions(str(paths.home), None), dg.DagsterInstance.from_config(str(paths.dagster_home)),
        echo=lambda _: None, log_level="WARNING"))
    dataset, version = run.validation["dataset"], run.validation["ensemble_version"]
    release = Release(paths)
    state = release.state(dataset, version)
    _, approve_seconds = _timed(lambda: release.approve(dataset, version, "bench", "approve",
                                                       "benchmark run", state.gates.failing))
    _, staging_seconds = _timed(lambda: release.promote(dataset, version, "staging", "bench"))
    production, production_seconds = _timed(lambda: release.promote(dataset, version, "production", "bench"))
    exports, digests = [], set()
    for _ in range(repeats):
        directory, archive = release.bundle_paths(dataset, version)
        shutil.rmtree(directory)
        archive.unlink()
        bundle, seconds = _timed(lambda: release.export(dataset, version))
        exports.append(seconds)
        digests.add(bundle.archive_sha256)
    directory, archive = release.bundle_paths(dataset, version)
    return {
        "dataset": dataset, "version": version, "registered_version": str(state.registered.version),
        "strategy": state.config.strategy, "failing_gates_waived": state.gates.failing,
        "graph_seconds": graph_seconds, "approve_seconds": approve_seconds,
        "promote_staging_seconds": staging_seconds, "promote_production_seconds": production_seconds,
        "export_seconds_median": _median(exports), "export_seconds": exports,
        "reexport_byte_identical": digests == {production.bundle.archive_sha256},
        "bundle_path": str(directory),
        "bundle_mb": round(sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20, 2),
        "archive_mb": round(archive.stat().st_size / 2**20, 2),
        "bundle_files": sum(1 for p in directory.rglob("*") if p.is_file()),
    }


def run_parent(args: argparse.Namespace) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "PYTHONHASHSEED": "0"}
    env.pop("ENSEMBLE_PLATFORM_DATASET", None)
    os.environ.pop("ENSEMBLE_PLATFORM_DATASET", None)
    workdir = Path(tempfile.mkdtemp(prefix="ep_bench_release_"))
    home = workdir / "platform_home"
    started = time.perf_counter()
    try:
        print("  building the first version and timing the release path ...", file=sys.stderr, flush=True)
        path = release_path(home, args.repeats)
        extra = ["--home", str(home), "--dataset", path["dataset"], "--version", path["version"],
                 "--bundle", path["bundle_path"], "--registered", path["registered_version"]]
        runs: dict[str, list[dict]] = {"bundle": [], "registry": []}
        for r in range(args.repeats):
            for variant in (["bundle", "registry"] if r % 2 == 0 else ["registry", "bundle"]):
                runs[variant].append(spawn(variant, workdir, env, extra, label=f"{variant}_{r + 1}",
                                           script=Path(__file__).resolve()))
        doc = summarise(path, runs)
        doc["bench_seconds"] = time.perf_counter() - started
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
        print(markdown(doc))
        print(f"\nwritten: {out}", file=sys.stderr)
    finally:
        if args.keep_home:
            print(f"kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def summarise(path: dict, runs: dict[str, list[dict]]) -> dict:
    def median(variant: str, key: str) -> float:
        return _median([r[key] for r in runs[variant]])

    keys = ("pyfunc_load_seconds", "predict_1_row_ms", "predict_holdout_seconds", "process_wall_seconds")
    variants = {v: {k: median(v, k) for k in keys} for v in runs}
    variants["bundle"] |= {"verify_seconds": median("bundle", "verify_seconds"),
                           "load_seconds": median("bundle", "load_seconds")}
    for v in runs:
        variants[v]["peak_rss_mb"] = max(r["child_self_peak_rss_mb"] for r in runs[v])
        variants[v]["reproduces_validated_scores_exactly"] = all(r["reproduces_validated_scores_exactly"] for r in runs[v])
    b, g = variants["bundle"], variants["registry"]
    return {
        "date": _dt.date.today().isoformat(), "cpu": _cpu_model(), "cores": os.cpu_count(), "versions": _versions(),
        "repeats": len(runs["bundle"]), "release_path": path, "variants": variants, "runs": runs,
        "ratios": {
            "bundle_pyfunc_load_over_registry_pyfunc_load": b["pyfunc_load_seconds"] / g["pyfunc_load_seconds"],
            "bundle_predict_1_row_over_registry": b["predict_1_row_ms"] / g["predict_1_row_ms"],
            "bundle_predict_holdout_over_registry": b["predict_holdout_seconds"] / g["predict_holdout_seconds"],
            "verification_share_of_bundle_load": b["verify_seconds"] / b["load_seconds"],
            "bundle_peak_rss_over_registry": b["peak_rss_mb"] / g["peak_rss_mb"],
            "export_over_whole_graph": path["export_seconds_median"] / path["graph_seconds"],
        },
    }


def markdown(doc: dict) -> str:
    p, b, g, r = doc["release_path"], doc["variants"]["bundle"], doc["variants"]["registry"], doc["ratios"]
    lines = [
        f"release path on {p['dataset']} {p['version']} ({p['strategy']}); whole graph {p['graph_seconds']:.1f}s",
        "",
        "| step | seconds |", "|---|---:|",
        f"| approve (gates re-checked, log + tags, model card regenerated) | {p['approve_seconds']:.2f} |",
        f"| promote to staging | {p['promote_staging_seconds']:.2f} |",
        f"| promote to production (bundle export included) | {p['promote_production_seconds']:.2f} |",
        f"| export from scratch (median of {len(p['export_seconds'])}) | {p['export_seconds_median']:.2f} |",
        "",
        f"bundle {p['bundle_mb']} MB in {p['bundle_files']} files, archive {p['archive_mb']} MB; "
        f"re-export byte-identical: {p['reexport_byte_identical']}",
        "",
        "| load and serve (medians, fresh process each) | bundle | registry model (baseline) | ratio |",
        "|---|---:|---:|---:|",
        f"| `mlflow.pyfunc.load_model` (s) | {b['pyfunc_load_seconds']:.3f} | {g['pyfunc_load_seconds']:.3f} | "
        f"{r['bundle_pyfunc_load_over_registry_pyfunc_load']:.2f}x |",
        f"| predict 1 row (ms) | {b['predict_1_row_ms']:.2f} | {g['predict_1_row_ms']:.2f} | "
        f"{r['bundle_predict_1_row_over_registry']:.2f}x |",
        f"| predict {doc['runs']['bundle'][0]['holdout_rows']} holdout rows (s) | {b['predict_holdout_seconds']:.3f} | "
        f"{g['predict_holdout_seconds']:.3f} | {r['bundle_predict_holdout_over_registry']:.2f}x |",
        f"| peak RSS of the process (MB) | {b['peak_rss_mb']} | {g['peak_rss_mb']} | {r['bundle_peak_rss_over_registry']:.2f}x |",
        f"| reproduces validated scores exactly | {b['reproduces_validated_scores_exactly']} | "
        f"{g['reproduces_validated_scores_exactly']} | |",
        "",
        f"`load_bundle` {b['load_seconds']:.3f}s, of which hash verification {b['verify_seconds']:.3f}s "
        f"({100 * r['verification_share_of_bundle_load']:.0f}%).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--keep-home", action="store_true")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    for hidden in ("--home", "--dataset", "--version", "--bundle", "--registered"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    return dispatch(parser, argv, run_child, run_parent)


if __name__ == "__main__":
    sys.exit(main())
