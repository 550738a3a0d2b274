"""Promotion intents: what a promotion is about to change, written and signed before its first
registry write, so that the next release command finishes or undoes a promotion that a crash
(kill -9, power loss) cut short.

A promotion is: intent written -> registry aliases and stage tags moved -> bundle hash tags set
-> promotions log appended -> intent removed. On the next command, an intent whose log entry is
in the promotions log is rolled forward (the registry is set to the planned state); any other is
rolled back (the registry is restored to the recorded state before it) and the rollback is
appended to the promotions log. The intent is MAC'd with the platform key: a forged intent (which
could otherwise "restore" an arbitrary state) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.registry_stages import RegistrySnapshot
from ensemble_platform.governance.stages import StageState
from ensemble_platform.integrity import canonical_json, load_signing_key
from ensemble_platform.integrity.checkpoint import write_durable
from ensemble_platform.settings import PlatformPaths

INTENT_FILE = "promotion.intent.json"
# Test hook: the promotion kills its own process (SIGKILL) at the named step, to prove recovery.
CRASH_ENV = "ENSEMBLE_PLATFORM_CRASH_AT"
CRASH_POINTS = ("intent_written", "aliases_moved", "tags_written", "logged")


class IntentError(PlatformError):
    """A promotion intent that cannot be trusted (edited, forged, signed with another key)."""


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class PromotionIntent:
    dataset: str
    version: str
    to: str
    entry: dict[str, Any]  # the drafted promotions-log entry
    before: RegistrySnapshot
    planned: StageState
    version_tags: dict[str, str | None]  # tags the promotion sets on the promoted version
    registered_model: str
    registered_version: str

    def body(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "version": self.version, "to": self.to, "entry": self.entry,
            "before": {"stages": dataclasses.asdict(self.before.stages), "version_tags": self.before.version_tags},
            "planned": dataclasses.asdict(self.planned), "version_tags": self.version_tags,
            "registered_model": self.registered_model, "registered_version": self.registered_version,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> PromotionIntent:
        before = body["before"]
        return cls(
            dataset=body["dataset"], version=body["version"], to=body["to"], entry=body["entry"],
            before=RegistrySnapshot(StageState(**before["stages"]), before["version_tags"]),
            planned=StageState(**body["planned"]), version_tags=body["version_tags"],
            registered_model=body["registered_model"], registered_version=body["registered_version"],
        )


class Intents:
    """The pending-promotion intent of one dataset (at most one: promotions hold the release lock)."""

    def __init__(self, paths: PlatformPaths, dataset: str):
        self.path = paths.audit_dir(dataset) / INTENT_FILE
        self.key = load_signing_key(paths)

    def write(self, intent: PromotionIntent) -> None:
        body = intent.body()
        document = {"intent": body, "mac": self.key.mac(canonical_json(body))}
        write_durable(self.path, json.dumps(document, sort_keys=True).encode())

    def read(self) -> PromotionIntent | None:
        if not self.path.exists():
            return None
        try:
            document = json.loads(self.path.read_bytes())
            body, mac = document["intent"], document["mac"]
        except (ValueError, KeyError, TypeError) as exc:
            raise IntentError(f"{self.path} is not a promotion intent ({exc}); an operator must inspect it") from exc
        if not self.key.verify(canonical_json(body), mac):
            raise IntentError(f"{self.path} does not carry a valid signature (forged, edited or signed with another "
                              "key): refusing to roll a promotion forward or back from it")
        return PromotionIntent.from_body(body)

    def clear(self) -> None:
        Path(self.path).unlink(missing_ok=True)
