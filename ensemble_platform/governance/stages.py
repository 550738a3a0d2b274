"""The release lifecycle of ensemble versions, as pure state transitions.

candidate (every validated version) -> staging -> production; the production version it replaces
becomes archived, and promoting an archived version back to production is a rollback.
In the registry this is one alias per stage on `<dataset>.ensemble` (`candidate` points at the
newest candidate, `archived` at the most recently archived), a `stage` tag on every version, and
`staging` / `production` aliases on the member models the staged or produced version uses.

Planning is separated from applying so that the rules are tested without a registry and a
promotion is applied (and undone) as one diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ensemble_platform.governance.approvals import ReleaseRefused

Stage = Literal["candidate", "staging", "production", "archived"]
TARGET_STAGES: tuple[str, ...] = ("staging", "production")
STAGE_TAG = "stage"


@dataclass(frozen=True)
class StageState:
    """Where ensemble versions stand: stage per registered version, ensemble aliases, and the
    member models' stage aliases."""

    stages: dict[str, str] = field(default_factory=dict)  # registered version -> stage
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> registered version
    member_aliases: dict[str, dict[str, str]] = field(default_factory=dict)  # member model -> alias -> version

    def stage_of(self, version: str) -> str | None:
        return self.stages.get(version)


def mark_candidate(state: StageState, version: str) -> StageState:
    """A newly validated version becomes a candidate; a version already in a stage keeps it."""
    if state.stage_of(version) is not None:
        return state
    return replace(state, stages={**state.stages, version: "candidate"},
                   aliases={**state.aliases, "candidate": version})


def plan_promotion(
    state: StageState, version: str, to: str, members: dict[str, str], semver: str = ""
) -> tuple[StageState, str]:
    """The state after promoting `version` (whose member model -> version map is `members`) to
    `to`, and the kind of change: 'unchanged', 'promotion' or 'rollback'."""
    label = semver or f"registered version {version}"
    current = state.stage_of(version)
    if to not in TARGET_STAGES:
        raise ReleaseRefused(f"cannot promote to {to!r}; stages to promote to are {list(TARGET_STAGES)}")
    if current is None:
        raise ReleaseRefused(f"{label} has not been validated (no stage); run the governance job first")
    if current == to:
        return state, "unchanged"
    stages, aliases = dict(state.stages), dict(state.aliases)
    member_aliases = {model: dict(a) for model, a in state.member_aliases.items()}
    if to == "staging":
        if current == "production":
            raise ReleaseRefused(f"{label} is in production; to replace it, promote another version to production")
        previous = aliases.get("staging")
        if previous is not None and previous != version:
            stages[previous] = "candidate"
        kind = "promotion"
    else:
        if current == "candidate":
            raise ReleaseRefused(f"{label} is a candidate; promote it to staging first")
        kind = "rollback" if current == "archived" else "promotion"
        previous = aliases.get("production")
        if aliases.get("staging") == version:
            del aliases["staging"]
            _drop_member_alias(member_aliases, "staging")
        if previous is not None and previous != version:
            stages[previous] = "archived"
            aliases["archived"] = previous
        elif aliases.get("archived") == version:
            del aliases["archived"]
    stages[version] = to
    aliases[to] = version
    if aliases.get("candidate") == version:
        del aliases["candidate"]
    _drop_member_alias(member_aliases, to)
    for model, member_version in members.items():
        member_aliases.setdefault(model, {})[to] = member_version
    return StageState(stages, aliases, member_aliases), kind


def _drop_member_alias(member_aliases: dict[str, dict[str, str]], alias: str) -> None:
    for aliases in member_aliases.values():
        aliases.pop(alias, None)
