"""The bundle of an approved version is built only from the payload registered with its config: attack
tests. The registry's files and tags live under the home; the registered payload's digest carries a MAC
under the signing key, and the export checks it (`RegistryDownloads.verified_payload`). A member version's
artefact digest carries one too, binding it to the version's model and run (`member_tag_problem`): what an
ensemble registration copies and what the member-version sensor adopts."""

import contextlib
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from ensemble_platform.ensemble.config import ConfigStore
from ensemble_platform.ensemble.runtime import (
    COMBINER_FILE,
    SETTINGS_FILE,
    EnsembleRuntime,
    member_file,
    payload_digest,
)
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.registry import ensemble_model_name
from ensemble_platform.governance.release_bundle import remove_bundle
from ensemble_platform.serving.bundle import PAYLOAD, verify_bundle
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform.tags import (
    CONFIG_HASH_TAG,
    FINGERPRINT_TAG,
    MEMBER_MAC_TAG,
    MEMBER_SHA256_TAG,
    PAYLOAD_SHA256_TAG,
    TRAIN_HASH_TAG,
)
from ensemble_platform_tests.conftest import approved_demo

VERSION = "1.0.0"


@pytest.fixture(scope="module")
def approved(tmp_path_factory, credit_slice):
    release, dataset, _ = approved_demo(tmp_path_factory.mktemp("payload"), credit_slice)
    return release, dataset


def _registered_payload_file(release, dataset: str, relative: str) -> Path:
    """The registered ensemble's stored file under the home's MLflow artifacts."""
    source = release.registry.client.get_model_version(ensemble_model_name(dataset), "1").source
    logged = source.rsplit("/", 1)[-1]
    (path,) = [p for p in release.paths.home.rglob(f"{logged}/artifacts/{PAYLOAD.as_posix()}/{relative}")]
    return path


def _member_run_artefact(release, dataset: str, member: str) -> Path:
    run_id = release.registry.client.get_model_version(f"{dataset}.{member}", "1").run_id
    (path,) = [p for p in release.paths.home.rglob("member.skops") if run_id in str(p)]
    return path


def test_a_member_swapped_in_its_own_run_with_its_tag_does_not_reach_the_bundle(approved):
    """Replace a member's artefact in its MLflow run by another valid model and set its SHA-256 tag to
    match (both under the home): the bundle still carries the member registered with the config."""
    release, dataset = approved
    registered = _registered_payload_file(release, dataset, member_file("random_forest")).read_bytes()
    target = _member_run_artefact(release, dataset, "random_forest")
    forged = _member_run_artefact(release, dataset, "logistic_regression").read_bytes()
    original = target.read_bytes()
    remove_bundle(release.paths, dataset, VERSION)  # a fresh build
    target.write_bytes(forged)
    release.registry.client.set_model_version_tag(f"{dataset}.random_forest", "1", MEMBER_SHA256_TAG,
                                                  hashlib.sha256(forged).hexdigest())
    try:
        bundle = release.export(dataset, VERSION)
    finally:
        target.write_bytes(original)
        release.registry.client.set_model_version_tag(f"{dataset}.random_forest", "1", MEMBER_SHA256_TAG,
                                                      hashlib.sha256(original).hexdigest())
    served = (Path(bundle.path) / PAYLOAD / member_file("random_forest")).read_bytes()
    assert served == registered and served != forged


def _lower_threshold(data: bytes) -> bytes:
    """The stored runtime settings with the decision threshold lowered: a valid runtime that decides otherwise."""
    settings = json.loads(data)
    settings["decision_threshold"] = 0.05
    return json.dumps(settings, indent=2, sort_keys=True).encode()


@pytest.mark.parametrize("with_tag", [False, True])
def test_a_changed_registered_payload_is_refused_even_with_parity_and_digest_forged(approved, with_tag):
    """The whole forgery an attacker who can write the home could make: the registered payload's settings
    changed (a lower decision threshold), the parity set rescored to match, optionally the digest tag
    updated. The export refuses; nothing is exported."""
    release, dataset = approved
    combiner = _registered_payload_file(release, dataset, SETTINGS_FILE)
    original = combiner.read_bytes()
    name = ensemble_model_name(dataset)
    recorded = release.registry.client.get_model_version(name, "1").tags[PAYLOAD_SHA256_TAG]
    parity_dir = release.paths.parity_dir(dataset, VERSION)
    parity_files = {p: p.read_bytes() for p in parity_dir.iterdir()}
    remove_bundle(release.paths, dataset, VERSION)  # a fresh build
    combiner.write_bytes(_lower_threshold(original))
    parity = ParitySet.read(parity_dir)
    rescored = EnsembleRuntime.load(combiner.parent).score(parity.rows)
    assert not rescored["decision"].equals(parity.scores["decision"])  # the forgery decides otherwise
    ParitySet(parity.rows, rescored).write(parity_dir)
    if with_tag:
        release.registry.client.set_model_version_tag(name, "1", PAYLOAD_SHA256_TAG,
                                                      payload_digest(combiner.parent))
    try:
        with pytest.raises(PlatformError) as refused:
            release.export(dataset, VERSION)
    finally:
        combiner.write_bytes(original)
        release.registry.client.set_model_version_tag(name, "1", PAYLOAD_SHA256_TAG, recorded)
        for path, data in parity_files.items():
            path.write_bytes(data)
    assert not release.bundle_paths(dataset, VERSION)[0].exists()  # nothing exported
    expected = "signature of its payload digest does not verify" if with_tag else "its files have digest"
    assert expected in str(refused.value) and f"version 1 of {name}" in str(refused.value)


def test_a_payload_is_checked_for_the_callers_config_not_the_tag(approved):
    release, dataset = approved
    name = ensemble_model_name(dataset)
    tags = dict(release.registry.client.get_model_version(name, "1").tags)
    config_hash = release.state(dataset, VERSION).config.config_hash
    assert release.registry.payload_problem(name, tags, tags[PAYLOAD_SHA256_TAG], config_hash) is None
    other = "0" * 64
    assert "registered for config" in release.registry.payload_problem(name, tags, tags[PAYLOAD_SHA256_TAG], other)
    forged = {**tags, CONFIG_HASH_TAG: other}  # the tag moved along: the MAC was made for the real hash
    assert "does not verify" in release.registry.payload_problem(name, forged, tags[PAYLOAD_SHA256_TAG], other)


def test_a_planted_bundle_is_not_reused(approved):
    """An exported bundle whose payload was changed under the home is rebuilt from the registered
    payload at the next export, not reused."""
    release, dataset = approved
    first = release.export(dataset, VERSION)
    combiner = Path(first.path) / PAYLOAD / COMBINER_FILE
    genuine = combiner.read_bytes()
    planted = combiner.with_name("calibrator.skops").read_bytes()
    combiner.write_bytes(planted)
    # Self-consistent: the manifest lists the planted file's hash, so the bundle verifies on its own.
    manifest_path = Path(first.path) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][(PAYLOAD / COMBINER_FILE).as_posix()] = hashlib.sha256(planted).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    verify_bundle(Path(first.path))
    again = release.export(dataset, VERSION)
    assert (Path(again.path) / PAYLOAD / COMBINER_FILE).read_bytes() == genuine
    registered = release.registry.client.get_model_version(ensemble_model_name(dataset), "1").tags[PAYLOAD_SHA256_TAG]
    assert payload_digest(Path(again.path) / PAYLOAD) == registered


@contextlib.contextmanager
def _restored_member(release, dataset: str, member: str):
    """Put the member version's artefact, tags and run back afterwards (the module's home is shared)."""
    name = f"{dataset}.{member}"
    entry = release.registry.client.get_model_version(name, "1")
    artefact = _member_run_artefact(release, dataset, member)
    original = artefact.read_bytes()
    try:
        yield artefact
    finally:
        artefact.write_bytes(original)
        for tag in (MEMBER_SHA256_TAG, MEMBER_MAC_TAG, TRAIN_HASH_TAG, FINGERPRINT_TAG):
            release.registry.client.set_model_version_tag(name, "1", tag, entry.tags[tag])
        _set_version_run(release, name, entry.run_id)


def _set_version_run(release, name: str, run_id: str) -> None:
    """Point a model version at another run, as someone who can write the home's MLflow database can
    (MLflow's client has no call for it)."""
    with contextlib.closing(sqlite3.connect(release.paths.home / "mlflow" / "mlflow.db")) as db, db:
        db.execute("UPDATE model_versions SET run_id = ? WHERE name = ? AND version = 1", (run_id, name))


def _members(release, dataset):
    return ConfigStore(release.paths.configs_dir(dataset)).load(VERSION).members


def test_a_member_artefact_swapped_with_its_digest_tag_is_refused_before_it_is_copied(approved, tmp_path):
    """Before an ensemble is registered, its members' artefacts are copied from their runs. Replace one
    by another valid model and rewrite its SHA-256 tag to match: the tag's MAC no longer verifies, so the
    copy (ensemble registration) and the load (member-version sensor, adoption) refuse; nothing is copied.
    The control: restored, the same calls succeed."""
    release, dataset = approved
    name = f"{dataset}.random_forest"
    forged = _member_run_artefact(release, dataset, "logistic_regression").read_bytes()
    with _restored_member(release, dataset, "random_forest") as artefact:
        artefact.write_bytes(forged)
        release.registry.client.set_model_version_tag(name, "1", MEMBER_SHA256_TAG, hashlib.sha256(forged).hexdigest())
        with pytest.raises(PlatformError, match="MAC of its SHA-256 and lineage tags does not verify"):
            release.registry.member_artefacts(_members(release, dataset), tmp_path / "copy")
        with pytest.raises(PlatformError, match="MAC of its SHA-256 and lineage tags does not verify"):
            release.registry.load_member(name, "1")
        assert not (tmp_path / "copy" / "random_forest").exists()
    assert set(release.registry.member_artefacts(_members(release, dataset), tmp_path / "again")) == {
        m.name for m in _members(release, dataset)}
    model, _ = release.registry.load_member(name, "1")
    assert type(model).__name__ == "Pipeline"


@pytest.mark.parametrize("unsigned", [False, True])
def test_another_versions_signed_tags_or_none_do_not_vouch_for_a_member(approved, tmp_path, unsigned):
    """Replay: copy another member's artefact with its genuine SHA-256 and MAC tags (the MAC binds that
    model's name and run, not this one's), or drop the MAC as a version registered without the key would
    have. Both are refused, naming the reason."""
    release, dataset = approved
    name = f"{dataset}.random_forest"
    donor = release.registry.client.get_model_version(f"{dataset}.logistic_regression", "1").tags
    with _restored_member(release, dataset, "random_forest") as artefact:
        artefact.write_bytes(_member_run_artefact(release, dataset, "logistic_regression").read_bytes())
        release.registry.client.set_model_version_tag(name, "1", MEMBER_SHA256_TAG, donor[MEMBER_SHA256_TAG])
        if unsigned:
            release.registry.client.delete_model_version_tag(name, "1", MEMBER_MAC_TAG)
        else:
            release.registry.client.set_model_version_tag(name, "1", MEMBER_MAC_TAG, donor[MEMBER_MAC_TAG])
        expected = "is not signed" if unsigned else "does not verify for this model and run"
        with pytest.raises(PlatformError, match=expected):
            release.registry.member_artefacts(_members(release, dataset), tmp_path / "copy")
        with pytest.raises(PlatformError, match=expected):
            release.registry.load_member(name, "1")


def test_a_member_version_pointed_at_another_run_is_refused(approved, tmp_path):
    """Repoint the version at another member's run in the MLflow database and give it that run's genuine
    tags: the ensemble's copy refuses because the config's member record names the original run, and a
    plain load refuses because the MAC binds the other model's name."""
    release, dataset = approved
    name = f"{dataset}.random_forest"
    donor = release.registry.client.get_model_version(f"{dataset}.logistic_regression", "1")
    with _restored_member(release, dataset, "random_forest"):
        _set_version_run(release, name, donor.run_id)
        for tag in (MEMBER_SHA256_TAG, MEMBER_MAC_TAG):
            release.registry.client.set_model_version_tag(name, "1", tag, donor.tags[tag])
        with pytest.raises(PlatformError, match=f"now points at run {donor.run_id}"):
            release.registry.member_artefacts(_members(release, dataset), tmp_path / "copy")
        with pytest.raises(PlatformError, match="does not verify for this model and run"):
            release.registry.load_member(name, "1")


def test_a_version_pointed_at_another_signed_version_of_its_own_model_is_refused(approved, tmp_path):
    """Replay within one model: a second genuine, signed version of the member exists (registered with the
    key); version 1 is pointed at its run and given its tags. The ensemble's copy refuses (the config's
    record names version 1's own run) and so does a plain load (two versions now share one run)."""
    import mlflow

    from ensemble_platform.governance.registry import register_outside_member

    release, dataset = approved
    name = f"{dataset}.random_forest"
    entry = release.registry.client.get_model_version(name, "1")
    model, _ = release.registry.load_member(name, "1")
    mlflow.set_experiment(experiment_id=release.registry.experiment_id(dataset))  # artifacts under the home
    second = register_outside_member(model, name, entry.tags[TRAIN_HASH_TAG], paths=release.paths)
    donor = release.registry.client.get_model_version(name, second)
    assert release.registry.load_member(name, second)[1].run_id == donor.run_id  # genuine and loadable
    try:
        with _restored_member(release, dataset, "random_forest"):
            _set_version_run(release, name, donor.run_id)
            for tag in (MEMBER_SHA256_TAG, MEMBER_MAC_TAG, TRAIN_HASH_TAG):
                release.registry.client.set_model_version_tag(name, "1", tag, donor.tags[tag])
            release.registry.client.delete_model_version_tag(name, "1", FINGERPRINT_TAG)
            with pytest.raises(PlatformError, match=f"now points at run {donor.run_id}"):
                release.registry.member_artefacts(_members(release, dataset), tmp_path / "copy")
            with pytest.raises(PlatformError, match=f"which version\\(s\\) {second} also point at"):
                release.registry.load_member(name, "1")
    finally:
        release.registry.client.delete_model_version(name, second)


@pytest.mark.parametrize("tag", [TRAIN_HASH_TAG, FINGERPRINT_TAG])
def test_a_rewritten_lineage_tag_is_refused_and_never_reused(approved, tmp_path, tag):
    """The training-split hash (what shows a member never saw the holdout) and the fingerprint (what makes
    a fit reuse an existing version) are signed with the digest: rewritten, the version is refused for
    copying and loading, and a fingerprint lookup for reuse no longer returns it."""
    release, dataset = approved
    name = f"{dataset}.random_forest"
    entry = release.registry.client.get_model_version(name, "1")
    accept = release.registry._signed_member(name, entry.tags[MEMBER_SHA256_TAG])
    assert str(release.registry.find_version(name, entry.tags[FINGERPRINT_TAG], accept).version) == "1"
    with _restored_member(release, dataset, "random_forest"):
        release.registry.client.set_model_version_tag(name, "1", tag, "0" * 64)
        with pytest.raises(PlatformError, match="lineage tags does not verify"):
            release.registry.member_artefacts(_members(release, dataset), tmp_path / "copy")
        with pytest.raises(PlatformError, match="lineage tags does not verify"):
            release.registry.load_member(name, "1")
        fingerprint = "0" * 64 if tag == FINGERPRINT_TAG else entry.tags[FINGERPRINT_TAG]
        assert release.registry.find_version(name, fingerprint, accept) is None
        assert release.registry.find_version(name, fingerprint) is not None  # the unsigned lookup still would
