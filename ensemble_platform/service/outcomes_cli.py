"""Command line of outcomes: register observed labels of decisions from a file, report production performance on
labelled decisions, export labelled decisions as a batch for the next retraining. `add_outcome_commands(sub)` adds
`outcomes register|report|export-batch` to the platform's argparse CLI; the handlers read `args.home` (the
platform's global `--home`), and to the service's own CLI (`python -m ensemble_platform.service --home H outcomes
register FILE`)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from ensemble_platform.errors import PlatformError
from ensemble_platform.settings import PlatformPaths


def _paths(args: argparse.Namespace) -> PlatformPaths:
    return PlatformPaths.from_env(getattr(args, "home", None))


def _is_spec_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml"))


def _spec(args: argparse.Namespace):
    """The spec of `--dataset`: a name from the home's catalogue or a spec YAML (default: the current spec)."""
    from ensemble_platform.data.catalog import DatasetCatalog
    from ensemble_platform.data.spec import load_spec

    value = args.dataset
    if value is None or _is_spec_file(value):
        return load_spec(value)
    return DatasetCatalog(_paths(args)).spec(value)


def _store(args: argparse.Namespace, *, required: bool):
    """The home's decision log store, or None when there is none and it is not `required` (none is created)."""
    from ensemble_platform.decisions.log import decision_log_exists, decision_store_location, open_decision_store

    paths = _paths(args)
    if not decision_log_exists(paths):
        if required:
            raise PlatformError(f"no decision log at {decision_store_location(paths)}: there are no decisions to join "
                                f"outcomes to (serve decisions first, or pass the right --home)")
        return None
    return open_decision_store(paths)


def cmd_outcomes_register(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ensemble_platform.decisions.outcomes import register_outcomes

    dataset = None if args.dataset is None else (_spec(args).name if _is_spec_file(args.dataset) else args.dataset)
    store = _store(args, required=True)
    try:
        report = register_outcomes(store, _paths(args), Path(args.file), dataset=dataset,
                                   registered_by=args.by or getpass.getuser(), skip_refused=args.skip_refused)
    finally:
        store.close()
    print(report.summary())
    if report.refused:
        print(f"refused (not recorded):\n{report.refusal_text()}", file=sys.stderr)
        return 1
    return 0


def cmd_outcomes_report(args: argparse.Namespace) -> int:
    from ensemble_platform.decisions.outcomes import labelled_decisions
    from ensemble_platform.decisions.production_performance import production_performance
    from ensemble_platform.governance.production_report import write_production_report

    spec = _spec(args)
    store = _store(args, required=False)
    rows: list[Any] = []
    if store is not None:
        try:
            rows = labelled_decisions(store, spec.name, args.since, args.until)
        finally:
            store.close()
    performance = production_performance(rows, spec.name, spec.governance.calibration_bins)
    written = write_production_report(_paths(args), performance)
    overall = performance.overall
    print(f"{spec.name}: {overall.labelled} labelled decision(s) ({overall.registered} registered, "
          f"{overall.reviewer} by reviewers) over {len(performance.days)} day(s)")
    for name, figures in {"ensemble": overall.ensemble, **overall.members}.items():
        cells = ", ".join(f"{m} {'-' if getattr(figures, m) is None else format(getattr(figures, m), '.4f')}"
                          for m in ("roc_auc", "log_loss", "ece", "accuracy"))
        print(f"  {name}: {figures.rows} row(s), {cells}")
    if overall.review.reviewed:
        print(f"  reviewers agree with the ensemble on {overall.review.agreement:.1%} of {overall.review.reviewed} "
              f"reviewed decision(s)")
    print(f"report: {written['html']}")
    return 0


def cmd_outcomes_export_batch(args: argparse.Namespace) -> int:
    from ensemble_platform.decisions.outcomes import export_training_batch

    spec = _spec(args)
    store = _store(args, required=True)
    try:
        export = export_training_batch(store, _paths(args), spec, since=args.since, until=args.until,
                                       registered_only=args.registered_only)
    finally:
        store.close()
    print(export.summary())
    if export.inbox_file:
        print(f"the batch_inbox_sensor takes it in (make ui runs the daemon); or now: ensemble-platform "
              f"register-batch {export.inbox_file} --dataset {spec.name} --process")
    return 0


def add_outcome_commands(sub: Any) -> None:
    """Add `outcomes register|report|export-batch` to `sub` (the main parser's `add_subparsers()`)."""
    dataset_help = "dataset name, or its spec YAML (default: the current spec, $ENSEMBLE_PLATFORM_DATASET or credit_data)"
    window = {"since": "decisions made at or after this ISO-8601 time, e.g. 2026-01-01",
              "until": "decisions made before this ISO-8601 time"}
    outcomes = sub.add_parser("outcomes", help="observed outcomes of decisions: register, report, export for retraining")
    outcomes_sub = outcomes.add_subparsers(dest="outcomes_command", required=True)

    register = outcomes_sub.add_parser(
        "register", help="record the outcomes (labels) of decisions from a CSV or JSON Lines file",
        description="FILE: CSV with a header, or JSON Lines; columns decision_id (or request_id, with row_index "
                    "when the request decided several rows) and label (1 or the positive label, 0 or the other "
                    "label). All or nothing: any refused line and nothing is recorded.")
    register.add_argument("file", help="the outcomes: CSV with a header, or JSON Lines (see above)")
    register.add_argument("--dataset", help="refuse decisions of any other dataset (name or spec YAML)")
    register.add_argument("--by", help="who registers the outcomes (default: the current user)")
    register.add_argument("--skip-refused", action="store_true",
                          help="record the good lines and report the refused ones (exit 1) instead of recording none")
    register.set_defaults(func=cmd_outcomes_register)

    report = outcomes_sub.add_parser("report", help="performance on labelled production decisions, per day and overall")
    report.add_argument("--dataset", help=dataset_help)
    for name, text in window.items():
        report.add_argument(f"--{name}", help=text)
    report.set_defaults(func=cmd_outcomes_report)

    export = outcomes_sub.add_parser(
        "export-batch", help="put labelled decisions not exported before into the dataset's inbox as a batch "
                             "(validated like any batch, then part of the next retraining)")
    export.add_argument("--dataset", help=dataset_help)
    for name, text in window.items():
        export.add_argument(f"--{name}", help=text)
    export.add_argument("--registered-only", action="store_true",
                        help="only decisions with a registered outcome (not those labelled by a reviewer only)")
    export.set_defaults(func=cmd_outcomes_export_batch)
