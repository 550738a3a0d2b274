"""Replay: re-score a recorded decision's stored input through the bundle of the recorded version (resolved
from the platform home, verified against the recorded manifest SHA-256) and compare every output bit for bit.

Members excluded at decision time are excluded again (with the recorded reason), so a degraded decision
replays to the same bits too. No MLflow registry is involved."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble_platform.decisions.records import (
    AGREEMENT,
    COMBINED,
    DATASET,
    DECISION,
    ENSEMBLE_VERSION,
    EXCLUDED,
    FALLBACK,
    FEATURES,
    INPUT_SHA256,
    KIND,
    KIND_DECISION,
    MANIFEST_SHA256,
    MEMBERS,
    NEEDS_REVIEW,
    PROBABILITY,
    REVIEW_REASONS,
    STORED_COLUMNS,
    input_sha256,
)
from ensemble_platform.errors import PlatformError
from ensemble_platform.service.runner import load_verified_bundle
from ensemble_platform.serving.decider import Decider, RowDecision, jsonable_features
from ensemble_platform.settings import PlatformPaths

REPLAY_TIMEOUT_S = 60.0


class ReplayError(PlatformError):
    """A record that cannot be replayed (not a decision, input not stored, bundle missing or changed)."""


@dataclass(frozen=True)
class ReplayResult:
    decision_id: str
    bundle: Path
    compared: int
    differences: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def bundle_dir(paths: PlatformPaths, dataset: str, version: str) -> Path:
    return paths.bundles_dir(dataset) / version


def _show(value: Any) -> str:
    return f"{value!r} ({value.hex()})" if isinstance(value, float) else repr(value)


def _compare(name: str, recorded: Any, replayed: Any, differences: list[str]) -> int:
    same = type(recorded) is type(replayed) and recorded == replayed
    if isinstance(recorded, float) and isinstance(replayed, float):
        same = recorded.hex() == replayed.hex()
    if not same:
        differences.append(f"{name}: recorded {_show(recorded)}, replayed {_show(replayed)}")
    return 1


def compare_row(record: Mapping[str, Any], row: RowDecision) -> tuple[int, list[str]]:
    differences: list[str] = []
    compared = 0
    for name, replayed in ((PROBABILITY, row.probability), (COMBINED, row.combined), (DECISION, row.decision),
                           (AGREEMENT, row.agreement), (NEEDS_REVIEW, row.needs_review),
                           (REVIEW_REASONS, list(row.review_reasons)), (FALLBACK, row.fallback)):
        compared += _compare(name, record.get(name), replayed, differences)
    recorded_members: Mapping[str, Any] = record.get(MEMBERS, {})
    if sorted(recorded_members) != sorted(row.members):
        differences.append(f"members: recorded {sorted(recorded_members)}, replayed {sorted(row.members)}")
    for member, output in row.members.items():
        if member in recorded_members:
            compared += _compare(f"members.{member}.probability", recorded_members[member].get(PROBABILITY),
                                 output.probability, differences)
    return compared, differences


def replay_record(record: Mapping[str, Any], paths: PlatformPaths) -> ReplayResult:
    if record.get(KIND) != KIND_DECISION:
        raise ReplayError(f"record {record.get('id')!r} is a {record.get(KIND)!r}, not a decision; only decisions replay")
    features: dict[str, Any] = dict(record.get(FEATURES, {}))
    directory = bundle_dir(paths, str(record[DATASET]), str(record[ENSEMBLE_VERSION]))
    if not directory.is_dir():
        raise ReplayError(f"bundle of {record[DATASET]} {record[ENSEMBLE_VERSION]} not found at {directory}")
    manifest, runtime, _ = load_verified_bundle(directory, str(record[MANIFEST_SHA256]))
    missing = [c for c in runtime.schema.features if c not in features]
    if missing:
        raise ReplayError(f"record {record.get('id')!r} cannot be replayed: input column(s) {missing} were not stored "
                          f"(stored_columns {record.get(STORED_COLUMNS)})")
    decider = Decider(runtime, manifest, member_timeout_s=REPLAY_TIMEOUT_S, min_members=1,
                      max_missing_share=float(record.get("max_missing_share", 0.5)))
    try:
        canonical = decider.validate([features])
        differences: list[str] = []
        _compare(INPUT_SHA256, record.get(INPUT_SHA256), input_sha256(jsonable_features(canonical[0])), differences)
        batch = decider.decide_validated(canonical, [dict(record.get(EXCLUDED, {}))])
    finally:
        decider.close()
    compared, row_differences = compare_row(record, batch.rows[0])
    return ReplayResult(str(record.get("id")), directory, compared + 1, differences + row_differences)

