"""The shadow comparison report of a (production, candidate) pair: Markdown, self-contained HTML and the
evidence as JSON, under `reports/<dataset>/shadow/<production>__<candidate>/shadow.*` (atomic writes).
The model card of the candidate shows the evidence of every report written for it (`shadow_documents`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ensemble_platform.decisions.shadow import ShadowEvidence, shadow_gate
from ensemble_platform.governance.rendering import (
    ReportDocument,
    Section,
    fmt,
    md_table,
    md_text,
    percent,
    write_report,
)
from ensemble_platform.policy import ShadowGatePolicy
from ensemble_platform.settings import PlatformPaths

SHADOW_DIR = "shadow"
STEM = "shadow"
PAIR_SEPARATOR = "__"


def shadow_dir(paths: PlatformPaths, dataset: str, production_version: str, candidate_version: str) -> Path:
    return paths.reports_dir(dataset) / SHADOW_DIR / f"{production_version}{PAIR_SEPARATOR}{candidate_version}"


def _overview(e: ShadowEvidence) -> str:
    rows: list[list[object]] = [
        ["production version", e.production_version], ["candidate version", e.candidate_version],
        ["candidate config hash", ", ".join(h[:12] for h in e.candidate_config_hashes)],
        ["candidate bundle manifest", ", ".join(m[:12] for m in e.candidate_manifests)],
        ["shadowed decisions", e.shadowed], ["scored by the candidate", e.scored],
        ["candidate failures", e.failed], ["candidate error rate", percent(e.error_rate)],
        ["failures by kind", ", ".join(f"{k}: {n}" for k, n in e.errors_by_kind.items()) or "none"],
        ["first shadowed", e.first_at], ["last shadowed", e.last_at], ["period (days)", e.days],
        ["shadow lag p50 / max (ms)", f"{fmt(e.lag_ms_p50, 1)} / {fmt(e.lag_ms_max, 1)}"],
    ]
    return md_table(["property", "value"], rows)


def _decisions(e: ShadowEvidence) -> str:
    diff = e.probability_difference
    rows: list[list[object]] = [
        ["flip rate (candidate decides the other class)", e.flip_rate],
        ["flips to positive (production 0, candidate 1)", e.flips_to_positive],
        ["flips to negative (production 1, candidate 0)", e.flips_to_negative],
        ["decision agreement", e.decision_agreement],
        ["probability difference, mean (candidate − production)", diff.mean if diff else None],
        ["|probability difference|, mean", diff.mean_abs if diff else None],
        ["|probability difference|, p95", diff.p95_abs if diff else None],
        ["|probability difference|, max", diff.max_abs if diff else None],
        ["member agreement, production mean", e.production_agreement_mean],
        ["member agreement, candidate mean", e.candidate_agreement_mean],
    ]
    return md_table(["measure", "value"], rows)


def _outcomes(e: ShadowEvidence) -> str:
    o = e.outcomes
    if o is None:
        return "_No shadowed decision has a known outcome (no `outcome` record, no reviewer resolution) yet._"
    rows = [[name, m.roc_auc, m.log_loss, m.accuracy] for name, m in
            ((f"production {e.production_version}", o.production), (f"candidate {e.candidate_version}", o.candidate))]
    return (f"On the same {o.labelled} labelled decisions ({o.positives} positive; {o.from_outcomes} from "
            f"registered outcomes, {o.from_reviews} from reviewers' resolutions):\n\n"
            + md_table(["version", "roc_auc", "log_loss", "accuracy"], rows))


def _gate(e: ShadowEvidence, policy: ShadowGatePolicy | None) -> str:
    if policy is None or not policy.required:
        return ("The dataset's `operations.shadow` policy requires no shadow evidence before production "
                "(off by default).")
    passed, reasons = shadow_gate(e, policy)
    limits = md_table(["limit", "value"], [["min_days", policy.min_days], ["min_decisions", policy.min_decisions],
                                           ["max_flip_rate", policy.max_flip_rate]])
    verdict = "**Passes** the shadow gate." if passed else "**Fails** the shadow gate: " + md_text("; ".join(reasons))
    return verdict + "\n\n" + limits


def shadow_report(evidence: ShadowEvidence, policy: ShadowGatePolicy | None = None) -> ReportDocument:
    e = evidence
    return ReportDocument(
        f"Shadow comparison: {e.dataset} {e.candidate_version} beside production {e.production_version}",
        f"{e.shadowed} production decisions shadowed from {e.first_at or '–'} to {e.last_at or '–'}",
        [Section("Overview", _overview(e)), Section("Decisions and probabilities", _decisions(e)),
         Section("Outcomes", _outcomes(e)), Section("Release gate", _gate(e, policy))])


def write_shadow_report(paths: PlatformPaths, evidence: ShadowEvidence,
                        policy: ShadowGatePolicy | None = None) -> dict[str, Path]:
    """Write `shadow.md`, `shadow.html` and `shadow.json` (the evidence) of the pair; returns their paths."""
    directory = shadow_dir(paths, evidence.dataset, evidence.production_version, evidence.candidate_version)
    return write_report(shadow_report(evidence, policy), directory, STEM, evidence.model_dump(mode="json"))


def shadow_documents(paths: PlatformPaths, dataset: str, candidate_version: str,
                     config_hash: str | None = None) -> list[dict[str, Any]]:
    """The evidence (as written) of every shadow report of `candidate_version` (scored with `config_hash`,
    when given), by production version."""
    root = paths.reports_dir(dataset) / SHADOW_DIR
    if not root.is_dir():
        return []
    found = sorted(root.glob(f"*{PAIR_SEPARATOR}{candidate_version}/{STEM}.json"))
    documents = [json.loads(path.read_text()) for path in found]
    return [d for d in documents if d.get("candidate_version") == candidate_version
            and (config_hash is None or config_hash in d.get("candidate_config_hashes", []))]


def evidence_section(documents: list[dict[str, Any]]) -> Section:
    """The model card's section: one row per production version the candidate shadowed."""
    rows = []
    for d in documents:
        diff = d.get("probability_difference") or {}
        outcomes = d.get("outcomes") or {}
        rows.append([d["production_version"], d["shadowed"], d["days"], d["failed"], d["flip_rate"],
                     diff.get("mean_abs"), diff.get("max_abs"), outcomes.get("labelled", 0),
                     (outcomes.get("production") or {}).get("log_loss"), (outcomes.get("candidate") or {}).get("log_loss")])
    return Section("Shadow evidence", (
        "This version scored production's requests in shadow (off the response path, never answered); "
        "the full comparison is in `reports/<dataset>/shadow/`.\n\n"
        + md_table(["production", "shadowed", "days", "failed", "flip rate", "mean |Δp|", "max |Δp|",
                    "labelled", "production log loss", "candidate log loss"], rows)))
