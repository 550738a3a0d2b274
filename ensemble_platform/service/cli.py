"""Command line of the decision service: serve a bundle, create tokens, show / verify / export / replay
recorded decisions. `add_subcommands(subparsers)` adds them to the platform's argparse CLI; the handlers
read `args.home` (the platform's global `--home`) like the other commands. Also runnable on its own:
`python -m ensemble_platform.service --home H serve --bundle ... --manifest-sha256 ...`."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any

from ensemble_platform.errors import PlatformError
from ensemble_platform.policy import GovernancePolicy, OperationsPolicy
from ensemble_platform.settings import PlatformPaths

DEFAULT_PORT = 8080
EXPORT_FORMATS = ("jsonl", "parquet")
DEFAULT_SERVE_COMMAND = "serve"


def _paths(args: argparse.Namespace) -> PlatformPaths:
    return PlatformPaths.from_env(getattr(args, "home", None))


def _decision_log(args: argparse.Namespace):
    from ensemble_platform.decisions.log import DecisionLog

    return DecisionLog.for_home(_paths(args))


def cmd_serve(args: argparse.Namespace) -> int:
    """Verify and load the bundle, open the decision log and the token file, serve until interrupted."""
    from ensemble_platform.service.app import NO_AUTH_WARNING, create_app
    from ensemble_platform.service.runner import load_verified_bundle, serve
    from ensemble_platform.service.tokens import TokenStore
    from ensemble_platform.serving.decider import Decider

    paths = _paths(args)
    if args.bundle is None:
        args.bundle, args.manifest_sha256 = _production_bundle(paths, args.dataset)
    elif not args.manifest_sha256:
        raise PlatformError("--bundle needs --manifest-sha256: the SHA-256 its manifest must have (from the registry "
                            "tag ensemble_platform.manifest_sha256 or the release record); or serve --dataset D")
    manifest, runtime, manifest_sha256 = load_verified_bundle(Path(args.bundle), args.manifest_sha256)
    listed = manifest.get("governance")
    governance: dict[str, Any] = listed if isinstance(listed, dict) else {}
    min_members = args.min_members or int(governance.get("min_members", GovernancePolicy().min_members))
    decider = Decider(runtime, manifest, member_timeout_s=args.member_timeout, min_members=min_members,
                      max_missing_share=args.max_missing_share)
    operations = _operations(paths, decider.dataset)
    sla_hours = args.review_sla_hours or operations.review_sla_hours
    segment = args.segment_column if args.segment_column is not None else operations.segment_column
    tokens = TokenStore.for_home(paths)
    if not args.no_auth:
        tokens.tokens()  # a token file that does not verify is refused now, naming it, not at the first request
    decision_log = _decision_log(args)
    shadow = None
    try:
        if args.shadow:
            from ensemble_platform.service.shadow import ShadowCollector, open_shadow

            shadow = open_shadow(paths, args.shadow, decider, decision_log, member_timeout_s=args.member_timeout,
                                 max_missing_share=args.max_missing_share)
        app = create_app(decider, decision_log, tokens, auth=not args.no_auth, manifest_sha256=manifest_sha256,
                         store_columns=args.store_columns, bundle_path=str(Path(args.bundle).resolve()),
                         review_sla_hours=sla_hours, segment_column=segment or None, shadow=shadow)
    except BaseException as exc:
        if shadow is not None:
            shadow.close()
        decision_log.close()
        if isinstance(exc, ValueError):
            raise PlatformError(str(exc)) from exc
        raise
    if shadow is not None:
        from ensemble_platform.service.metrics import PREFIX

        app.state.service.metrics.registry.register(ShadowCollector(shadow, PREFIX))
        print(f"shadow: {args.shadow} scores every request off the response path (recorded as kind 'shadow')",
              flush=True)
    print(f"verified {args.bundle}: {decider.dataset} {decider.ensemble_version} (manifest {manifest_sha256[:16]}...), "
          f"{len(runtime.members)} members, min_members {decider.min_members}", flush=True)
    print(f"decision log: {decision_log.where} ({decision_log.count()} entries); review SLA {sla_hours:g} h"
          + (f", segments by {segment}" if segment else ""), flush=True)
    if args.no_auth:
        print(f"WARNING: {NO_AUTH_WARNING}", file=sys.stderr, flush=True)
    elif not tokens.tokens():
        print(f"no tokens yet: create one with `tokens create --scope decide --name NAME` ({tokens.path})", flush=True)
    # A full GC pass over the ~700k objects loaded so far stalls a request for ~400 ms now and then
    # (bench/README.md, shadow section): move them to the permanent generation once, before serving.
    gc.collect()
    gc.freeze()
    try:
        serve(app, args.host, args.port)
    finally:
        if shadow is not None:
            shadow.close()
        decision_log.close()
        decider.close()
    return 0


def _operations(paths: PlatformPaths, dataset: str) -> OperationsPolicy:
    """The `operations:` policy of `dataset`'s spec when this home knows the dataset, else the defaults."""
    from ensemble_platform.data.catalog import DatasetCatalog

    if dataset not in DatasetCatalog(paths).entries():
        return OperationsPolicy()
    return DatasetCatalog(paths).spec(dataset).operations


def _production_bundle(paths: PlatformPaths, dataset: str | None) -> tuple[str, str]:
    """The production bundle and the manifest hash the registry recorded (the only registry read:
    at start-up, never while serving)."""
    from ensemble_platform.data.spec import load_spec
    from ensemble_platform.governance.release import Release

    name = dataset if dataset and not dataset.endswith((".yaml", ".yml")) else load_spec(dataset).name
    bundle = Release(paths).production_bundle(name)
    if bundle is None:
        raise PlatformError(f"{name} has no production version to serve; promote one, or pass --bundle")
    directory, manifest_sha256, _ = bundle
    return str(directory), manifest_sha256


def cmd_tokens_create(args: argparse.Namespace) -> int:
    from ensemble_platform.service.tokens import TokenStore

    store = TokenStore.for_home(_paths(args))
    token = store.create_token(args.name, args.scope)
    print(f"token {args.name!r} with scope(s) {sorted(set(args.scope))} (stored as its SHA-256 in {store.path}):")
    print(token)
    print("it is shown only this once", file=sys.stderr)
    return 0


def cmd_tokens_sign(args: argparse.Namespace) -> int:
    from ensemble_platform.service.tokens import TokenStore

    store = TokenStore.for_home(_paths(args))
    tokens = store.sign_as_is()
    print(f"signed {store.path} as it is, with key {store.key.key_id}; its tokens:")
    for token in tokens:
        print(f"  {token.name}: {', '.join(token.scopes)} (created {token.created_at})")
    return 0


def _record(args: argparse.Namespace) -> dict[str, Any]:
    """The stored record `args.id`; a platform error naming it when the log has none."""
    decision_log = _decision_log(args)
    try:
        entry = decision_log.get(args.id)
    finally:
        decision_log.close()
    if entry is None:
        raise PlatformError(f"no record {args.id!r} in the decision log")
    return entry


def cmd_decisions_show(args: argparse.Namespace) -> int:
    print(json.dumps(_record(args), indent=2, sort_keys=True))
    return 0


def cmd_decisions_verify(args: argparse.Namespace) -> int:
    decision_log = _decision_log(args)
    try:
        total = decision_log.verify()
        kinds: dict[str, int] = {}
        for entry in decision_log.entries():
            kinds[str(entry.get("kind"))] = kinds.get(str(entry.get("kind")), 0) + 1
    finally:
        decision_log.close()
    detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "empty"
    print(f"{decision_log.where}: verified {total} entries ({detail}): every entry chains, its MAC verifies, "
          f"and the log matches its signed checkpoint")
    return 0


def _flat(entry: dict[str, Any]) -> dict[str, Any]:
    """A record for a table: nested values as JSON text."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for k, v in entry.items()}


def since_time(value: str) -> str:
    """`--since` as the stored `created_at` text of that instant (UTC to the microsecond), so that text
    order is time order: '2026-12-05T04:00:00+01:00' is 03:00 UTC (compared as text it was 04:00). A date
    alone is its midnight UTC; a time without a zone is refused."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO-8601 time, e.g. 2026-01-01T00:00:00+00:00 "
                                         "or 2026-01-01") from None
    if moment.tzinfo is None:
        if "T" in value or " " in value.strip():
            raise argparse.ArgumentTypeError(f"{value!r} has no time zone; add one, e.g. {value}+00:00")
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def cmd_decisions_export(args: argparse.Namespace) -> int:
    from ensemble_platform.files import atomic_path

    output = Path(args.output)
    if output.is_dir():
        raise PlatformError(f"--output {output} is a directory; give a file path")
    decision_log = _decision_log(args)
    try:
        entries = decision_log.verified_entries(args.since)  # a tampered log exports nothing
    finally:
        decision_log.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:  # a reader never finds half an export
        if args.format == "jsonl":
            with open(tmp, "w") as handle:
                for entry in entries:
                    handle.write(json.dumps(entry, sort_keys=True) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([_flat(e) for e in entries]), tmp)
    print(f"exported {len(entries)} entries" + (f" since {args.since}" if args.since else "") + f" to {output}")
    return 0


def cmd_decisions_replay(args: argparse.Namespace) -> int:
    from ensemble_platform.service.replay import replay_record

    result = replay_record(_record(args), _paths(args))
    if not result.identical:
        print(f"MISMATCH: decision {args.id} replayed through {result.bundle} differs:", file=sys.stderr)
        for line in result.differences:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"decision {args.id}: replayed through {result.bundle}; all {result.compared} outputs identical to the bit")
    return 0


# --- the review queue -----------------------------------------------------------------------------

def _queue(args: argparse.Namespace):
    """The home's review queue, its SLA from --sla-hours, else the --dataset spec's, else the default."""
    from ensemble_platform.decisions.log import decision_log_exists, decision_store_location
    from ensemble_platform.decisions.queue import ReviewQueue

    paths = _paths(args)
    if not decision_log_exists(paths):
        raise PlatformError(f"no decision log for {paths.home} yet ({decision_store_location(paths)}): "
                            f"nothing was decided")
    sla = args.sla_hours or (_operations(paths, args.dataset).review_sla_hours if args.dataset
                             else OperationsPolicy().review_sla_hours)
    return ReviewQueue.for_home(paths, sla_hours=sla)


def _print_item(document: dict[str, Any]) -> None:
    ensemble = document["ensemble"]
    claim = f", claimed by {document['claimed_by']}" if document["claimed_by"] else ""
    done = (f", resolved by {document['resolved_by']}: decision {document['reviewer_decision']}"
            if document["resolved_by"] else "")
    print(f"{document['decision_id']}  {document['status']}{claim}{done}  age {document['age_hours']:.1f} h"
          + ("  PAST SLA" if document["past_sla"] else ""))
    print(f"  reasons {', '.join(document['reasons'])}; segment {document['segment']}; ensemble decision "
          f"{ensemble['decision']} (p={ensemble['probability']:.4f}, agreement {ensemble['agreement']:.2f})")


def cmd_reviews_list(args: argparse.Namespace) -> int:
    with _queue(args) as queue:
        items = queue.items(args.status, args.reason, args.segment, args.limit)
        now, sla = queue.clock(), queue.sla_hours * 3600
        documents = [item.document(now, sla) for item in items]
    if args.json:
        print(json.dumps(documents, indent=2, sort_keys=True))
        return 0
    for document in documents:
        _print_item(document)
    print(f"{len(documents)} item(s) ({args.status}" + (f", reason {args.reason}" if args.reason else "")
          + (f", segment {args.segment}" if args.segment else "") + "), oldest first")
    return 0


def cmd_reviews_show(args: argparse.Namespace) -> int:
    with _queue(args) as queue:
        document = queue.get(args.id).document(queue.clock(), queue.sla_hours * 3600)
    print(json.dumps(document, indent=2, sort_keys=True))
    return 0


def cmd_reviews_act(args: argparse.Namespace) -> int:
    with _queue(args) as queue:
        if args.reviews_command == "claim":
            item = queue.claim(args.id, args.reviewer)
        elif args.reviews_command == "release":
            item = queue.release(args.id, args.reviewer, note=args.note, force=args.force)
        else:
            item = queue.resolve(args.id, args.reviewer, args.decision, args.note)
        document = item.document(queue.clock(), queue.sla_hours * 3600)
    print(f"{args.reviews_command}: recorded in the decision log")
    _print_item(document)
    return 0


def cmd_reviews_sla(args: argparse.Namespace) -> int:
    with _queue(args) as queue:
        sla = queue.sla().document()
    if args.json:
        print(json.dumps(sla, indent=2, sort_keys=True))
    else:
        print(review_sla_line(sla))
    return 1 if sla["breached"] and args.exit_code else 0


def review_sla_line(sla: dict[str, Any]) -> str:
    oldest = "none open" if sla["oldest_open_age_hours"] is None else f"oldest open {sla['oldest_open_age_hours']:.1f} h"
    median = sla["median_resolution_hours"]
    return (f"review queue: {sla['depth']} unresolved ({sla['open']} open, {sla['claimed']} claimed), {oldest}, "
            f"{sla['past_sla']} past the {sla['sla_hours']:g} h SLA"
            + (" -- SLA BREACHED" if sla["breached"] else "")
            + f"; {sla['resolved']} resolved" + (f" (median {median:.1f} h)" if median is not None else ""))


def _add_review_commands(sub: Any) -> None:
    reviews = sub.add_parser("reviews", help="the human review queue: list, show, claim, release, resolve, sla")
    reviews_sub = reviews.add_subparsers(dest="reviews_command", required=True)

    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        parser = reviews_sub.add_parser(name, help=help_text)
        parser.add_argument("--dataset", help="read the review SLA from this dataset's spec (operations:)")
        parser.add_argument("--sla-hours", type=float, help="the review SLA in hours (overrides the spec)")
        parser.set_defaults(func=func)
        return parser

    listing = command("list", "items oldest first", cmd_reviews_list)
    listing.add_argument("--status", default="unresolved",
                         choices=["open", "claimed", "resolved", "unresolved", "all"],
                         help="which items (default unresolved: open or claimed)")
    listing.add_argument("--reason", help="only items routed for this reason (e.g. low_agreement)")
    listing.add_argument("--segment", help="only items of this segment")
    listing.add_argument("--limit", type=int, help="at most this many items (oldest first)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = command("show", "one item: reasons, the members' outputs, the stored input", cmd_reviews_show)
    show.add_argument("id", help="the decision id")
    claim = command("claim", "claim an open item", cmd_reviews_act)
    claim.add_argument("id", help="the decision id")
    claim.add_argument("--reviewer", required=True, help="who claims the item")
    release = command("release", "give a claim back", cmd_reviews_act)
    release.add_argument("id", help="the decision id")
    release.add_argument("--reviewer", required=True, help="who gives the claim back")
    release.add_argument("--note", default="", help="why (required with --force; recorded)")
    release.add_argument("--force", action="store_true", help="release another reviewer's claim (needs --note)")
    resolve = command("resolve", "record the reviewer's outcome next to the ensemble's", cmd_reviews_act)
    resolve.add_argument("id", help="the decision id")
    resolve.add_argument("--reviewer", required=True, help="who resolves the item (recorded)")
    resolve.add_argument("--decision", type=int, required=True, choices=[0, 1],
                         help="the class the reviewer decides (1: the positive label)")
    resolve.add_argument("--note", required=True, help="the reviewer's justification (recorded)")
    sla = command("sla", "queue depth, oldest open item, items past the SLA, resolution times", cmd_reviews_sla)
    sla.add_argument("--json", action="store_true", help="machine-readable output")
    sla.add_argument("--exit-code", action="store_true", help="exit 1 while the SLA is breached (for cron/alerts)")


def add_subcommands(sub: Any, *, serve_command: str = DEFAULT_SERVE_COMMAND) -> None:
    """Add `<serve_command>`, `tokens create`, `decisions show|verify|export|replay` and `reviews ...` to `sub` (the main
    parser's `add_subparsers()`), each with `func` set like the platform's other commands."""
    serve = sub.add_parser(serve_command, help="serve decisions from a verified bundle (FastAPI, decision log)")
    serve.add_argument("--dataset", help="serve this dataset's production bundle, verified against the manifest "
                                         "SHA-256 the registry recorded (the default when --bundle is not given)")
    serve.add_argument("--bundle", help="a serving bundle directory (needs --manifest-sha256); no registry access")
    serve.add_argument("--manifest-sha256", help="the SHA-256 the bundle's manifest.json must have")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    serve.add_argument("--no-auth", action="store_true", help="serve without bearer tokens (loudly shown in /ready)")
    serve.add_argument("--member-timeout", type=float, default=2.0, help="per-member deadline in seconds")
    serve.add_argument("--min-members", type=int, help="refuse below this many working members "
                                                       "(default: the governance policy's min_members)")
    serve.add_argument("--max-missing-share", type=float, default=0.5,
                       help="route rows missing more than this share of features to review")
    serve.add_argument("--store-columns", nargs="*", metavar="COLUMN",
                       help="input columns kept in each record (default: every feature but the sensitive ones)")
    serve.add_argument("--shadow", metavar="VERSION",
                       help="also score every request with this approved staging version, off the response path "
                            "(recorded as kind 'shadow'; compare with `shadow report`)")
    serve.add_argument("--review-sla-hours", type=float,
                       help="the review queue's SLA (default: the spec's operations.review_sla_hours, 24)")
    serve.add_argument("--segment-column", help="the feature naming a review item's segment "
                                                "(default: the spec's operations.segment_column; '' for none)")
    serve.set_defaults(func=cmd_serve)

    tokens = sub.add_parser("tokens", help="bearer tokens of the decision service")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser("create", help="create a token; its plaintext is printed once")
    create.add_argument("--name", required=True, help="who or what uses the token (shown in the decision records)")
    create.add_argument("--scope", required=True, action="append", choices=["decide", "read", "review"],
                        help="repeat for several scopes")
    create.set_defaults(func=cmd_tokens_create)
    sign = tokens_sub.add_parser("sign", help="sign the token file as it is (check the tokens it lists first): "
                                              "for a file written before token files were signed")
    sign.set_defaults(func=cmd_tokens_sign)

    decisions = sub.add_parser("decisions", help="the decision log: show, verify, export, replay")
    decisions_sub = decisions.add_subparsers(dest="decisions_command", required=True)
    show = decisions_sub.add_parser("show", help="print one record")
    show.add_argument("id", help="the record id (a decision id)")
    show.set_defaults(func=cmd_decisions_show)
    verify = decisions_sub.add_parser("verify", help="verify the whole chain and its signed checkpoint")
    verify.set_defaults(func=cmd_decisions_verify)
    export = decisions_sub.add_parser("export", help="write records (created at or after --since) to a file")
    export.add_argument("--since", type=since_time,
                        help="ISO-8601 time with a zone, or a date (midnight UTC), e.g. 2026-01-01T00:00:00+00:00 "
                             "(default: everything)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl", help="file format (default jsonl)")
    export.add_argument("--output", required=True, help="the file to write (its directory is created)")
    export.set_defaults(func=cmd_decisions_export)
    replay = decisions_sub.add_parser("replay", help="re-score a decision through its bundle; exit 1 on any difference")
    replay.add_argument("id", help="the decision id to re-score")
    replay.set_defaults(func=cmd_decisions_replay)

    _add_review_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    from ensemble_platform.service.arguments import HOME_HELP, accept_home_anywhere
    from ensemble_platform.service.outcomes_cli import add_outcome_commands
    from ensemble_platform.service.shadow_cli import add_shadow_commands

    parser = argparse.ArgumentParser(prog="python -m ensemble_platform.service", description=__doc__)
    parser.add_argument("--home", help=HOME_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub, serve_command="serve")
    add_outcome_commands(sub)
    add_shadow_commands(sub)
    accept_home_anywhere(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ensemble_platform.service.arguments import refuse_unknown_dataset

    args = build_parser().parse_args(argv)
    try:
        refuse_unknown_dataset(args)
        return int(args.func(args))
    except PlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
