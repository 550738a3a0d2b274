"""`ensemble-platform` command line: run the lifecycle (`demo`), show where things stand."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ensemble_platform.errors import PlatformError
from ensemble_platform.settings import HOME_ENV, PlatformPaths


def _instance(paths: PlatformPaths):
    import dagster as dg

    paths.ensure()
    os.environ.setdefault("DAGSTER_HOME", str(paths.dagster_home))
    return dg.DagsterInstance.from_config(str(paths.dagster_home))


def _root_cause(exc: BaseException) -> BaseException:
    """Dagster wraps step errors; users should see the platform's own message."""
    seen = exc
    while True:
        nxt = getattr(seen, "user_exception", None) or seen.__cause__
        if nxt is None or nxt is seen:
            return seen
        seen = nxt


def summary_table(validation: dict) -> str:
    rows = [("ensemble (" + validation["chosen"] + ")", validation["ensemble"])]
    rows += [(f"member {n}", m) for n, m in validation["members"].items()]
    rows += [(f"strategy {n}", m) for n, m in validation["strategies"].items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'model':<{width}}  roc_auc  log_loss  brier   accuracy  ece"]
    for name, m in rows:
        lines.append(
            f"{name:<{width}}  {m['roc_auc']:.4f}   {m['log_loss']:.4f}    {m['brier']:.4f}  "
            f"{m['accuracy']:.4f}    {m['ece']:.4f}"
        )
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from ensemble_platform.definitions import build_definitions
    from ensemble_platform.defs.runner import materialize_lifecycle

    paths = PlatformPaths.from_env(args.home)
    defs = build_definitions(str(paths.home), args.dataset)
    started = time.perf_counter()
    run = materialize_lifecycle(defs, _instance(paths))
    total = time.perf_counter() - started
    validation = run.validation
    assert validation is not None
    dataset = validation["dataset"]
    print()
    print(summary_table(validation))
    print()
    print(f"chosen strategy   : {validation['chosen']} (on out-of-fold {validation['selection']['criterion']})")
    print(f"ensemble version  : {validation['ensemble_version']}  config {validation['config_hash'][:12]}")
    print(f"lift over best member ({validation['best_member']}): "
          f"AUC {validation['lift_over_best_member']['roc_auc']:+.4f}, "
          f"log loss {validation['lift_over_best_member']['log_loss']:+.4f}")
    print(f"whole graph       : {total:.1f}s (governance reports {run.seconds.get('governance', 0.0):.1f}s)")
    print()
    reports = paths.version_reports_dir(dataset, validation["ensemble_version"])
    print("written:")
    print(f"  platform home   : {paths.home}")
    print(f"  model card      : {reports / 'model_card.html'}")
    print(f"  reports         : {reports} (validation, calibration, fairness, agreement)")
    print(f"  configs         : {paths.configs_dir(dataset)}")
    print(f"  predictions     : {paths.predictions_dir(dataset)}")
    print(f"  MLflow store    : {paths.mlflow_tracking_uri}")
    print(f"  Dagster home    : {paths.dagster_home}")
    print()
    print(f"UIs: `make ui` (Dagster), `.venv/bin/mlflow ui --backend-store-uri {paths.mlflow_tracking_uri}` (MLflow)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ensemble-platform", description=__doc__)
    parser.add_argument("--home", help=f"platform home (default ${HOME_ENV} or ./.ensemble_platform)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize the whole asset graph and print a summary")
    demo.add_argument("--dataset", help="dataset spec YAML (default $ENSEMBLE_PLATFORM_DATASET or credit_data)")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - show the platform's message, not a Dagster traceback
        cause = _root_cause(exc)
        if isinstance(cause, PlatformError):
            print(f"error: {cause}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
