"""The release status of a dataset: every version with its stage, gates and decision in force,
the aliases, and the verified promotions and approvals logs (call under the release lock)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from ensemble_platform.ensemble.config import ConfigStore
from ensemble_platform.governance.approvals import ApprovalRecord, Approvals, ReleaseRefused
from ensemble_platform.governance.gate_text import gates_status
from ensemble_platform.governance.promotion import promotions_log
from ensemble_platform.governance.registry import Registry, ensemble_model_name
from ensemble_platform.governance.version_record import read_version
from ensemble_platform.settings import PlatformPaths
from ensemble_platform.tags import APPROVAL_TAG


class VersionRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    registered_version: str | None
    strategy: str
    config_hash: str
    stage: str  # "-" when in no stage
    gates: str | None  # the gate status with waivers on record; None when not evaluated
    decision: str  # the decision in force, or "pending"


class ReleaseStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    dataset: str
    versions: tuple[VersionRow, ...]
    aliases: dict[str, str]  # alias -> ensemble version (or "registered N" for a version without a config)
    promotions: tuple[dict[str, Any], ...]  # the verified promotions log (promotions, rollbacks, recoveries)
    approvals: tuple[ApprovalRecord, ...]

    def document(self) -> dict[str, Any]:
        """The status as JSON (`ensemble-platform status --json`)."""
        return {
            "dataset": self.dataset,
            "versions": [row.model_dump() for row in self.versions],
            "aliases": dict(self.aliases),
            "promotions": list(self.promotions),
            "approvals": [r.model_dump(mode="json") for r in self.approvals],
        }


def release_status(paths: PlatformPaths, registry: Registry, dataset: str) -> ReleaseStatus:
    store = ConfigStore(paths.configs_dir(dataset))
    stages = registry.stage_state(dataset)
    approvals = Approvals(paths, dataset)
    cross_check_approvals(paths, registry, dataset)
    rows = []
    for version in store.versions():
        record = read_version(paths, registry, dataset, version, store=store, registered=False)
        config, gates = record.config, record.gates
        decision = approvals.latest(version, config.config_hash)
        rows.append(VersionRow(
            version=version, registered_version=config.registered_version, strategy=config.strategy,
            config_hash=config.config_hash, stage=stages.stage_of(str(config.registered_version)) or "-",
            gates=None if gates is None else gates_status(
                gates, decision.waived if decision and decision.decision == "approve" else ()),
            decision=decision.summary() if decision else "pending",
        ))
    by_version = {row.registered_version: row.version for row in rows}
    return ReleaseStatus(
        dataset=dataset,
        versions=tuple(rows),
        aliases={alias: by_version.get(v, f"registered {v}") for alias, v in sorted(stages.aliases.items())},
        promotions=tuple(promotions_log(paths, dataset).verify()),
        approvals=tuple(approvals.records()),
    )


def cross_check_approvals(paths: PlatformPaths, registry: Registry, dataset: str) -> int:
    """Every decision the registry's numbered tags record must be the same entry of the
    approvals log: a log shortened or rewritten together with its checkpoint (a lost checkpoint
    re-anchored after the fact) is still caught. Returns how many tags were checked."""
    entries = {e["seq"]: e for e in Approvals(paths, dataset).log.verify()}
    checked = 0
    for version in registry.model_versions(ensemble_model_name(dataset)):
        for key, value in version.tags.items():
            if not key.startswith(APPROVAL_TAG + "."):
                continue
            mirrored, seq = json.loads(value), int(key.rsplit(".", 1)[1])
            entry = entries.get(seq)
            if entry is None or entry.get("sha256") != mirrored.get("sha256"):
                raise ReleaseRefused(
                    f"the registry records approval {seq} of {dataset} ({mirrored.get('decision')} by "
                    f"{mirrored.get('reviewer')}) but approvals.jsonl "
                    + ("has no such entry (shortened)" if entry is None else "holds a different entry (rewritten)"))
            checked += 1
    return checked
