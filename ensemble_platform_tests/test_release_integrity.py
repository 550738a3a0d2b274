"""Attacks on the release path by someone who can write files under the platform home but holds
no key, and kill -9 of a promotion at every step: each is refused or recovered, nothing is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ensemble_platform import cli
from ensemble_platform.data.spec import load_spec
from ensemble_platform.errors import PlatformError
from ensemble_platform.governance.approvals import ApprovalRecord, Approvals, ReleaseRefused, utc_now
from ensemble_platform.governance.intents import CRASH_ENV, CRASH_POINTS, INTENT_FILE, IntentError, Intents
from ensemble_platform.governance.promotion import PROMOTIONS_FILE, promotions_log
from ensemble_platform.governance.registry import ensemble_model_name
from ensemble_platform.governance.release import BUNDLE_TAGS, Release
from ensemble_platform.integrity import IntegrityError, canonical_json, entry_digest
from ensemble_platform.integrity.jsonl_log import serialise_entry
from ensemble_platform_tests.conftest import approved_demo, home_in_production

VERSION = "1.0.0"


@pytest.fixture(scope="module")
def production(tmp_path_factory, credit_slice):
    paths, spec_path, release, _ = home_in_production(tmp_path_factory.mktemp("attacks"), credit_slice)
    return release, load_spec(spec_path).name


@pytest.fixture
def audit(production):
    """The audit folder, put back as it was after each attack."""
    release, dataset = production
    folder = release.paths.audit_dir(dataset)
    saved = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    yield folder
    for p in folder.iterdir():
        if p.is_file() and p.name not in saved:
            p.unlink()
    for name, data in saved.items():
        (folder / name).write_bytes(data)


def test_a_forged_approval_with_a_recomputed_hash_is_refused(production, audit, capsys):
    release, dataset = production
    path = audit / "approvals.jsonl"
    lines = path.read_text().splitlines()
    forged = json.loads(lines[-1]) | {"reviewer": "Mallory (forged)", "seq": len(lines) + 1,
                                      "prev_sha256": json.loads(lines[-1])["sha256"]}
    forged["sha256"] = entry_digest(forged)  # a writer without the key can recompute the hash, not the MAC
    # Written exactly as the platform writes a line: only the MAC (which needs the key) is wrong.
    path.write_text("\n".join([*lines, canonical_json(forged).decode()]) + "\n")
    with pytest.raises(IntegrityError, match="forged or signed with another key"):
        release.status(dataset)
    assert cli.main(["--home", str(release.paths.home), "status", "--dataset", dataset]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "forged" in err and "Traceback" not in err


@pytest.mark.parametrize("log", ["approvals.jsonl", "promotions.jsonl"])
@pytest.mark.parametrize("cut", ["drop-last-line", "empty", "delete"])
def test_a_shortened_log_is_detected(production, audit, log, cut):
    release, dataset = production
    path = audit / log
    lines = path.read_text().splitlines(keepends=True)
    if cut == "drop-last-line":
        path.write_text("".join(lines[:-1]))
    elif cut == "empty":
        path.write_text("")
    else:
        path.unlink()
    with pytest.raises(IntegrityError, match="truncated|no entries|checkpoint"):
        release.status(dataset)


def test_a_shortened_approvals_log_with_a_reanchored_checkpoint_is_caught_by_the_registry(production, audit):
    """Checkpoint lost and re-anchored after the last line was dropped: the registry's numbered
    approval tags still name the missing decision."""
    release, dataset = production
    path = audit / "approvals.jsonl"
    original = path.read_bytes()
    log = Approvals(release.paths, dataset).log
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    log.reanchor()
    try:
        with pytest.raises(Exception, match="approvals.jsonl has no such entry"):
            release.status(dataset)
    finally:
        path.write_bytes(original)
        log.reanchor()  # the checkpoint follows the restored log again


def test_a_log_without_its_final_newline_is_refused_before_anything_is_written(production, audit):
    release, dataset = production
    path = audit / "approvals.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    name = ensemble_model_name(dataset)
    before = dict(release.registry.client.get_model_version(name, "1").tags)
    with pytest.raises(IntegrityError, match="newline|cut off"):
        release.approve(dataset, VERSION, "carol", "reject", "second thoughts")
    assert dict(release.registry.client.get_model_version(name, "1").tags) == before


def test_a_cut_off_last_line_is_an_error_message_not_a_traceback(production, audit, capsys):
    release, dataset = production
    path = audit / "promotions.jsonl"
    path.write_bytes(path.read_bytes()[:-40])
    assert cli.main(["--home", str(release.paths.home), "status", "--dataset", dataset]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_an_approval_only_in_the_log_does_not_promote(production, audit, tmp_path):
    """Even a correctly signed log line the registry never mirrored is not a recorded decision."""
    release, dataset = production
    approvals = Approvals(release.paths, dataset)
    state = release.state(dataset, VERSION)
    record = ApprovalRecord(dataset=dataset, version=VERSION, config_hash=state.config.config_hash,
                            registered_model=state.registered.name, registered_version="1", decision="approve",
                            reviewer="log-only", note="written to the log alone", waived=tuple(state.gates.failing),
                            failing_gates=tuple(state.gates.failing), decided_at=utc_now())
    approvals.log.append(record.model_dump(mode="json", exclude={"seq", "prev_sha256", "sha256", "mac"}))
    with pytest.raises(Exception, match="not mirrored in the registry"):
        release._admissible_approval(release.state(dataset, VERSION), "production")


def test_serve_refuses_a_production_version_without_its_manifest_hash(production):
    release, dataset = production
    name = ensemble_model_name(dataset)
    manifest = release.registry.client.get_model_version(name, "1").tags[BUNDLE_TAGS[1]]
    release.registry.client.delete_model_version_tag(name, "1", BUNDLE_TAGS[1])
    try:
        with pytest.raises(Exception, match="no recorded manifest hash"):
            release.production_bundle(dataset)
    finally:
        release.registry.client.set_model_version_tag(name, "1", BUNDLE_TAGS[1], manifest)
    assert release.production_bundle(dataset)[1] == manifest


def test_serve_refuses_a_production_record_the_signed_log_does_not_hold(production):
    """The registry's production tag names the bundle manifest to verify against; it lives in a store
    anyone who can write the home can edit. Swapping it (with a bundle of one's own to match) must not
    get that bundle served: the record must be the signed promotions log's last production move."""
    release, dataset = production
    name = ensemble_model_name(dataset)
    manifest = release.registry.client.get_model_version(name, "1").tags[BUNDLE_TAGS[1]]
    release.registry.client.set_model_version_tag(name, "1", BUNDLE_TAGS[1], "ab" * 32)
    try:
        with pytest.raises(Exception, match="signed promotions log") as refused:
            release.production_bundle(dataset)
        assert "abababababab" in str(refused.value) and manifest[:12] in str(refused.value)
    finally:
        release.registry.client.set_model_version_tag(name, "1", BUNDLE_TAGS[1], manifest)
    assert release.production_bundle(dataset)[1] == manifest


def test_serve_refuses_when_the_production_alias_was_deleted_outside_a_promotion(production):
    """Without the alias, scoring would fall back to the newest validated version (named by a file under
    the home): refused while the signed log says a version is in production."""
    release, dataset = production
    name = ensemble_model_name(dataset)
    release.registry.client.delete_registered_model_alias(name, "production")
    try:
        with pytest.raises(Exception, match="no production version, but the signed promotions log"):
            release.production_bundle(dataset)
    finally:
        release.registry.client.set_registered_model_alias(name, "production", "1")
    assert release.production_bundle(dataset) is not None


def test_forged_release_gates_are_refused(staged, capsys):
    """gates.json under the home decides what approval must waive: with every gate marked passed, a version
    failing its fairness gates went to production with an approval that waived nothing (found by review).
    The file is signed; an edited one is refused naming it, by the library and the command line."""
    release, dataset = staged
    path = release.paths.version_reports_dir(dataset, VERSION) / "gates.json"
    original = path.read_bytes()
    document = json.loads(original)
    try:
        for forged in ({**document, "gates": [{**g, "passed": True} for g in document["gates"]]},
                       {k: v for k, v in document.items() if k != "mac"}):
            path.write_text(json.dumps(forged))
            with pytest.raises(PlatformError, match="release gates .* are not signed"):
                Release(release.paths).state(dataset, VERSION)
            assert cli.main(["--home", str(release.paths.home), "status", "--dataset", dataset]) == 2
            assert "gates.json are not signed" in capsys.readouterr().err
    finally:
        path.write_bytes(original)
    assert Release(release.paths).state(dataset, VERSION).gates is not None


def test_production_needs_the_datasets_catalogue_entry(staged):
    """Without its (signed) catalogue entry the dataset's shadow policy cannot be read: moving the entry away
    let a version skip the shadow evidence production requires (found by review). Refused instead."""
    release, dataset = staged
    entry = release.paths.datasets_dir / f"{dataset}.json"
    saved = entry.read_bytes()
    entry.unlink()
    try:
        with pytest.raises(ReleaseRefused, match="not in the catalogue"):
            Release(release.paths).promote(dataset, VERSION, "production")
    finally:
        entry.write_bytes(saved)


def test_no_decision_is_recorded_for_a_version_whose_governance_is_incomplete(staged):
    """A governance run cut short leaves no model_card_inputs.json: `approve` recorded a signed decision, then
    failed building the card (found by review). Now it refuses first and records nothing."""
    release, dataset = staged
    inputs = release.paths.version_reports_dir(dataset, VERSION) / "model_card_inputs.json"
    saved = inputs.read_bytes()
    approvals = Approvals(release.paths, dataset)
    before = len(approvals.log.verify())
    failing = Release(release.paths).state(dataset, VERSION).gates.failing
    inputs.unlink()
    try:
        with pytest.raises(ReleaseRefused, match="decision not recorded: the governance documents"):
            Release(release.paths).approve(dataset, VERSION, "carol", "approve", "fine", failing)
    finally:
        inputs.write_bytes(saved)
    assert len(approvals.log.verify()) == before


def test_a_copied_home_refuses_to_use_the_originals_artifacts(production, tmp_path, capsys):
    """MLflow's sqlite store keeps absolute artifact paths: `approve` in a copy overwrote the original home's
    model card in its registry, and with the original gone every artifact read as tampered (found by
    review). A copy is refused, naming both places, before anything is read or written."""
    import shutil

    release, dataset = production
    copy = Path(shutil.copytree(release.paths.home, tmp_path / "copy"))
    before = {p: p.stat().st_mtime_ns for p in release.paths.home.rglob("*") if p.is_file()}
    assert cli.main(["--home", str(copy), "status", "--dataset", dataset]) == 2
    err = capsys.readouterr().err
    assert "the home was copied or moved" in err and str(release.paths.home) in err and str(copy) in err
    assert {p: p.stat().st_mtime_ns for p in release.paths.home.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("which", ["validation", "config"])
def test_a_damaged_version_document_is_an_error_naming_it(staged, capsys, which):
    """Garbage in a version's validation.json or its configs/*.json ended `status` in a pydantic traceback
    (found by review); now the command names the file."""
    release, dataset = staged
    path = (release.paths.version_reports_dir(dataset, VERSION) / "validation.json" if which == "validation"
            else release.paths.configs_dir(dataset) / f"{VERSION}.json")
    assert path.is_file(), path
    saved = path.read_bytes()
    try:
        path.write_bytes(b'{"not": "a document"}\xff')
        assert cli.main(["--home", str(release.paths.home), "status", "--dataset", dataset]) == 2
        err = capsys.readouterr().err
        assert f"{path} is unreadable" in err and "Traceback" not in err
    finally:
        path.write_bytes(saved)


def test_a_forged_promotion_intent_is_refused(production, audit):
    release, dataset = production
    (audit / INTENT_FILE).write_text(json.dumps({"intent": {"dataset": dataset}, "mac": "00" * 32}))
    with pytest.raises(IntentError, match="valid signature"):
        release.status(dataset)


# --- kill -9 during promotion ------------------------------------------------------------------

@pytest.fixture(scope="module")
def staged(tmp_path_factory, credit_slice):
    release, dataset, _ = approved_demo(tmp_path_factory.mktemp("crash"), credit_slice)
    release.promote(dataset, VERSION, "staging")
    return release, dataset


def _promote_in_a_process(home: Path, dataset: str, crash_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, CRASH_ENV: crash_at or ""}
    command = [str(Path(sys.executable).with_name("ensemble-platform")), "--home", str(home), "promote",
               "--dataset", dataset, "--version", VERSION, "--to", "production"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_an_intent_left_in_the_home_cannot_be_appended_or_replayed(staged):
    """The intent a promotion leaves in the home (until the next command, after a kill -9) names its
    log entry without the entry's MAC: appended to the log by hand, it does not verify (with the MAC,
    it did: a promotion that never happened, in the signed log serving trusts). Put back after a later command, an old intent is refused instead of restoring an old
    registry state and logging a rollback that never happened."""
    release, dataset = staged
    audit = release.paths.audit_dir(dataset)
    log = promotions_log(release.paths, dataset)
    killed = _promote_in_a_process(release.paths.home, dataset, "aliases_moved")
    assert killed.returncode == -9, killed.stderr[-2000:]
    intent_bytes = (audit / INTENT_FILE).read_bytes()
    entry = json.loads(intent_bytes)["intent"]["entry"]
    assert "mac" not in entry and entry["to"] == "production"
    logged = log.verify()
    assert entry["prev_sha256"] == logged[-1]["sha256"]  # it follows the head: the line one would add
    original = (audit / PROMOTIONS_FILE).read_bytes()
    try:
        # The attack: the promotion's entry added to the log by hand, with whatever MAC one can make.
        for mac in (None, logged[-1]["mac"], "00" * 32):
            line = serialise_entry(entry if mac is None else {**entry, "mac": mac})
            (audit / PROMOTIONS_FILE).write_bytes(original + line)
            with pytest.raises(IntegrityError):
                log.verify()
    finally:
        (audit / PROMOTIONS_FILE).write_bytes(original)
    # Recovery killed after it logged the rollback, before it removed the intent: the next command
    # finishes it without a second record (an intent behind a rollback of its own is not an old one).
    before_recovery = len(log.verify())
    with pytest.MonkeyPatch.context() as patch:
        def killed_here(self):
            raise KeyboardInterrupt("killed after the rollback was logged")

        patch.setattr(Intents, "clear", killed_here)
        with pytest.raises(KeyboardInterrupt):
            Release(release.paths).status(dataset)
    assert (audit / INTENT_FILE).exists() and len(log.verify()) == before_recovery + 1
    fresh = Release(release.paths)
    fresh.status(dataset)
    assert "already recorded" in fresh.recovered[0] and not (audit / INTENT_FILE).exists()
    logged = log.verify()
    assert len(logged) == before_recovery + 1 and logged[-1]["kind"] == "recovery"
    # The replay: the old intent put back once the log moved on (another promotion cut short and
    # rolled back since).
    assert _promote_in_a_process(release.paths.home, dataset, "aliases_moved").returncode == -9
    Release(release.paths).status(dataset)
    logged = log.verify()
    assert len(logged) == before_recovery + 2 and not (audit / INTENT_FILE).exists()
    (audit / INTENT_FILE).write_bytes(intent_bytes)
    with pytest.raises(IntentError, match="old promotion intent"):
        Release(release.paths).status(dataset)
    assert len(log.verify()) == len(logged)  # no rollback record was added
    (audit / INTENT_FILE).unlink()  # the operator's remedy


def test_promotion_killed_at_every_step_ends_consistent(staged):
    release, dataset = staged
    name = ensemble_model_name(dataset)
    before = release.registry.stage_state(dataset)
    for step in CRASH_POINTS:  # "logged" last: it is the one that rolls forward
        killed = _promote_in_a_process(release.paths.home, dataset, step)
        assert killed.returncode == -9, (step, killed.stderr[-2000:])
        assert (release.paths.audit_dir(dataset) / INTENT_FILE).exists(), step
        fresh = Release(release.paths)
        status = fresh.status(dataset).document()  # any release command recovers first
        assert fresh.recovered, step
        assert not (release.paths.audit_dir(dataset) / INTENT_FILE).exists()
        stages = fresh.registry.stage_state(dataset)
        last = status["promotions"][-1]
        if step == "logged":
            assert stages.aliases.get("production") == "1" and "completed" in fresh.recovered[0]
            assert fresh.registry.client.get_model_version(name, "1").tags.get(BUNDLE_TAGS[1])
            assert last["to"] == "production" and last["kind"] != "recovery"
        else:
            assert stages == before, step  # rolled back, exactly
            assert last["kind"] == "recovery" and last["action"] == "rolled_back", step
    done = _promote_in_a_process(release.paths.home, dataset, None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert release.production_bundle(dataset) is not None


def test_a_promotion_whose_rollback_or_append_outcome_is_unknown_keeps_its_intent(tmp_path, credit_slice):
    """A promotion that fails in-process removes its intent only when it can see that nothing is left to
    recover. (1) The registry fails mid-promotion and again while the transaction restores it: the
    intent stays, and the next command rolls the registry back and records it (the intent used to be
    removed, leaving the aliases moved with nothing to recover them and no record). (2) The log append
    fails after its line and checkpoint landed: the intent stays, and the next command completes the
    promotion the signed log already holds (it used to restore the registry and delete the bundle
    under a logged promotion)."""
    from ensemble_platform.governance.registry_stages import RegistryStages
    from ensemble_platform.integrity import KeyedLog

    release, dataset, _ = approved_demo(tmp_path, credit_slice)
    release.promote(dataset, VERSION, "staging")
    intent = release.paths.audit_dir(dataset) / INTENT_FILE
    log = promotions_log(release.paths, dataset)
    before = release.registry.stage_state(dataset)
    logged = len(log.verify())

    def unreachable(*args, **kwargs):
        raise RuntimeError("registry unreachable")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RegistryStages, "set_version_tags", unreachable)
        patch.setattr(RegistryStages, "restore", unreachable)
        with pytest.raises(RuntimeError, match="unreachable"):
            Release(release.paths).promote(dataset, VERSION, "production")
    assert intent.exists()
    assert release.registry.stage_state(dataset).aliases.get("production") == "1"  # moved, not restored
    fresh = Release(release.paths)
    fresh.status(dataset)
    assert "rolled back" in fresh.recovered[0] and not intent.exists()
    assert fresh.registry.stage_state(dataset) == before
    entries = log.verify()
    assert len(entries) == logged + 1 and entries[-1]["kind"] == "recovery"

    append = KeyedLog.append

    def lands_then_fails(self, *args, **kwargs):
        append(self, *args, **kwargs)
        raise OSError("the disk went away after the write")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KeyedLog, "append", lands_then_fails)
        with pytest.raises(OSError, match="went away"):
            Release(release.paths).promote(dataset, VERSION, "production")
    assert intent.exists() and log.verify()[-1]["to"] == "production"
    fresh = Release(release.paths)
    fresh.status(dataset)
    assert "completed" in fresh.recovered[0] and not intent.exists()
    assert fresh.registry.stage_state(dataset).aliases.get("production") == "1"
    assert fresh.production_bundle(dataset) is not None


def test_serve_dataset_serves_the_verified_production_bundle_over_http(production):
    """`serve --dataset D` looks up production once (manifest hash from the registry), then serves."""
    import socket
    import time
    import urllib.request

    release, dataset = production
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(Path(sys.executable).with_name("ensemble-platform")), "--home", str(release.paths.home), "serve",
               "--dataset", dataset, "--port", str(port), "--no-auth"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                    ready = json.loads(response.read())
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("serve did not start:\n" + server.stdout.read().decode()[-3000:])
                time.sleep(0.3)
        text = json.dumps(ready)
        assert VERSION in text and release.production_bundle(dataset)[1][:16] in text
    finally:
        os.killpg(server.pid, 9)
        server.wait(timeout=30)
