"""`shadow report --dataset D [--production V --candidate V] [--json]`: the comparison of each (production,
candidate) pair the decision log holds for D, written under `reports/<D>/shadow/<production>__<candidate>/`,
judged against the spec's `operations.shadow` policy, and shown on the candidate's model card (regenerated).
`add_shadow_commands(subparsers)` adds it to an argparse CLI; handlers read `args.home`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ensemble_platform.errors import PlatformError
from ensemble_platform.policy import OperationsPolicy, ShadowGatePolicy
from ensemble_platform.settings import PlatformPaths


def _dataset_name(dataset: str) -> str:
    from ensemble_platform.data.spec import load_spec

    return load_spec(dataset).name if dataset.endswith((".yaml", ".yml")) else dataset


def _policy(paths: PlatformPaths, dataset: str) -> ShadowGatePolicy:
    from ensemble_platform.data.catalog import DatasetCatalog

    catalog = DatasetCatalog(paths)
    return catalog.spec(dataset).operations.shadow if dataset in catalog.entries() else OperationsPolicy().shadow


def _refresh_card(paths: PlatformPaths, dataset: str, version: str) -> str | None:
    """Regenerate the candidate's model card (it shows the shadow evidence); the card's path, or None when
    this home has no such version."""
    from ensemble_platform.ensemble.config import ConfigStore
    from ensemble_platform.governance.publishing import publish_model_card
    from ensemble_platform.governance.registry import Registry

    store = ConfigStore(paths.configs_dir(dataset))
    if version not in store.versions():
        return None
    _, written = publish_model_card(Registry(paths), store.load(version))
    return str(written["html"])


def cmd_shadow_report(args: argparse.Namespace) -> int:
    from ensemble_platform.decisions.shadow import read_all_evidence, shadow_gate
    from ensemble_platform.governance.shadow_report import write_shadow_report

    paths = PlatformPaths.from_env(getattr(args, "home", None))
    dataset = _dataset_name(args.dataset)
    if (args.production is None) != (args.candidate is None):
        raise PlatformError("give both --production and --candidate, or neither (every pair)")
    evidences = [e for e in read_all_evidence(paths, dataset)
                 if args.production is None or (e.production_version, e.candidate_version)
                 == (args.production, args.candidate)]
    if not evidences:
        pair = f" for {args.candidate} beside {args.production}" if args.production else ""
        raise PlatformError(f"the decision log of {paths.home} holds no shadow record of {dataset}{pair}; "
                            "serve a staging version beside production with `serve --shadow VERSION`")
    policy = _policy(paths, dataset)
    documents: list[dict[str, Any]] = []
    for evidence in evidences:
        written = write_shadow_report(paths, evidence, policy)
        passed, reasons = shadow_gate(evidence, policy)
        card = _refresh_card(paths, dataset, evidence.candidate_version) if not args.no_card else None
        documents.append({"evidence": evidence.model_dump(mode="json"), "report": str(written["html"]),
                          "gate": {"required": policy.required, "passed": passed, "reasons": reasons},
                          "model_card": card})
    if args.json:
        print(json.dumps(documents, indent=2, sort_keys=True))
        return 0
    for evidence, document in zip(evidences, documents, strict=True):
        gate = document["gate"]
        print(evidence.summary())
        print(f"  gate: {'not required' if not gate['required'] else 'passes' if gate['passed'] else 'FAILS: ' + '; '.join(gate['reasons'])}")
        print(f"  report: {document['report']}" + (f"; model card: {document['model_card']}" if document["model_card"] else ""))
    return 0


def add_shadow_commands(sub: Any) -> None:
    """Add `shadow report` to `sub` (the main parser's `add_subparsers()`), `func` set like the other commands."""
    shadow = sub.add_parser("shadow", help="shadow scoring of a staging candidate beside production: comparison reports")
    shadow_sub = shadow.add_subparsers(dest="shadow_command", required=True)
    report = shadow_sub.add_parser("report", help="compare each (production, candidate) pair from the decision log")
    report.add_argument("--dataset", required=True, help="dataset name or spec path")
    report.add_argument("--production", help="only this production version (with --candidate)")
    report.add_argument("--candidate", help="only this candidate version (with --production)")
    report.add_argument("--json", action="store_true", help="print the evidence and the gate verdict as JSON")
    report.add_argument("--no-card", action="store_true", help="do not regenerate the candidate's model card")
    report.set_defaults(func=cmd_shadow_report)
