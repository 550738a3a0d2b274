"""Reading registered models back: a member as a scikit-learn model, a member's safe artefact
(checked against its SHA-256 tag, whose MAC under the signing key binds it to the version's model
and run), a registered model's files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from ensemble_platform.ensemble.config import MemberRef
from ensemble_platform.ensemble.runtime import load_member_artefact, payload_digest
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.registry_connection import RegistryConnection
from ensemble_platform.integrity.keys import SigningKey, load_signing_key
from ensemble_platform.serving.pyfunc import DATA_PATH
from ensemble_platform.settings import TRUST_PICKLED_MEMBERS_ENV, trust_pickled_members
from ensemble_platform.tags import (
    CONFIG_HASH_TAG,
    FINGERPRINT_TAG,
    MEMBER_ARTEFACT,
    MEMBER_MAC_TAG,
    MEMBER_SHA256_TAG,
    PAYLOAD_MAC_TAG,
    PAYLOAD_SHA256_TAG,
    TRAIN_HASH_TAG,
)


class RegistryDownloads(RegistryConnection):
    """Registered members and models, downloaded or loaded."""

    def load_member(self, model_name: str, version: str) -> tuple[object, ModelVersion]:
        """A registered member version as a scikit-learn model, with its registry entry: from its safe
        artefact (checked against its SHA-256 tag; nothing unpickled) when it has one, as every version
        the platform registers does. A version registered without one (MLflow's cloudpickle from a
        notebook) is unpickled only with ENSEMBLE_PLATFORM_TRUST_PICKLED_MEMBERS=1 (`settings`)."""
        entry = self.client.get_model_version(model_name, str(version))
        with tempfile.TemporaryDirectory() as scratch:
            try:
                artefact = self.download_member_artefact(model_name, version, Path(scratch))
                if artefact is not None:
                    return load_member_artefact(artefact.read_bytes()), entry
            except Exception as exc:  # missing or changed (MLflow's errors, the SHA-256 check), a refused type
                raise PlatformError(f"the safe artefact of {model_name} version {version} cannot be loaded: "
                                    f"{type(exc).__name__}: {exc}") from exc
        if not trust_pickled_members():
            raise PlatformError(
                f"version {version} of {model_name} has no safe artefact ({MEMBER_ARTEFACT}), only an MLflow "
                "cloudpickle model, and unpickling runs whatever code the file holds: refused. Register it with "
                f"its safe artefact (README, 'Registering a member from outside'), or set "
                f"{TRUST_PICKLED_MEMBERS_ENV}=1 where only trusted people can write the MLflow store")
        try:
            model = mlflow.sklearn.load_model(f"models:/{model_name}/{version}")
        except Exception as exc:
            raise PlatformError(f"version {version} of {model_name} cannot be loaded as a scikit-learn model: "
                                f"{type(exc).__name__}: {exc}") from exc
        return model, entry

    def download_member_artefact(self, model_name: str, version: str, destination: Path,
                                 run_id: str | None = None) -> Path | None:
        """The member version's safe artefact, checked against its SHA-256 tag and that tag against
        its MAC (`member_artefact_mac`: model name, run, digest, training split, fingerprint); None for
        a version registered without one (a pickle-only version, loaded only when trusted). Refused:
        a version pointed at another run than `run_id` (the run the caller's record names, e.g. a
        config's member reference), or at a run another version of the model also points at."""
        from mlflow.artifacts import download_artifacts

        entry = self.client.get_model_version(model_name, str(version))
        problem = self._run_problem(model_name, str(version), str(entry.run_id), run_id)
        if problem:
            raise PlatformError(f"version {version} of {model_name} {problem}; the registry was changed")
        expected = entry.tags.get(MEMBER_SHA256_TAG)
        if not expected:
            return None
        problem = member_tag_problem(load_signing_key(self.paths), model_name, str(entry.run_id), dict(entry.tags))
        if problem:
            raise PlatformError(f"{MEMBER_ARTEFACT} of {model_name} version {version} cannot be trusted: {problem}")
        destination.mkdir(parents=True, exist_ok=True)
        path = Path(download_artifacts(run_id=entry.run_id, artifact_path=MEMBER_ARTEFACT, dst_path=str(destination)))
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise PlatformError(f"{MEMBER_ARTEFACT} of {model_name} version {version} has SHA-256 {actual[:12]}, "
                                f"not the {expected[:12]} its registry tag records; the artefact was changed")
        return path

    def _run_problem(self, model_name: str, version: str, actual: str, expected: str | None) -> str | None:
        """Why the version's run is not its own: another than the caller's record names, or one another
        live version of the model also points at (a version made to point at an older signed run, with
        that run's tags, while that version exists; two signed versions swapping runs and tags are caught
        only where a record names the run)."""
        if expected is not None and actual != expected:
            return f"now points at run {actual}, not the run {expected} its member record names"
        if actual in ("", "None"):  # a version created without a run (MLflow allows it): nothing to share
            return None
        sharing = sorted(str(v.version) for v in self.client.search_model_versions(f"name = '{model_name}'")
                         if str(v.run_id) == actual and str(v.version) != version)
        if sharing:
            return f"points at run {actual}, which version(s) {', '.join(sharing)} also point at"
        return None

    def member_artefacts(self, members: Iterable[MemberRef], destination: Path) -> dict[str, Path]:
        """Member name -> its version's safe artefact under `destination` (checked against its SHA-256
        tag), for the members registered with one: what a stored runtime copies byte for byte
        instead of serialising the member again."""
        files = {}
        for member in members:
            local = self.download_member_artefact(member.registered_model, member.version, destination / member.name,
                                                  run_id=member.run_id)
            if local is not None:  # otherwise the runtime stores the member it holds
                files[member.name] = local
        return files

    def download_model(self, model_name: str, version: str, destination: Path) -> Path:
        from mlflow.artifacts import download_artifacts
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

        previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
        os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"  # a bar per model clutters CLI output
        try:
            return Path(download_artifacts(artifact_uri=f"models:/{model_name}/{version}",
                                           dst_path=str(destination)))
        finally:
            if previous is None:
                os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
            else:
                os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous

    # --- the registered ensemble's payload, bound to its config by a keyed digest --------------------

    def payload_mac(self, model_name: str, config_hash: str, digest: str) -> str:
        """HMAC under the signing key (outside the home) of the payload `digest` registered for
        `config_hash` as `model_name`: what a bundle built from it is checked against."""
        return load_signing_key(self.paths).mac(_payload_message(model_name, config_hash, digest))

    def payload_problem(self, model_name: str, tags: dict[str, str], digest: str, config_hash: str) -> str | None:
        """Why the payload with `digest` is not the one registered with these version tags for
        `config_hash` (the caller's config: the approved or validated one, not a tag), or None."""
        recorded, mac = tags.get(PAYLOAD_SHA256_TAG), tags.get(PAYLOAD_MAC_TAG)
        if not recorded or not mac:
            return ("it carries no signed payload digest (registered before payloads were signed: a home from before "
                    "then needs its graph run in a new home)")
        if tags.get(CONFIG_HASH_TAG) != config_hash:
            return f"it was registered for config {str(tags.get(CONFIG_HASH_TAG))[:12]}, not {config_hash[:12]}"
        if not load_signing_key(self.paths).verify(_payload_message(model_name, config_hash, recorded), mac):
            return "the signature of its payload digest does not verify (the tag was changed, or signed with another key)"
        if recorded != digest:
            return f"its files have digest {digest[:12]}, not the {recorded[:12]} registered"
        return None

    def verified_payload(self, model_name: str, version: str, destination: Path, config_hash: str) -> Path:
        """The stored runtime (members, combiner, calibrator, settings) of a registered ensemble version,
        downloaded under `destination` (a private temporary directory), if its files are the ones
        registered for `config_hash`; PlatformError otherwise. The registry's files and tags live under
        the home: the digest is checked against a MAC only the key's holder can make."""
        entry = self.client.get_model_version(model_name, str(version))
        directory = self.download_model(model_name, version, destination) / DATA_PATH
        problem = self.payload_problem(model_name, dict(entry.tags), payload_digest(directory), config_hash)
        if problem:
            raise PlatformError(f"version {version} of {model_name} cannot be used: {problem}; its files under the "
                                "platform home were changed after registration")
        return directory


def _payload_message(model_name: str, config_hash: str, digest: str) -> bytes:
    """What a payload MAC signs: the registered model, the config it was registered for, its digest."""
    return f"ensemble-payload\0{model_name}\0{config_hash}\0{digest}".encode()


def _member_message(model_name: str, run_id: str, tags: dict[str, str]) -> bytes:
    """What a member-artefact MAC signs: the registered model, the run holding the artefact, its digest,
    and the lineage the platform trusts the version for (training split, fingerprint; empty if absent)."""
    fields = (model_name, run_id, tags.get(MEMBER_SHA256_TAG, ""), tags.get(TRAIN_HASH_TAG, ""),
              tags.get(FINGERPRINT_TAG, ""))
    return "\0".join(("member-artefact", *fields)).encode()


def member_artefact_mac(key: SigningKey, model_name: str, run_id: str, tags: dict[str, str]) -> str:
    """MEMBER_MAC_TAG of a member version with these tags: set by whoever registers it holding the key
    (the platform's member stage, `register_outside_member`)."""
    return key.mac(_member_message(model_name, run_id, tags))


def member_tag_problem(key: SigningKey, model_name: str, run_id: str, tags: dict[str, str]) -> str | None:
    """Why a version's SHA-256 and lineage tags cannot be trusted (no MAC, or one that does not verify for
    this model and run), or None. Anyone who can write the MLflow store can rewrite a tag; only the key's
    holder can make its MAC."""
    mac = tags.get(MEMBER_MAC_TAG)
    if not mac:
        return ("its SHA-256 tag is not signed (registered before member artefacts were signed, or outside the "
                "platform without the key: register it again with register_outside_member, or run the graph in a "
                "new home)")
    if not key.verify(_member_message(model_name, run_id, tags), mac):
        return ("the MAC of its SHA-256 and lineage tags does not verify for this model and run (a tag or the "
                "version's run was changed, or it was signed with another key)")
    return None
