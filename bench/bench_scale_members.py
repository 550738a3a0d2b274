"""Bounded against unbounded members at one size (issue 18): each scale-bounded member family fitted
once on the training rows of the synthetic table and scored on its holdout; fit and predict wall
time, the fitting process's peak RSS and holdout AUC / log loss, the bounded one as
`catalogue.build_for_rows` gives it.

`--variant LABEL:MEMBER:PARAM=VALUE[,PARAM=VALUE...]` adds the bounded member with other settings
(pipeline `set_params` names, values as Python literals) to compare bounds in the same run, e.g.
the k-NN bound before issue 18's re-measurement:

    .venv/bin/python bench/bench_scale_members.py --rows 100000
    .venv/bin/python bench/bench_scale_members.py --rows 100000 --members k_nearest_neighbours \\
        --variant k20k:k_nearest_neighbours:model__max_reference=20000,model__n_neighbors=50

Each fit runs in a forked child (one at a time), so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import write_dataset

from ensemble_platform.data.loading import load_dataset
from ensemble_platform.data.spec import load_spec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.evaluation.metrics import binary_metrics
from ensemble_platform.members.catalogue import build_for_rows, get_member_spec, predict_single_threaded
from ensemble_platform.members.scale import SCALE_ROWS
from ensemble_platform.members.training import positive_proba

_SPLIT = None  # the table, set before forking so children share it


def parse_variant(text: str) -> tuple[str, str, dict[str, object]]:
    """`label:member:a=1,b=x` -> (label, member, {a: 1, b: 'x'})."""
    try:
        label, member, settings = text.split(":", 2)
        params = {}
        for item in settings.split(","):
            key, value = item.split("=", 1)
            try:
                params[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                params[key] = value
    except ValueError:
        raise SystemExit(f"--variant {text!r}: expected LABEL:MEMBER:PARAM=VALUE[,PARAM=VALUE...]") from None
    return label, member, params


def build(name: str, label: str, params: dict[str, object]):
    rows = len(_SPLIT.y_train)
    if label == "unbounded":
        return get_member_spec(name).build(_SPLIT.schema, 0)
    if params:  # a variant is a bounded member with other settings, also on a small (test) table
        rows = max(rows, SCALE_ROWS + 1)
    return build_for_rows(name, _SPLIT.schema, 0, rows).set_params(**params)


def measure(task: tuple[str, str, dict[str, object]]) -> dict:
    name, label, params = task
    model = build(name, label, params)
    started = time.perf_counter()
    model.fit(_SPLIT.X_train(), _SPLIT.y_train)
    fit = time.perf_counter() - started
    predict_single_threaded(model)
    started = time.perf_counter()
    proba = positive_proba(model, _SPLIT.X_holdout())
    predict = time.perf_counter() - started
    metrics = binary_metrics(_SPLIT.y_holdout, proba)
    final = model.steps[-1][1].get_params()
    shown = {k: final[k] for k in ("n_neighbors", "max_reference", "max_samples", "max_depth") if k in final}
    return {"fit_s": round(fit, 1), "predict_s": round(predict, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "roc_auc": round(metrics["roc_auc"], 4), "log_loss": round(metrics["log_loss"], 4), "params": shown}


def main() -> None:
    global _SPLIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--members", nargs="*", default=["k_nearest_neighbours", "random_forest", "extra_trees",
                                                          "hist_gradient_boosting"])
    parser.add_argument("--variant", action="append", default=[], type=parse_variant)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(write_dataset(Path(tmp), args.rows))
        _SPLIT = split_dataset(load_dataset(spec), spec)
    tasks = [(name, label, {}) for name in args.members for label in ("unbounded", "bounded")]
    tasks += [(member, label, params) for label, member, params in args.variant]
    results = {}
    context = multiprocessing.get_context("fork")
    for task in tasks:
        with context.Pool(1) as pool:
            result = pool.apply(measure, (task,))
        results[f"{task[0]}/{task[1]}"] = result
        print(task[0], task[1], result, flush=True)
    print(json.dumps({"rows": args.rows, "train_rows": len(_SPLIT.y_train), "results": results}, indent=1))


if __name__ == "__main__":
    main()
