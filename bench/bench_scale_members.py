"""Bounded against unbounded members at one size (issue 18): each scale-bounded member family fitted
once on the training rows of the synthetic table and scored on its holdout; fit and predict wall
time and holdout AUC / log loss, the bounded one as `catalogue.build_for_rows` gives it.

    .venv/bin/python bench/bench_scale_members.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
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
from ensemble_platform.members.training import positive_proba


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--members", nargs="+", default=["k_nearest_neighbours", "random_forest", "extra_trees",
                                                          "hist_gradient_boosting"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(write_dataset(Path(tmp), args.rows))
        split = split_dataset(load_dataset(spec), spec)
    X, y, H, yh = split.X_train(), split.y_train, split.X_holdout(), split.y_holdout
    results = {}
    for name in args.members:
        for label, model in (("unbounded", get_member_spec(name).build(split.schema, 0)),
                             ("bounded", build_for_rows(name, split.schema, 0, len(y)))):
            started = time.perf_counter()
            model.fit(X, y)
            fit = time.perf_counter() - started
            predict_single_threaded(model)
            started = time.perf_counter()
            proba = positive_proba(model, H)
            predict = time.perf_counter() - started
            metrics = binary_metrics(yh, proba)
            results[f"{name}/{label}"] = {"fit_s": round(fit, 1), "predict_s": round(predict, 1),
                                          "roc_auc": round(metrics["roc_auc"], 4), "log_loss": round(metrics["log_loss"], 4)}
            print(name, label, results[f"{name}/{label}"], flush=True)
    print(json.dumps({"rows": args.rows, "train_rows": len(y), "results": results}, indent=1))


if __name__ == "__main__":
    main()
