"""The serving bundle: everything needed to serve one approved ensemble version, hash-verified.

Layout of `bundles/<dataset>/<version>/` (and the same tree in `<version>.tar.gz`):

    manifest.json                 dataset, semver, config hash, members, input schema, approval,
                                  created_at, and the SHA-256 of every other file
    MLmodel, requirements.txt, python_env.yaml, conda.yaml     (an MLflow pyfunc model)
    data/ensemble/                the runtime as `EnsembleRuntime.save` stores it (runtime.json,
                                  combiner, calibrator; members/<m>.skops byte-identical to each
                                  member's registered MLflow artefact)
    model_card.html, model_card.md

The bundle holds no code: its MLmodel names this module as the pyfunc loader, so the code that
checks the hashes is the installed platform, never something the bundle could have altered.
Loading reads the manifest (JSON), checks that no file is changed, missing or extra, and only
then unpickles anything.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from ensemble_platform import __version__
from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.ensemble.config import EnsembleConfig
from ensemble_platform.ensemble.runtime import EnsembleRuntime, member_file
from ensemble_platform.errors import PlatformError
from ensemble_platform.files import atomic_path
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform.serving.pyfunc import DATA_PATH, RuntimePyfunc

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
PAYLOAD = DATA_PATH  # where MLflow places the loader's data_path
LOADER_MODULE = __name__
_CHUNK = 1 << 20


class BundleError(PlatformError):
    """A bundle that cannot be trusted or used: the message names the file and the problem."""


@dataclass(frozen=True)
class BundleContents:
    """What goes into a bundle (gathered by the release path from the registry and the home)."""

    config: EnsembleConfig
    runtime: EnsembleRuntime  # supplies combiner, calibrator, thresholds and schema
    member_files: dict[str, Path]  # member name -> its registered safe artefact (`member.skops`)
    approval: dict
    model_card: dict[str, Path]  # "html" / "md" -> file
    created_at: str  # ISO-8601; the approval's time, so a re-export is byte-identical
    requirements: list[str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def input_schema(schema: FeatureSchema, unseen_category: str) -> dict[str, object]:
    return {
        "columns": [{"name": c, "type": "numeric"} for c in schema.numeric]
        + [{"name": c, "type": "categorical", "categories": list(schema.categories.get(c, ()))}
           for c in schema.categorical],
        "unseen_category": unseen_category,
        "missing_values": "allowed: each member imputes them",
        "extra_columns": "ignored",
    }


# --- writing ----------------------------------------------------------------------------------

def write_bundle(contents: BundleContents, directory: Path, parity: ParitySet) -> dict:
    """Build the bundle in a temporary directory, verify it, check it reproduces the validated
    holdout scores exactly, then move it into place. Returns the manifest. Nothing is left behind
    when any step fails."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tree = staging / "bundle"
        manifest = _build(contents, tree)
        problems = parity.mismatches(load_bundle(tree).score)
        if problems:
            raise BundleError(f"bundle of {contents.config.dataset} {contents.config.version} does not reproduce "
                              f"the validated holdout scores: {'; '.join(problems)}; nothing was exported")
        if directory.exists():
            shutil.rmtree(directory)
        tree.replace(directory)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build(contents: BundleContents, tree: Path) -> dict:
    import mlflow.pyfunc
    from mlflow.models import Model

    from ensemble_platform.serving.signature import ensemble_signature

    config, runtime = contents.config, contents.runtime
    with tempfile.TemporaryDirectory() as scratch:
        payload = Path(scratch) / PAYLOAD.name
        runtime.save(payload, contents.member_files)
        members = [{"name": ref.name, "family": ref.family, "registered_model": ref.registered_model,
                    "version": ref.version, "run_id": ref.run_id, "file": (PAYLOAD / member_file(ref.name)).as_posix(),
                    "sha256": sha256_file(payload / member_file(ref.name))}
                   for ref in config.members]
        created = datetime.fromisoformat(contents.created_at)
        with warnings.catch_warnings():
            # MLflow hints that integer columns cannot hold missing values: true of inputs, but the
            # only integer column here is the `decision` output, which is never missing.
            warnings.simplefilter("ignore", UserWarning)
            model = Model(
                # Fixed time and id: the same approved version always exports the same bytes.
                utc_time_created=str(created.replace(tzinfo=None)),
                model_uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"{config.config_hash}/{contents.created_at}").hex,
                signature=ensemble_signature(runtime.schema, _output_example()),
                metadata={"ensemble_platform": {"dataset": config.dataset, "ensemble_version": config.version,
                                                "config_hash": config.config_hash}},
            )
            mlflow.pyfunc.save_model(str(tree), loader_module=LOADER_MODULE, data_path=str(payload),
                                     mlflow_model=model, pip_requirements=contents.requirements)
    for key, path in contents.model_card.items():
        shutil.copyfile(path, tree / f"model_card.{key}")
    manifest = {
        "bundle_format": BUNDLE_FORMAT,
        "dataset": config.dataset,
        "ensemble_version": config.version,
        "config_hash": config.config_hash,
        "strategy": config.strategy,
        "registered_model": config.registered_model,
        "registered_version": config.registered_version,
        "code_version": __version__,
        "created_at": contents.created_at,
        "members": members,
        # Evaluated but not served (no file in the bundle): the combination gives them no say.
        "pruned_members": [{"name": ref.name, "registered_model": ref.registered_model, "version": ref.version,
                            "reason": ref.reason} for ref in config.pruned],
        "input_schema": input_schema(runtime.schema, runtime.unseen_category),
        "output": ["probability", "decision", "agreement", "needs_review"],
        "approval": contents.approval,
        "files": {rel: sha256_file(tree / rel) for rel in _relative_files(tree)},
    }
    (tree / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _output_example() -> pd.DataFrame:
    return pd.DataFrame({"probability": [0.5], "decision": [1], "agreement": [1.0], "needs_review": [False]})


def _relative_files(tree: Path) -> list[str]:
    """Every entry of the tree but its own top-level manifest, as relative paths: regular files, and
    symbolic links (to files or folders, which are not followed) so that verification refuses them."""
    found = []
    for root, folders, files in os.walk(tree):  # followlinks=False: a linked folder is listed, not walked
        for name in [*files, *(f for f in folders if (Path(root) / f).is_symlink())]:
            rel = (Path(root) / name).relative_to(tree).as_posix()
            if rel != MANIFEST:
                found.append(rel)
    return sorted(found)


# What a manifest must hold for anything to use it: field -> the JSON types it may have.
_MANIFEST_FIELDS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "ensemble_version": (str,), "strategy": (str,), "config_hash": (str,), "members": (list,),
    "approval": (dict, type(None)), "files": (dict,),
}


def write_archive(directory: Path, archive: Path, created_at: str) -> str:
    """A reproducible .tar.gz of the bundle (sorted entries, fixed times and owners); returns its
    SHA-256, also written beside it as `<archive>.sha256`."""
    mtime = int(datetime.fromisoformat(created_at).timestamp())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rel in [MANIFEST, *_relative_files(directory)]:
            info = tarfile.TarInfo(f"{directory.name}/{rel}")
            data = (directory / rel).read_bytes()
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    with atomic_path(archive) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buffer.getvalue())
    digest = sha256_file(archive)
    archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")
    return digest


# --- verifying and loading --------------------------------------------------------------------

def _parse_manifest(path: Path, raw: bytes, expected_sha256: str | None) -> dict:
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise BundleError(f"{path} has SHA-256 {hashlib.sha256(raw).hexdigest()}, not the expected {expected_sha256}")
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("bundle_format") != BUNDLE_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        found = manifest.get("bundle_format") if isinstance(manifest, dict) else None
        raise BundleError(f"{path}: unsupported bundle format {found!r} (this platform reads format {BUNDLE_FORMAT})")
    wrong = [f"{field!r} ({' or '.join(t.__name__ for t in types)})" for field, types in _MANIFEST_FIELDS.items()
             if field not in manifest or not isinstance(manifest[field], types)]
    if wrong:
        raise BundleError(f"{path}: missing or mistyped field(s) {', '.join(wrong)}")
    return manifest


def read_manifest(directory: Path, expected_sha256: str | None = None) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory} is not a serving bundle: {MANIFEST} is missing")
    return _parse_manifest(path, path.read_bytes(), expected_sha256)


def read_verified(directory: Path, expected_manifest_sha256: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """(manifest, every listed file's bytes), after checking each file against the manifest: raises
    naming each changed, missing or extra file. Every file is read once; callers load from these
    very bytes, so a file swapped on disk after verification is never what gets loaded."""
    directory = Path(directory)
    manifest = read_manifest(directory, expected_manifest_sha256)
    listed: dict[str, str] = manifest["files"]
    present = set(_relative_files(directory))
    links = sorted(rel for rel in present if (directory / rel).is_symlink())
    # lstat: a FIFO or device in a listed file's place would block the read below or never end.
    special = sorted(rel for rel in present if rel not in links and not stat.S_ISREG((directory / rel).lstat().st_mode))
    contents = {rel: (directory / rel).read_bytes() for rel in sorted(set(listed) & present)
                if rel not in links and rel not in special}
    problems = [f"symbolic link {rel} (a bundle holds regular files only)" for rel in links]
    problems += [f"{rel} is not a regular file (a bundle holds regular files only)" for rel in special]
    problems += [f"missing file {rel}" for rel in sorted(set(listed) - present)]
    problems += [f"extra file {rel} (not in the manifest)" for rel in sorted(present - set(listed))]
    problems += [f"changed file {rel} (SHA-256 differs from the manifest)"
                 for rel, data in contents.items() if hashlib.sha256(data).hexdigest() != listed[rel]]
    if problems:
        raise BundleError(f"bundle {directory} failed verification, nothing was loaded: " + "; ".join(problems))
    return manifest, contents


def verify_bundle(directory: Path, expected_manifest_sha256: str | None = None) -> dict:
    """Check every file against the manifest; raise naming each changed, missing or extra file."""
    return read_verified(directory, expected_manifest_sha256)[0]


def load_verified(directory: Path, expected_manifest_sha256: str | None = None) -> tuple[dict, EnsembleRuntime]:
    """(manifest, runtime) of a bundle, deserialised from the bytes that were verified, in a format
    that cannot execute code (see `safe_format`): the safe way to load a bundle from an untrusted path."""
    manifest, contents = read_verified(directory, expected_manifest_sha256)
    prefix = PAYLOAD.as_posix() + "/"
    parts = {rel[len(prefix):]: data for rel, data in contents.items() if rel.startswith(prefix)}
    return manifest, EnsembleRuntime.from_files(parts)


def load_bundle(directory: Path, expected_manifest_sha256: str | None = None) -> EnsembleRuntime:
    """The bundle's runtime, after verification (nothing is deserialised before every hash matches)."""
    return load_verified(directory, expected_manifest_sha256)[1]


def _load_pyfunc(data_path: str) -> RuntimePyfunc:
    """MLflow's loader hook for bundles: `data_path` is `<bundle>/data/ensemble`."""
    return RuntimePyfunc(load_bundle(Path(data_path).resolve().parents[1]))
