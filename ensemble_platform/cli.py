"""`ensemble-platform` command line: run the lifecycle (`demo`); record a reviewer's decision
(`approve`), move a version through the stages (`promote`), show where things stand (`status`,
`audit`), export, check or serve a serving bundle (`export`, `verify-bundle`, `serve`), and feed
it new data (`register-batch`, `retrain`)."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ensemble_platform import instance_settings
from ensemble_platform.errors import PlatformError
from ensemble_platform.settings import DAGSTER_INSTANCE_ENV, PlatformPaths


def prepare_dagster_home(paths: PlatformPaths) -> Path:
    """The home's Dagster directory, with the platform's dagster.yaml written when absent (what
    Dagster's own tools find there). The platform never reads it: the CLI builds its instance from
    its own settings (`_instance`), `make ui` from settings it writes outside the home."""
    paths.ensure()
    config = paths.dagster_home / "dagster.yaml"
    if not config.is_file():
        config.write_text(instance_settings.PLATFORM_SETTINGS)
    return config


def _instance(paths: PlatformPaths):
    """The Dagster instance on the home's storage with the platform's own settings: a dagster.yaml
    under the home can make Dagster run code (`instance_settings`), so it is not read here. With
    ENSEMBLE_PLATFORM_DAGSTER_INSTANCE set (a directory outside the home): that instance."""
    import dagster as dg

    # No public API builds an instance whose settings live apart from its storage directory.
    from dagster._core.instance import InstanceRef

    external = os.environ.get(DAGSTER_INSTANCE_ENV, "").strip()
    if external:
        directory = Path(external).expanduser().resolve()
        if directory.is_relative_to(paths.home.resolve()):
            raise PlatformError(f"{DAGSTER_INSTANCE_ENV}={external} is inside the platform home {paths.home}, where "
                                "anyone who can write the home could change its settings (settings can make Dagster "
                                "run code); keep the instance's dagster.yaml outside the home, or unset it")
        return dg.DagsterInstance.from_config(str(directory))
    prepare_dagster_home(paths)
    os.environ.setdefault("DAGSTER_HOME", str(paths.dagster_home))
    with instance_settings.platform_settings_dir() as settings:
        ref = InstanceRef.from_dir(str(paths.dagster_home), config_dir=settings)
    # The same sqlite files, written through kept engines (`defs.instance_storage`: why).
    from ensemble_platform.defs.instance_storage import platform_storage_data

    return dg.DagsterInstance.from_ref(ref._replace(storage_data=platform_storage_data(ref.storage_data)))


def _causes(exc: BaseException, *, context: bool = False) -> Iterator[BaseException]:
    """`exc` and what is behind it: the user exception Dagster wraps a step's error around, the `from`
    cause (and, with `context`, the exception being handled when it was raised); each once."""
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        yield seen
        visited.add(id(seen))
        seen = getattr(seen, "user_exception", None) or seen.__cause__ or (seen.__context__ if context else None)


def _platform_error(exc: BaseException) -> PlatformError | None:
    """The platform's own error behind `exc`, if any: Dagster wraps step errors, and a platform
    error may itself be raised `from` a library error; users see the platform's message."""
    return next((e for e in _causes(exc) if isinstance(e, PlatformError)), None)


def _interruption(exc: BaseException) -> bool:
    return any(isinstance(e, KeyboardInterrupt) or type(e).__name__ == "DagsterExecutionInterruptedError"
               for e in _causes(exc, context=True))


def _interrupted(args: argparse.Namespace, exc: BaseException) -> int:
    """Ctrl-C: one line, the traceback to the log, exit 130 (the shell's code for SIGINT). Every file the
    platform writes is written atomically, and a rerun resumes (recovering a cut promotion first)."""
    from ensemble_platform.defs.failures import log_traceback

    log = log_traceback(PlatformPaths.from_env(getattr(args, "home", None)).home, exc)
    print(f"interrupted: run the command again to resume (traceback in {log})",
          file=sys.stderr)
    return 130


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


def choice_sentence(validation: dict) -> str:
    """The choice in words: model selection said plainly, else the strategy and the rule."""
    selection = validation["selection"]
    best = selection.get("best_out_of_fold", validation["chosen"])
    if validation.get("model_selection"):
        return (f"model selection: the single member {validation['served_members'][0]} "
                f"({validation['chosen']}); no combination beat it beyond fold noise (best out of fold: {best})")
    noise = "" if best == validation["chosen"] else f"; {best} was better only within fold noise"
    return f"{validation['chosen']} (on out-of-fold {selection['criterion']}, one-standard-error rule{noise})"


def served_sentence(validation: dict) -> str:
    served, pruned = validation.get("served_members", []), validation.get("pruned_members", {})
    text = f"{len(served)} ({', '.join(served)})"
    return text + (f"; pruned (evaluated, not served): {', '.join(pruned)}" if pruned else "")


def cmd_demo(args: argparse.Namespace) -> int:
    from ensemble_platform.definitions import build_definitions
    from ensemble_platform.defs.failures import run_lifecycle_or_refuse

    paths = PlatformPaths.from_env(args.home)
    defs = build_definitions(str(paths.home), args.dataset)
    started = time.perf_counter()
    with _instance(paths) as instance:  # disposed at the end: its storage's kept connections closed
        run = run_lifecycle_or_refuse(defs, instance, paths.home)
    total = time.perf_counter() - started
    validation = run.validation
    assert validation is not None
    dataset = validation["dataset"]
    print()
    print(summary_table(validation))
    print()
    print(f"chosen strategy   : {choice_sentence(validation)}")
    print(f"served members    : {served_sentence(validation)}")
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
    print(f"  release gates   : {reports / 'gates.json'}")
    print()
    _print_release_next_steps(run.gates, validation["ensemble_version"], args)
    print()
    print(f"UIs: `make ui` (Dagster), `.venv/bin/mlflow ui --backend-store-uri {paths.mlflow_tracking_uri}` (MLflow)")
    return 0


def _print_release_next_steps(gates: dict | None, version: str, args: argparse.Namespace) -> None:
    from ensemble_platform.governance.gates import GateReport

    if gates is None:
        return
    report = GateReport.model_validate(gates)
    print(f"release gates     : {report.summary()}; the version is a candidate until a reviewer decides")
    for name in report.failing:
        print(f"  {name}: {report.gate(name).measured()} ({report.gate(name).detail})")
    where = f"{_program()} " + (f"--home {args.home} " if args.home else "")
    dataset = f" --dataset {args.dataset}" if args.dataset else ""
    waive = f" --waive {' '.join(report.failing)}" if report.failing else ""
    print("next (a human decision, recorded):")
    print(f"  {where}approve{dataset} --version {version} --reviewer NAME "
          f"--decision approve|reject --note TEXT{waive}")
    print(f"  {where}promote{dataset} --version {version} --to staging   (then --to production)")
    print(f"  {where}status{dataset}")


def _program() -> str:
    """How the user can run this command again: `.venv/bin/ensemble-platform` after `make demo`."""
    path = Path(sys.argv[0])
    if path.name != "ensemble-platform":
        return "ensemble-platform"
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _dataset_name(value: str | None) -> str:
    """`--dataset` takes the dataset's name, or the path of its spec YAML (default: the current spec)."""
    from ensemble_platform.data.spec import load_spec

    if value is None or value.endswith((".yaml", ".yml")):
        return load_spec(value).name
    return value


def _dataset_spec(args: argparse.Namespace):
    """The spec of `--dataset` (a name from the home's catalogue, or a spec YAML; default the current spec)."""
    from ensemble_platform.data.catalog import DatasetCatalog
    from ensemble_platform.data.spec import load_spec

    value = args.dataset
    if value is None or value.endswith((".yaml", ".yml")):
        return load_spec(value)
    return DatasetCatalog(PlatformPaths.from_env(args.home)).spec(value)


def _run_job(args: argparse.Namespace, job: str, spec, trigger: str, **execute):
    """Run one of the code location's jobs in this process, on the home's instance, for `spec`."""
    from ensemble_platform.definitions import build_definitions
    from ensemble_platform.settings import DATASET_TAG, TRIGGER_TAG

    paths = PlatformPaths.from_env(args.home)
    spec_path = str(spec.spec_path) if spec.spec_path else None
    defs = build_definitions(str(paths.home), spec_path)
    tags = {TRIGGER_TAG: trigger, **({DATASET_TAG: spec_path} if spec_path else {})}
    instance = _instance(paths)
    from ensemble_platform.defs.failures import stack_traces_to_log

    with stack_traces_to_log(paths.home):  # Dagster's stack traces to logs/cli.log, the rest to the terminal
        return defs.resolve_job_def(job).execute_in_process(instance=instance, tags=tags, raise_on_error=False,
                                                            **execute), instance


def cmd_register_batch(args: argparse.Namespace) -> int:
    import json

    from ensemble_platform.data.batches import BatchStore
    from ensemble_platform.data.catalog import DatasetCatalog

    spec = _dataset_spec(args)
    paths = PlatformPaths.from_env(args.home)
    if spec.name not in DatasetCatalog(paths).entries():
        print(f"error: {spec.name} has not been built in {paths.home}; run its graph first (demo)", file=sys.stderr)
        return 2
    store = BatchStore(paths)
    arrival = store.register(spec.name, Path(args.file))
    print(f"{args.file} -> {arrival.path} (batch {arrival.batch_id})")
    if not args.process:
        print("the batch_inbox_sensor takes it in (make ui runs the daemon); or add --process to do it now")
        return 0
    _instance(paths).add_dynamic_partitions("data_batch", [arrival.key])
    result, _ = _run_job(args, "batch_job", spec, "cli", partition_key=arrival.key)
    quarantined = store.quarantine_dir(spec.name, arrival.batch_id)
    if quarantined.is_dir():
        reason = json.loads((quarantined / "reason.json").read_text())["reason"]
        print(f"quarantined: {quarantined}\n  {reason}")
        return 2
    if not result.success:
        print("error: the batch job failed; see the run in the Dagster UI", file=sys.stderr)
        return 2
    drift = result.output_for_node("batch_drift_report")
    print(f"accepted; scored by {drift['scored_by']}")
    print(f"drift: {'RETRAIN' if drift['retrain'] else 'no retraining'}: " + "; ".join(drift["reasons"]))
    print(f"  report: {paths.monitoring_dir(spec.name) / 'drift' / arrival.batch_id}")
    performance = result.output_for_node("batch_performance")
    if performance.get("labelled"):
        ensemble = performance["performance"]["ensemble"]
        print(f"labelled rows: {ensemble['rows']}, ensemble accuracy {ensemble['accuracy']:.4f}, "
              f"log loss {ensemble['log_loss']:.4f} ({paths.monitoring_dir(spec.name) / 'performance.html'})")
    if drift["retrain"]:
        print(f"retrain: the drift_retraining_sensor requests it; or run `{_program()} retrain --dataset {spec.name}`")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    spec = _dataset_spec(args)
    result, _ = _run_job(args, "retraining_job", spec, "cli",
                         run_config={"ops": {"retrain": {"config": {"reason": args.reason}}}})
    if not result.success:
        print("error: retraining failed; see the runs in the Dagster UI", file=sys.stderr)
        return 2
    summary = result.output_for_node("retrain")
    if not summary["changed"]:
        print(f"{spec.name}: retrained; nothing changed (same data, same members): still {summary['ensemble_version']}")
        return 0
    print(f"{spec.name}: new candidate {summary['ensemble_version']} ({summary['strategy']}), "
          f"{summary['train_rows']} training rows, gates {summary['gates']}; production unchanged")
    return 0


def _release(args: argparse.Namespace):
    from ensemble_platform.governance.release import Release

    return Release(PlatformPaths.from_env(args.home))


def cmd_approve(args: argparse.Namespace) -> int:
    dataset = _dataset_name(args.dataset)
    record = _release(args).approve(dataset, args.version, args.reviewer, args.decision, args.note,
                                    args.waive or [], args.config_hash)
    print(f"{dataset} {args.version}: {record.summary()}")
    print(f"  config {record.config_hash}")
    if record.waived:
        print(f"  waived: {', '.join(record.waived)}")
    print(f"  recorded as #{record.seq} in the approvals log (sha256 {record.sha256[:16]}...) and on "
          f"{record.registered_model} v{record.registered_version}; model card regenerated")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    dataset = _dataset_name(args.dataset)
    result = _release(args).promote(dataset, args.version, args.to, args.by)
    if not result.changed:
        print(f"{dataset} {args.version} is already in {args.to}; nothing changed")
        return 0
    record = result.record
    replaced = f", replacing {record.replaced}" if record.replaced and record.replaced != args.version else ""
    print(f"{dataset} {args.version}: {record.kind} {record.from_} -> {args.to}{replaced}")
    if result.bundle:
        print(f"  serving bundle : {result.bundle.path}")
        print(f"  archive        : {result.bundle.archive} (sha256 {result.bundle.archive_sha256})")
        print(f"  serve it       : ensemble-platform serve --dataset {dataset}   (decisions recorded; "
              "create a token first: ensemble-platform tokens create --scope decide --name NAME)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    bundle = _release(args).export(_dataset_name(args.dataset), args.version)
    print(f"serving bundle : {bundle.path} (manifest sha256 {bundle.manifest_sha256})")
    print(f"archive        : {bundle.archive} (sha256 {bundle.archive_sha256})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    status = _release(args).status(_dataset_name(args.dataset)).document()
    status["review_queue"] = _review_sla(args, status["dataset"])
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(f"dataset {status['dataset']}")
    print(_table(["version", "registered", "stage", "strategy", "config", "gates", "decision in force"],
                 [[r["version"], r["registered_version"], r["stage"], r["strategy"], r["config_hash"][:12],
                   r["gates"] or "not evaluated", r["decision"]] for r in status["versions"]]))
    print("aliases: " + (", ".join(f"@{a} -> {v}" for a, v in status["aliases"].items()) or "none"))
    print(f"audit logs verified: {len(status['approvals'])} decision(s), {len(status['promotions'])} promotion(s)")
    for p in status["promotions"][-5:]:
        print(f"  #{p['seq']} {p['promoted_at']} {p['kind']}: {p['version']} {p['from']} -> {p['to']}"
              f" by {p['requested_by']}")
    if status["review_queue"] is not None:
        from ensemble_platform.service.cli import review_sla_line

        print(review_sla_line(status["review_queue"]))
    return 0


def _review_sla(args: argparse.Namespace, dataset: str) -> dict | None:
    """The review queue against the dataset's SLA (None when nothing was decided in this home yet)."""
    from ensemble_platform.data.catalog import DatasetCatalog
    from ensemble_platform.decisions.log import decision_log_exists
    from ensemble_platform.decisions.queue import ReviewQueue

    paths = PlatformPaths.from_env(args.home)
    if not decision_log_exists(paths):
        return None
    sla_hours = DatasetCatalog(paths).spec(dataset).operations.review_sla_hours
    with ReviewQueue.for_home(paths, sla_hours=sla_hours) as queue:
        return queue.sla(dataset).document()


def cmd_audit(args: argparse.Namespace) -> int:
    status = _release(args).status(_dataset_name(args.dataset)).document()
    events = sorted([(a["decided_at"], "decision ", f"{a['version']} {a['decision']} by {a['reviewer']}"
                      + (f", waived {a['waived']}" if a["waived"] else "") + f": {a['note']}")
                     for a in status["approvals"]]
                    + [(p["promoted_at"], "promotion", f"{p['version']} {p['kind']} {p['from']} -> {p['to']} "
                        f"by {p['requested_by']}") for p in status["promotions"]])
    for when, kind, text in events:
        print(f"{when}  {kind}  {text}")
    print(f"both logs verified: every entry chains to the one before ({len(events)} entries)")
    return 0


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    """Exit 0: verified against the given manifest hash and loadable; 1: the files match the manifest beside
    them and load, but nothing vouches for that manifest (no --manifest-sha256); 2: refused."""
    from ensemble_platform.serving.bundle import load_verified

    manifest, _ = load_verified(args.path, args.manifest_sha256)  # loading too: a bundle missing its runtime fails
    approval = manifest["approval"] or {}
    print(f"{args.path}: verified {len(manifest['files'])} files against manifest.json, and loaded")
    print(f"  {manifest['dataset']} {manifest['ensemble_version']} ({manifest['strategy']}), config "
          f"{manifest['config_hash'][:12]}, {len(manifest['members'])} members")
    print(f"  approved by {approval.get('reviewer', '(no approval recorded)')} at {approval.get('decided_at', '-')}")
    if args.manifest_sha256:
        print(f"  manifest SHA-256 {args.manifest_sha256} as required")
        return 0
    print("NOT AUTHENTICATED: without --manifest-sha256 (the registry's ensemble_platform.manifest_sha256 tag) "
          "this shows only that the files match the manifest beside them, which anyone who can write the "
          "folder can rewrite too", file=sys.stderr)
    return 1


def _table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def build_parser() -> argparse.ArgumentParser:
    from ensemble_platform.service.arguments import HOME_HELP, accept_home_anywhere

    parser = argparse.ArgumentParser(prog="ensemble-platform", description=__doc__)
    parser.add_argument("--home", help=HOME_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize the whole asset graph and print a summary")
    demo.add_argument("--dataset", help="dataset spec YAML (default $ENSEMBLE_PLATFORM_DATASET or credit_data)")
    demo.set_defaults(func=cmd_demo)

    dataset_help = "dataset name, or its spec YAML (default: the current spec, $ENSEMBLE_PLATFORM_DATASET or credit_data)"
    approve = sub.add_parser("approve", help="record a reviewer's decision on an ensemble version")
    approve.add_argument("--dataset", help=dataset_help)
    approve.add_argument("--version", required=True, help="ensemble version (semver), e.g. 1.0.0")
    approve.add_argument("--reviewer", required=True, help="who decides (recorded with the decision)")
    approve.add_argument("--decision", required=True, choices=["approve", "reject"],
                         help="approve: the version may be promoted; reject: it may not")
    approve.add_argument("--note", required=True, help="the reviewer's justification (recorded)")
    approve.add_argument("--waive", nargs="+", metavar="GATE", help="failing gates this approval waives")
    approve.add_argument("--config-hash", help="the config hash the reviewer reviewed (refused if it is not current)")
    approve.set_defaults(func=cmd_approve)

    promote = sub.add_parser("promote", help="promote an ensemble version to staging or production")
    promote.add_argument("--dataset", help=dataset_help)
    promote.add_argument("--version", required=True, help="ensemble version (semver) to promote, e.g. 1.0.0")
    promote.add_argument("--to", required=True, choices=["staging", "production"],
                         help="target stage (production needs an approved version, and builds its serving bundle)")
    promote.add_argument("--by", help="who asks for the promotion (default: the current user)")
    promote.set_defaults(func=cmd_promote)

    export = sub.add_parser("export", help="(re)export the serving bundle of an approved version")
    export.add_argument("--dataset", help=dataset_help)
    export.add_argument("--version", required=True, help="approved ensemble version (semver) to export")
    export.set_defaults(func=cmd_export)

    batch = sub.add_parser("register-batch", help="put a batch file (CSV/Parquet) into the dataset's inbox")
    batch.add_argument("file", help="the batch: a CSV or Parquet file with the training table's columns")
    batch.add_argument("--dataset", help=dataset_help)
    batch.add_argument("--process", action="store_true",
                       help="take it in now (validate, drift, performance) instead of waiting for the sensor")
    batch.set_defaults(func=cmd_register_batch)

    retrain = sub.add_parser("retrain", help="retrain a dataset end to end now (ends with a new candidate)")
    retrain.add_argument("--dataset", help=dataset_help)
    retrain.add_argument("--reason", default="requested from the command line",
                         help="why (recorded on the run and the new candidate)")
    retrain.set_defaults(func=cmd_retrain)

    status = sub.add_parser("status", help="versions, stages, gates, decisions and promotions of a dataset")
    status.add_argument("--dataset", help=dataset_help)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    audit = sub.add_parser("audit", help="every recorded decision and promotion, after verifying the logs")
    audit.add_argument("--dataset", help=dataset_help)
    audit.set_defaults(func=cmd_audit)

    verify = sub.add_parser("verify-bundle", help="check every file of a serving bundle against its manifest")
    verify.add_argument("path", help="the serving bundle directory (the one holding manifest.json)")
    verify.add_argument("--manifest-sha256", help="also require the manifest itself to have this SHA-256")
    verify.set_defaults(func=cmd_verify_bundle)

    from ensemble_platform.service.cli import add_subcommands

    add_subcommands(sub)  # serve (the decision service), tokens, decisions, reviews
    from ensemble_platform.service.outcomes_cli import add_outcome_commands

    add_outcome_commands(sub)  # outcomes register / report / export-batch
    from ensemble_platform.service.shadow_cli import add_shadow_commands

    add_shadow_commands(sub)  # shadow report

    accept_home_anywhere(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ensemble_platform.service.arguments import refuse_unknown_dataset

    args = build_parser().parse_args(argv)
    try:
        refuse_unknown_dataset(args)
    except PlatformError as exc:  # a usage error: nothing ran, nothing is written (not even a log)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    except Exception as exc:
        if _interruption(exc):  # Dagster turns Ctrl-C during a step into its own error
            return _interrupted(args, exc)
        cause = _platform_error(exc)
        if cause is not None:
            from ensemble_platform.defs.failures import log_traceback

            log = log_traceback(PlatformPaths.from_env(getattr(args, "home", None)).home, exc)
            # The cause stays last on the terminal (a data refusal ends with its failing expectations).
            first, *rest = str(cause).splitlines() or [""]
            print("\n".join([f"error: {first} (traceback in {log})", *rest]), file=sys.stderr)
            return 2
        raise
    except BaseException as exc:  # Dagster's interruption error is a BaseException
        if _interruption(exc):
            return _interrupted(args, exc)
        raise


def entry() -> None:
    """The `ensemble-platform` console script: `main`, then an exit without the interpreter's teardown.

    A command that ran the lifecycle has ~5,300 modules and ~700,000 objects loaded (Dagster, MLflow,
    scikit-learn, Great Expectations); CPython's teardown frees them one by one, which took 1.1-1.4 s
    after the last line was printed (measured on `demo` at 10k rows, bench/README.md "Scale"). Every
    atexit handler still runs (logging's flush and close, temporary-directory finalizers) and both
    streams are flushed, so nothing the command wrote is lost: the platform's files are written
    atomically and synced when written, never by a finalizer. An unexpected exception leaves
    through the normal exit (its traceback printed by the interpreter)."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`... | head`): nothing more can be written
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    entry()
