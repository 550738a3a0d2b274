"""The ensemble config: the versioned artefact that makes decisions, and its semantic version.

MAJOR: the strategy changed. MINOR: a member (or its version) changed, served or evaluated-but-pruned. PATCH: only the learned
combiner parameters (weights, meta-model), the post-hoc calibrator or the governance thresholds
changed.
Identical content keeps the previous version, so re-running on unchanged inputs is a no-op.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ensemble_platform.errors import PlatformError, first_line
from ensemble_platform.files import write_atomic
from ensemble_platform.policy import GovernancePolicy, SelectionPolicy


class MemberRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    family: str
    registered_model: str
    version: str
    run_id: str


class PrunedMember(MemberRef):
    """A member that was trained, registered and evaluated, but that the chosen combiner gives no say:
    it is not served (see `ensemble.pruning`)."""

    reason: str


class EnsembleConfig(BaseModel):
    """What an ensemble version is. `version` is derived; everything else is content."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    version: str = "0.0.0"
    strategy: str
    members: tuple[MemberRef, ...]  # the served members, in the combiner's column order
    # Evaluated but not served: the combiner gives them no say. The registry keeps their versions.
    pruned: tuple[PrunedMember, ...] = ()
    combiner: dict[str, object] = Field(default_factory=dict)
    combiner_sha256: str = ""
    selection_criterion: str = "log_loss"
    # Post-hoc calibrator of the combined probability, fitted on out-of-fold rows only.
    calibration: dict[str, object] = Field(default_factory=lambda: dict[str, object](method="none"))
    # Review, decision and fairness thresholds: part of the content, so changing one is a new version.
    governance: GovernancePolicy = GovernancePolicy()
    data_hash: str = ""
    # The spec's accuracy-cost selection block (content when set; absent keeps the hash it had before).
    selection: SelectionPolicy | None = None
    # Measurements, not content (never hashed): each member's predict seconds per row, timed at fit,
    # and the chosen strategy's expected seconds per row over the members it calls (out of fold).
    member_costs: dict[str, float] = Field(default_factory=dict)
    expected_cost_per_row: float | None = None
    registered_model: str | None = None
    registered_version: str | None = None

    def content(self) -> dict[str, object]:
        """Everything that defines behaviour: not the version, nor where it was registered."""
        # Member run ids are lineage, not behaviour: leaving them out makes the hash the same for
        # the same inputs in any platform home (a member is identified by model name + version).
        # A config with nothing pruned has the content (and hash) it had before pruning existed.
        # Costs are measurements (timing noise must not make a new version); an absent selection
        # block leaves the content as it was before cost-aware selection existed.
        exclude: dict[str, Any] = {
            "version": True, "registered_model": True, "registered_version": True,
            "combiner_sha256": True, "members": {"__all__": {"run_id"}},
            "pruned": {"__all__": {"run_id"}} if self.pruned else True,
            "member_costs": True, "expected_cost_per_row": True,
        }
        if self.selection is None:
            exclude["selection"] = True
        return self.model_dump(mode="json", exclude=exclude)

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.content(), sort_keys=True).encode()).hexdigest()

    @property
    def agreement_threshold(self) -> float:
        return self.governance.agreement_threshold

    @property
    def min_members(self) -> int:
        return self.governance.min_members

    @property
    def decision_threshold(self) -> float:
        return self.governance.decision_threshold

    def member_versions(self) -> dict[str, str]:
        """The served members' versions."""
        return {m.name: m.version for m in self.members}

    def pruned_versions(self) -> dict[str, str]:
        return {m.name: m.version for m in self.pruned}

    @property
    def model_selection(self) -> bool:
        """One member served: the choice was a single model, not a combination."""
        return len(self.members) == 1


def parse_semver(version: str) -> tuple[int, int, int]:
    try:
        major, minor, patch = (int(part) for part in version.split("."))
    except ValueError:
        raise PlatformError(f"ensemble version {version!r} is not MAJOR.MINOR.PATCH") from None
    return major, minor, patch


def bump_kind(previous: EnsembleConfig | None, new: EnsembleConfig) -> str | None:
    """'major' | 'minor' | 'patch' | None (unchanged) | 'initial'."""
    if previous is None:
        return "initial"
    if previous.config_hash == new.config_hash:
        return None
    if previous.strategy != new.strategy:
        return "major"
    if (previous.member_versions() != new.member_versions()
            or previous.pruned_versions() != new.pruned_versions()):
        return "minor"
    return "patch"


def next_version(previous: EnsembleConfig | None, new: EnsembleConfig) -> str:
    kind = bump_kind(previous, new)
    if kind == "initial":
        return "1.0.0"
    assert previous is not None
    major, minor, patch = parse_semver(previous.version)
    return {
        None: previous.version,
        "major": f"{major + 1}.0.0",
        "minor": f"{major}.{minor + 1}.0",
        "patch": f"{major}.{minor}.{patch + 1}",
    }[kind]


class ConfigStore:
    """Ensemble configs of one dataset as JSON files, one per version, under the platform home."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, version: str) -> Path:
        return self.directory / f"{version}.json"

    def versions(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted((p.stem for p in self.directory.glob("*.json")), key=parse_semver)

    def load(self, version: str) -> EnsembleConfig:
        path = self.path(version)
        if not path.is_file():
            raise PlatformError(f"no ensemble config {version} at {path}")
        try:
            return EnsembleConfig.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # pydantic's ValidationError and UnicodeDecodeError are ValueErrors
            raise PlatformError(f"ensemble config {path} is unreadable ({first_line(exc)}): edited or damaged under the "
                                "home; the registry still holds the version's payload") from exc

    def latest(self) -> EnsembleConfig | None:
        versions = self.versions()
        return self.load(versions[-1]) if versions else None

    def save(self, config: EnsembleConfig) -> Path:
        """Write atomically: a crash never leaves a half-written config."""
        return write_atomic(self.path(config.version), config.model_dump_json(indent=2).encode())
