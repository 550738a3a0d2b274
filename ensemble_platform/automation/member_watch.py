"""Which datasets need re-validation because a member model got a version their current ensemble
config does not use (retrained by the platform, or registered from outside).

One registry query per tick covers every member model of every dataset in the catalogue. A new
version is examined once: the cursor remembers the highest version seen per member, and the run
key names the exact version set, so the same set is requested at most once even if the cursor is
lost. A version without the lineage the ensemble needs is skipped with a reason naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mlflow.entities.model_registry import ModelVersion

from ensemble_platform.data.catalog import DatasetCatalog
from ensemble_platform.ensemble.config import ConfigStore, EnsembleConfig
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.registry import Registry
from ensemble_platform.members.adoption import lineage_problems
from ensemble_platform.settings import PlatformPaths


@dataclass(frozen=True)
class RevalidationRequest:
    dataset: str
    spec_path: str
    member_versions: dict[str, str]  # every member -> the version the new config should use
    new_versions: dict[str, str]  # the members whose version changes

    @property
    def run_key(self) -> str:
        return f"member-versions:{self.dataset}:" + ",".join(f"{m}={v}" for m, v in sorted(self.member_versions.items()))


@dataclass
class WatchResult:
    requests: list[RevalidationRequest] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cursor: dict[str, dict[str, int]] = field(default_factory=dict)


class MemberWatch:
    def __init__(self, paths: PlatformPaths, registry: Registry):
        self.paths, self.registry = paths, registry

    def tick(self, cursor: dict[str, dict[str, int]]) -> WatchResult:
        result = WatchResult(cursor={d: dict(seen) for d, seen in cursor.items()})
        latest = self._latest_versions()
        for dataset, spec_path in DatasetCatalog(self.paths).entries().items():
            config = ConfigStore(self.paths.configs_dir(dataset)).latest()
            if config is None:
                continue
            seen = result.cursor.setdefault(dataset, {})
            # Pruned members too: a new version of one is re-evaluated (it may earn a say).
            new = {m.name: latest[m.registered_model] for m in (*config.members, *config.pruned)
                   if m.registered_model in latest
                   and int(latest[m.registered_model].version) > max(int(m.version), seen.get(m.name, 0))}
            if not new:
                continue
            for name, version in new.items():
                seen[name] = int(version.version)
            usable = self._usable(dataset, config, new, result.skipped)
            if usable:
                result.requests.append(RevalidationRequest(
                    dataset, str(spec_path), {**config.member_versions(), **config.pruned_versions(), **usable},
                    usable))
        return result

    def _latest_versions(self) -> dict[str, ModelVersion]:
        latest: dict[str, ModelVersion] = {}
        for version in self.registry.client.search_model_versions(""):
            current = latest.get(version.name)
            if current is None or int(version.version) > int(current.version):
                latest[version.name] = version
        return latest

    def _usable(self, dataset: str, config: EnsembleConfig, new: dict[str, ModelVersion],
                skipped: list[str]) -> dict[str, str]:
        train_hash = self._train_hash(config)
        usable = {}
        for name, version in sorted(new.items()):
            try:
                model, _ = self.registry.load_member(version.name, str(version.version))
                problems = lineage_problems(model, dict(version.tags), train_hash)
            except PlatformError as exc:
                problems = [str(exc)]
            if problems:
                skipped.append(f"{dataset}: version {version.version} of {version.name} cannot join the ensemble: "
                               + "; ".join(problems))
            else:
                usable[name] = str(version.version)
        return usable

    def _train_hash(self, config: EnsembleConfig) -> str:
        """The training split the current config was validated on (new members must share it)."""
        path = self.paths.version_reports_dir(config.dataset, config.version) / "validation.json"
        return json.loads(path.read_text())["lineage"]["train_hash"] if path.is_file() else ""
