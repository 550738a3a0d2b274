"""Release state in the registry: stage tags and aliases of one dataset's ensemble and member
models, written as differences, and all-or-nothing transactions over them (snapshot, restore)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from ensemble_platform.governance.registry_connection import RegistryConnection, ensemble_model_name
from ensemble_platform.governance.stages import STAGE_TAG, StageState

# Member models carry only the stages a version can be served from.
MEMBER_STAGE_ALIASES = ("staging", "production")


@dataclass(frozen=True)
class RegistrySnapshot:
    stages: StageState
    version_tags: dict[str, dict[str, str]]


class RegistryStages(RegistryConnection):
    """Stage tags, aliases and version tags of one dataset's release state."""

    def stage_state(self, dataset: str) -> StageState:
        name = ensemble_model_name(dataset)
        stages = {str(v.version): v.tags[STAGE_TAG] for v in self.model_versions(name) if v.tags.get(STAGE_TAG)}
        members = {m: {a: v for a, v in self.aliases(m).items() if a in MEMBER_STAGE_ALIASES}
                   for m in self.member_model_names(dataset)}
        return StageState(stages, self.aliases(name), members)

    def apply_stage_state(self, dataset: str, new: StageState) -> None:
        """Write the difference between the registry's stage state and `new`."""
        name = ensemble_model_name(dataset)
        old = self.stage_state(dataset)
        for version in sorted(set(old.stages) | set(new.stages), key=int):
            if old.stages.get(version) != new.stages.get(version):
                self._set_tag(name, version, STAGE_TAG, new.stages.get(version))
        self._apply_aliases(name, old.aliases, new.aliases)
        for model in sorted(set(old.member_aliases) | set(new.member_aliases)):
            self._apply_aliases(model, old.member_aliases.get(model, {}), new.member_aliases.get(model, {}))

    def _apply_aliases(self, model: str, old: dict[str, str], new: dict[str, str]) -> None:
        for alias in sorted(set(old) | set(new)):
            if old.get(alias) == new.get(alias):
                continue
            if alias in new:
                self.client.set_registered_model_alias(model, alias, new[alias])
            else:
                self.client.delete_registered_model_alias(model, alias)

    def set_version_tags(self, model_name: str, version: str, tags: dict[str, str | None]) -> None:
        for key, value in tags.items():
            self._set_tag(model_name, version, key, value)

    def _set_tag(self, model_name: str, version: str, key: str, value: str | None) -> None:
        if value is None:
            with contextlib.suppress(MlflowException):
                self.client.delete_model_version_tag(model_name, version, key)
        else:
            self.client.set_model_version_tag(model_name, version, key, value)

    def snapshot(self, dataset: str) -> RegistrySnapshot:
        name = ensemble_model_name(dataset)
        tags = {str(v.version): dict(v.tags) for v in self.model_versions(name)}
        return RegistrySnapshot(self.stage_state(dataset), tags)

    def restore(self, dataset: str, snapshot: RegistrySnapshot) -> None:
        """Put stage state and ensemble version tags back as they were in `snapshot`."""
        name = ensemble_model_name(dataset)
        current = self.snapshot(dataset)
        for version, before in snapshot.version_tags.items():
            now = current.version_tags.get(version, {})
            for key in sorted(set(before) | set(now)):
                if before.get(key) != now.get(key) and key != STAGE_TAG:
                    self._set_tag(name, version, key, before.get(key))
        self.apply_stage_state(dataset, snapshot.stages)

    @contextlib.contextmanager
    def transaction(self, dataset: str) -> Iterator[None]:
        """All-or-nothing registry changes of one dataset's release state: on any error inside,
        aliases and version tags are restored to what they were before."""
        before = self.snapshot(dataset)
        try:
            yield
        except BaseException:
            self.restore(dataset, before)
            raise
