"""Keyed, hash-chained, checkpointed logs (`ensemble_platform.integrity`): every attack an attacker who
can write the platform home (but holds no key and cannot write the checkpoint directory) can make is
detected, naming the first bad position, on both the JSON Lines log and the SQLite decision store;
group commit is durable, ordered and all-or-nothing per batch, and survives SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ensemble_platform.integrity import (
    CHECKPOINT_DIR_ENV,
    KEY_ENV,
    KEY_FILE_ENV,
    ChainError,
    ChainStore,
    CheckpointError,
    CheckpointStore,
    GroupCommitWriter,
    IntegrityError,
    KeyedLog,
    KeyMismatchError,
    LogIntegrityError,
    RecordError,
    SigningKey,
    SigningKeyError,
    SqliteChainStore,
    StoreClosedError,
    default_checkpoint_dir,
    entry_digest,
    load_signing_key,
    seal,
)
from ensemble_platform.integrity.chain import MAC, SHA
from ensemble_platform.integrity.jsonl_log import serialise_entry
from ensemble_platform.settings import PlatformPaths
from ensemble_platform_tests.conftest import decision_record as decision

REPO = Path(__file__).resolve().parents[1]
N = 4  # entries written before each attack


@pytest.fixture
def home(keyed_home) -> Path:
    return keyed_home


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, KEY_FILE_ENV, CHECKPOINT_DIR_ENV)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


# -- the two stores behind one attack harness ------------------------------------------------------


class JsonlHarness:
    kind = "jsonl"

    def __init__(self, home: Path, key: SigningKey | None = None):
        self.path = home / "audit" / "credit" / "approvals.jsonl"
        self.key = key
        self.log = KeyedLog(self.path, "credit/approvals", key)

    def fill(self, n: int) -> None:
        for i in range(1, n + 1):
            self.log.append(decision(i, approver="bob"))

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def rewrite(self, entries: list[dict]) -> None:
        self.path.write_bytes(b"".join(serialise_entry(e) for e in entries))

    def delete(self) -> None:
        self.path.unlink()

    def check(self) -> None:
        KeyedLog(self.path, "credit/approvals", self.key).verify()

    @staticmethod
    def position(exc: Exception) -> int | None:
        return exc.line if isinstance(exc, LogIntegrityError) else None


class SqliteHarness:
    kind = "sqlite"

    def __init__(self, home: Path, key: SigningKey | None = None):
        self.path = home / "decisions" / "credit.db"
        self.key = key

    def open(self) -> SqliteChainStore:
        return SqliteChainStore(self.path, "credit/decisions", self.key)

    def fill(self, n: int) -> None:
        with self.open() as store:
            store.append_many([decision(i) for i in range(1, n + 1)])

    def read(self) -> list[dict]:
        with sqlite3.connect(self.path) as conn:
            return [json.loads(text) for (text,) in conn.execute("SELECT entry FROM entries ORDER BY seq")]

    def rewrite(self, entries: list[dict]) -> None:
        """The attacker rewrites the table consistently: seq column = position, columns copied from the entry."""
        with sqlite3.connect(self.path) as conn:
            conn.execute("DELETE FROM entries")
            conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", [
                (position, e["id"], e["kind"], e["created_at"], json.dumps(e, sort_keys=True, separators=(",", ":")))
                for position, e in enumerate(entries, start=1)])
        conn.close()

    def delete(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    def check(self) -> None:
        with self.open() as store:
            store.verify()

    @staticmethod
    def position(exc: Exception) -> int | None:
        return getattr(exc, "position", None)


HARNESSES = [pytest.param(JsonlHarness, id="jsonl"), pytest.param(SqliteHarness, id="sqlite")]


def _edit(entries):
    entries[1]["score"] = 99.0
    return entries


def _edit_recomputing_sha(entries):
    entries[1]["score"] = 99.0
    entries[1][SHA] = entry_digest(entries[1])
    return entries


def _forge(record, prev):
    return seal(record, prev, SigningKey.generate("attacker"))


def _insert_forged(entries):
    return entries[:2] + [_forge(decision(100), entries[1])] + entries[2:]


def _reorder(entries):
    entries[1], entries[2] = entries[2], entries[1]
    return entries


def _delete_middle(entries):
    return entries[:1] + entries[2:]


ATTACKS = [
    # (id, transformation of the entries, expected position, fragment of the reason)
    pytest.param(_edit, 2, "edited", id="edited"),
    pytest.param(_edit_recomputing_sha, 2, "forged or signed with another key", id="edited-sha-recomputed"),
    pytest.param(_insert_forged, 3, "forged or signed with another key", id="inserted-forged"),
    pytest.param(_reorder, 2, "deleted, inserted or reordered", id="reordered"),
    pytest.param(_delete_middle, 2, "deleted, inserted or reordered", id="deleted-middle"),
    pytest.param(lambda e: e[:-1], N, f"truncated: checkpoint says {N} entries, log has {N - 1}", id="dropped-last"),
    pytest.param(lambda e: [], 1, f"truncated: checkpoint says {N} entries, log has 0", id="emptied"),
    pytest.param(lambda e: e + [_forge(decision(100), e[-1])], N + 1, "forged or signed with another key",
                 id="forged-appended"),
    pytest.param(lambda e: [{k: v for k, v in x.items() if k != MAC} for x in e], 1,
                 "unsigned entry (written before keyed logs)", id="unsigned"),
]


@pytest.mark.parametrize("harness_type", HARNESSES)
@pytest.mark.parametrize(("attack", "position", "reason"), ATTACKS)
def test_attack_is_detected_at_first_bad_position(home, harness_type, attack, position, reason):
    harness = harness_type(home)
    harness.fill(N)
    harness.check()
    harness.rewrite(attack(harness.read()))
    with pytest.raises(IntegrityError) as caught:
        harness.check()
    assert reason in str(caught.value)
    assert harness.position(caught.value) == position


@pytest.mark.parametrize("harness_type", HARNESSES)
def test_deleted_file_with_checkpoint_present_is_truncation(home, harness_type):
    harness = harness_type(home)
    harness.fill(N)
    harness.delete()
    with pytest.raises(IntegrityError, match=f"truncated: checkpoint says {N} entries, log has 0"):
        harness.check()


@pytest.mark.parametrize("harness_type", HARNESSES)
def test_fresh_deployment_is_empty_and_valid_and_checkpoint_loss_is_detected(home, harness_type):
    harness = harness_type(home)
    harness.check()  # no log, no checkpoint: valid
    harness.fill(2)
    for path in default_checkpoint_dir().iterdir():
        path.unlink()
    with pytest.raises(IntegrityError, match="no checkpoint"):
        harness.check()


@pytest.mark.parametrize("harness_type", HARNESSES)
def test_wrong_key_is_reported_as_such(home, harness_type, tmp_path):
    harness_type(home).fill(2)
    other = SigningKey.generate("other")
    with pytest.raises(KeyMismatchError) as caught:
        harness_type(home, other).check()
    current = load_signing_key()
    assert current.key_id in str(caught.value) and other.key_id in str(caught.value)
    assert "rotated or the wrong key" in str(caught.value)


def test_wrong_key_without_checkpoint_names_line_one(home):
    JsonlHarness(home).fill(2)
    other = SigningKey.generate("other")
    log = KeyedLog(home / "audit" / "credit" / "approvals.jsonl", "credit/approvals", other,
                   CheckpointStore(other, home.parent / "elsewhere"))
    with pytest.raises(LogIntegrityError, match="line 1: forged or signed with another key"):
        log.verify()


@pytest.mark.parametrize("harness_type", HARNESSES)
def test_entries_beyond_checkpoint_are_accepted_only_if_signed(home, harness_type):
    """A crash between the append and the checkpoint leaves signed entries after the checkpoint."""
    harness = harness_type(home)
    harness.fill(2)
    checkpoint_files = list(default_checkpoint_dir().iterdir())
    saved = {path: path.read_bytes() for path in checkpoint_files}
    entries = harness.read()
    harness.rewrite(entries + [seal(decision(3), entries[-1], load_signing_key())])
    harness.check()  # checkpoint says 2, log has 3 signed entries: valid
    harness.rewrite(entries + [_forge(decision(3), entries[-1])])
    with pytest.raises(IntegrityError, match="forged"):
        harness.check()
    assert {path: path.read_bytes() for path in checkpoint_files} == saved


def test_an_append_whose_checkpoint_fails_leaves_no_line(home, monkeypatch):
    """The line is fsynced before its checkpoint: if the checkpoint cannot be written the append is
    undone, so a caller that rolls back on the error (a promotion) leaves no record of what it undid."""
    harness = JsonlHarness(home)
    harness.fill(2)
    before = harness.path.read_bytes()

    def no_space(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(harness.log.checkpoints, "write", no_space)
        with pytest.raises(OSError, match="No space"):
            harness.log.append(decision(3, approver="bob"))
    assert harness.path.read_bytes() == before
    harness.check()
    # A failure after the checkpoint is in place (its directory's fsync, say): the entry is appended.
    write = harness.log.checkpoints.write

    def written_then_failed(*args, **kwargs):
        write(*args, **kwargs)
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(harness.log.checkpoints, "write", written_then_failed)
        assert harness.log.append(decision(3, approver="bob"))["seq"] == 3
    harness.check()
    assert harness.log.append(decision(4, approver="bob"))["seq"] == 4


# -- checkpoints -------------------------------------------------------------------------------------


def test_edited_or_copied_checkpoint_is_refused(home):
    harness = JsonlHarness(home)
    harness.fill(3)
    store = harness.log.checkpoints
    path = store.path("credit/approvals")
    original = json.loads(path.read_text())
    path.write_text(json.dumps({**original, "count": 2}))
    with pytest.raises(LogIntegrityError, match="MAC does not verify"):
        harness.check()
    path.write_text("{not json")
    with pytest.raises(LogIntegrityError, match="not JSON"):
        harness.check()
    # a validly signed checkpoint of another log cannot stand in for this one
    path.write_text(json.dumps(original))
    store.path("credit/promotions").write_text(json.dumps(original))
    with pytest.raises(CheckpointError, match="belongs to log 'credit/approvals'"):
        store.read("credit/promotions")


def test_rollback_is_caught_only_because_the_checkpoint_lives_outside_the_home(home, monkeypatch):
    """Documents the one attack the checkpoint cannot catch by itself: an attacker who could ALSO write
    the checkpoint directory puts back an older signed checkpoint and truncates the log to match. This
    is why a checkpoint directory inside the platform home (or a key file there, beside which the
    default checkpoint directory would sit) is refused."""
    harness = JsonlHarness(home)
    harness.fill(2)
    checkpoint_path = harness.log.checkpoints.path("credit/approvals")
    old_checkpoint, old_log = checkpoint_path.read_bytes(), harness.path.read_bytes()
    harness.fill(2)
    harness.path.write_bytes(old_log)
    with pytest.raises(LogIntegrityError, match="truncated: checkpoint says 4 entries, log has 2"):
        harness.check()
    checkpoint_path.write_bytes(old_checkpoint)  # needs write access to the checkpoint directory
    harness.check()  # the rollback passes: nothing in the home can tell

    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(home / "checkpoints"))
    with pytest.raises(CheckpointError, match="inside the platform home"):
        CheckpointStore(load_signing_key())
    with pytest.raises(CheckpointError, match=CHECKPOINT_DIR_ENV):
        KeyedLog(harness.path, "credit/approvals").verify()


def test_checkpoint_default_location_is_per_home_beside_the_key(home, tmp_path):
    expected_id = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
    assert default_checkpoint_dir() == tmp_path / "config" / "ensemble_platform" / "checkpoints" / expected_id
    other = default_checkpoint_dir(PlatformPaths.from_env(tmp_path / "other_home"))
    assert other.parent == default_checkpoint_dir().parent and other != default_checkpoint_dir()


# -- JSON Lines specifics -----------------------------------------------------------------------------


def test_cut_off_last_line_is_a_clean_error(home):
    harness = JsonlHarness(home)
    harness.fill(3)
    data = harness.path.read_bytes()
    harness.path.write_bytes(data[:-20])
    with pytest.raises(LogIntegrityError) as caught:
        harness.log.entries()
    assert caught.value.line == 3 and "cut off" in str(caught.value)
    assert not isinstance(caught.value, ValueError)  # not a JSONDecodeError escaping
    with pytest.raises(LogIntegrityError, match="line 3"):
        harness.log.append(decision(9))
    assert harness.path.read_bytes() == data[:-20]


def test_not_json_in_the_middle_names_the_line(home):
    harness = JsonlHarness(home)
    harness.fill(3)
    lines = harness.path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    harness.path.write_bytes(b"\n".join(lines))
    with pytest.raises(LogIntegrityError, match=r"approvals.jsonl line 2: not JSON"):
        harness.log.verify()


def test_reserialised_line_is_an_edit(home):
    harness = JsonlHarness(home)
    harness.fill(3)
    entries = harness.read()
    harness.path.write_text("".join(json.dumps(e, sort_keys=i != 1) + "\n" for i, e in enumerate(entries)))
    with pytest.raises(LogIntegrityError, match="line 1: edited"):
        harness.log.verify()


def test_missing_trailing_newline_is_refused_before_writing(home):
    harness = JsonlHarness(home)
    harness.fill(2)
    harness.path.write_bytes(harness.path.read_bytes()[:-1])
    checkpoint = harness.log.checkpoints.path("credit/approvals").read_bytes()
    before = harness.path.read_bytes()
    with pytest.raises(LogIntegrityError, match="does not end with a newline.*nothing was appended"):
        harness.log.append(decision(3))
    assert harness.path.read_bytes() == before
    assert harness.log.checkpoints.path("credit/approvals").read_bytes() == checkpoint


def test_append_onto_a_tampered_log_writes_nothing(home):
    harness = JsonlHarness(home)
    harness.fill(3)
    harness.rewrite(_edit(harness.read()))
    before = harness.path.read_bytes()
    with pytest.raises(LogIntegrityError, match="line 2: edited"):
        harness.log.append(decision(4))
    assert harness.path.read_bytes() == before


def test_draft_then_append_and_stale_draft_is_refused(home):
    harness = JsonlHarness(home)
    with harness.log.lock():
        entry = harness.log.draft({"approver": "bob"})
        assert harness.log.append(entry) == entry
    stale = harness.log.draft({"approver": "eve"})
    harness.log.append({"approver": "carol"})
    with pytest.raises(LogIntegrityError, match="changed since the entry was drafted"):
        harness.log.append(stale)
    assert [e["approver"] for e in harness.log.verify()] == ["bob", "carol"]
    with pytest.raises(IntegrityError, match="reserved"):
        seal({"seq": 1, "approver": "x"}, None, harness.log.key)


def test_reanchor_after_checkpoint_loss(home):
    harness = JsonlHarness(home)
    harness.fill(2)
    harness.log.checkpoints.path("credit/approvals").unlink()
    with pytest.raises(LogIntegrityError, match="no checkpoint"):
        harness.check()
    assert harness.log.reanchor()["seq"] == 2
    harness.check()


def test_sqlite_reanchor_after_checkpoint_loss(home):
    harness = SqliteHarness(home)
    harness.fill(3)
    for path in default_checkpoint_dir().iterdir():
        path.unlink()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        harness.open()
    with SqliteChainStore(harness.path, "credit/decisions", check_tail=False) as store:
        assert store.reanchor() == 3
    harness.check()


def test_appenders_in_several_processes_serialise(home):
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from ensemble_platform.integrity import KeyedLog
        log = KeyedLog(Path(sys.argv[1]), "credit/approvals")
        for i in range(25):
            log.append({"writer": sys.argv[2], "i": i})
    """)
    path = home / "audit" / "credit" / "approvals.jsonl"
    load_signing_key()  # create the key once, before the race
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), name], env=_env()) for name in "ab"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    entries = KeyedLog(path, "credit/approvals").verify()
    assert len(entries) == 50 and sorted(e["writer"] for e in entries) == ["a"] * 25 + ["b"] * 25


def test_explicit_home_gets_its_own_checkpoints(home, tmp_path):
    other = PlatformPaths.from_env(tmp_path / "other_home")
    log = KeyedLog(other.audit_dir("credit") / "approvals.jsonl", "credit/approvals", paths=other)
    log.append({"approver": "bob"})
    assert log.checkpoints.directory == default_checkpoint_dir(other) != default_checkpoint_dir()
    assert KeyedLog(log.path, "credit/approvals", paths=other).verify()[0]["approver"] == "bob"


def test_integrity_package_stays_on_the_ground_floor():
    script = ("import sys, ensemble_platform.integrity; "
              "print(sorted(m for m in sys.modules if m.startswith('ensemble_platform')))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True,
                                       check=True).stdout.replace("'", '"'))
    outside = [m for m in loaded if not m.startswith("ensemble_platform.integrity")]
    # blas_kernel: the package's own __init__ loads it (standard library only; the ground floor).
    assert set(outside) <= {"ensemble_platform", "ensemble_platform.blas_kernel", "ensemble_platform.errors",
                            "ensemble_platform.files", "ensemble_platform.settings"}


# -- keys --------------------------------------------------------------------------------------------


def test_key_created_on_first_use_with_safe_modes(home, tmp_path):
    key = load_signing_key()
    path = tmp_path / "config" / "ensemble_platform" / "signing.key"
    assert key.source == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert bytes.fromhex(path.read_text().strip()) == key.secret and len(key.secret) == 32
    assert load_signing_key().key_id == key.key_id == hashlib.sha256(key.secret).hexdigest()[:16]
    mac = key.mac(b"x")
    assert key.verify(b"x", mac) and not key.verify(b"y", mac) and not key.verify(b"x", None)
    assert key.secret.hex() not in repr(key)


def test_racing_processes_end_with_one_key(home, tmp_path):
    script = "from ensemble_platform.integrity import load_signing_key; print(load_signing_key().key_id)"
    env = _env(XDG_CONFIG_HOME=str(tmp_path / "config"), ENSEMBLE_PLATFORM_HOME=str(home))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert ids == {load_signing_key().key_id}
    assert [p.name for p in (tmp_path / "config" / "ensemble_platform").iterdir()] == ["signing.key"]


def test_key_from_env_and_malformed_keys_refused(home, tmp_path, monkeypatch):
    secret = os.urandom(32)
    monkeypatch.setenv(KEY_ENV, secret.hex())
    assert load_signing_key().secret == secret
    monkeypatch.setenv(KEY_ENV, "abc")
    with pytest.raises(SigningKeyError, match=KEY_ENV):
        load_signing_key()
    monkeypatch.delenv(KEY_ENV)
    bad = tmp_path / "keys" / "bad.key"
    bad.parent.mkdir()
    bad.write_text("not a key\n")
    monkeypatch.setenv(KEY_FILE_ENV, str(bad))
    with pytest.raises(SigningKeyError, match=f"{bad}.*malformed.*restore"):
        load_signing_key()


def test_key_file_inside_home_refused(home, monkeypatch):
    inside = home / "secrets" / "signing.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(inside))
    with pytest.raises(SigningKeyError, match=f"{inside} is inside the platform home.*{KEY_FILE_ENV}"):
        load_signing_key()
    assert not inside.exists()
    with pytest.raises(SigningKeyError):
        KeyedLog(home / "audit" / "approvals.jsonl", "approvals")


# -- SQLite store and group commit ---------------------------------------------------------------------


def test_sqlite_store_basics_and_restart_continues_chain(home):
    harness = SqliteHarness(home)
    with harness.open() as store:
        assert isinstance(store, ChainStore)
        assert store.count() == 0 and store.head() is None and store.verify() == 0
        first = store.append_many([decision(1), decision(2)])
        assert [e["seq"] for e in first] == [1, 2] and store.get("d-2") == first[1]
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = store._conn.execute("PRAGMA synchronous").fetchone()[0]
        assert (mode, sync) == ("wal", 2)
        with pytest.raises(RecordError, match="already stored"):
            store.append_many([decision(3), decision(1)])
        with pytest.raises(RecordError, match="kind"):
            store.append_many([{"id": "x", "created_at": "t"}])
        assert store.count() == 2
    with harness.open() as store:
        more = store.append_many([decision(3)])
        assert more[0]["prev_sha256"] == first[1]["sha256"]
        assert [e["id"] for e in store.iter_entries(since_seq=1)] == ["d-2", "d-3"]
        assert store.verify() == 3


def test_sqlite_column_tampering_is_detected(home):
    harness = SqliteHarness(home)
    harness.fill(3)
    with sqlite3.connect(harness.path) as conn:
        conn.execute("UPDATE entries SET record_id = 'd-x' WHERE seq = 2")
    conn.close()
    with harness.open() as store, pytest.raises(ChainError, match="columns") as caught:
        store.get("d-x")
    assert caught.value.position == 2
    with pytest.raises(ChainError, match="entry 2: edited"):
        harness.check()


def test_sqlite_file_replaced_by_garbage(home):
    harness = SqliteHarness(home)
    harness.fill(1)
    harness.delete()
    harness.path.write_bytes(b"garbage" * 1000)
    with pytest.raises(IntegrityError, match="credit.db"):
        harness.open()


def test_group_commit_concurrent_submitters_all_durable(home):
    harness = SqliteHarness(home)
    store = harness.open()
    entries: dict[str, dict] = {}
    with GroupCommitWriter(store) as writer:
        def submitter(t: int) -> None:
            for i in range(500):
                entry = writer.submit(decision(0, id=f"t{t}-{i}")).result(timeout=30)
                entries[entry["id"]] = entry

        threads = [threading.Thread(target=submitter, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(entries) == 2000 and sorted(e["seq"] for e in entries.values()) == list(range(1, 2001))
    assert writer.batches < 2000  # records were grouped
    assert store.count() == 2000 and store.verify() == 2000
    checkpoint = store.checkpoints.read("credit/decisions")
    assert checkpoint.count == 2000 and checkpoint.head_sha256 == store.head()["sha256"]
    store.close()
    with harness.open() as reopened:  # a new process would see the same: continue the chain
        assert reopened.get("t3-499") == entries["t3-499"]
        assert reopened.append_many([decision(1)])[0]["seq"] == 2001
        assert reopened.verify() == 2001


def test_group_commit_bad_records_fail_alone_and_close_drains(home):
    store = SqliteHarness(home).open()
    writer = GroupCommitWriter(store, max_wait_ms=5)
    futures = [writer.submit(record) for record in (decision(1), {"id": "no-kind", "created_at": "t"}, decision(1),
                                                    decision(2, score=float("nan")), decision(3))]
    writer.close()
    assert futures[0].result()["seq"] == 1 and futures[4].result()["seq"] == 2
    for future, message in zip(futures[1:4], ["kind", "submitted twice|already stored", "strict JSON"], strict=True):
        with pytest.raises(RecordError, match=message):
            future.result()
    with pytest.raises(StoreClosedError):
        writer.submit(decision(4))
    assert store.verify() == 2
    store.close()


def test_group_commit_commits_a_group_whole_in_one_batch(home):
    """A request's records (`submit_many`) are one group: one transaction however many there are
    (past `max_batch` too), and none of them when one is refused; other groups are unaffected."""
    store = SqliteHarness(home).open()
    writer = GroupCommitWriter(store, max_batch=10, max_wait_ms=5)
    big = writer.submit_many([decision(i, id=f"big-{i}") for i in range(25)])
    entries = [future.result(timeout=30) for future in big]
    assert [e["seq"] for e in entries] == list(range(1, 26)) and writer.batches == 1
    bad = writer.submit_many([decision(1, id="a"), decision(2, id="b", score=float("nan")), decision(3, id="c")])
    good = writer.submit_many([decision(4, id="d")])
    writer.close()
    for future in bad:
        with pytest.raises(RecordError, match="strict JSON"):
            future.result()
    assert good[0].result()["seq"] == 26
    assert store.get("a") is None and store.get("c") is None and store.verify() == 26
    store.close()


def test_group_commit_a_failed_batch_leaves_nothing_of_a_large_group(home):
    """The store failing its commit: a 1,500-record group (a service request past the batch size)
    is rejected whole, and nothing of it is stored."""
    store = SqliteHarness(home).open()
    calls = []
    original = store.append_many

    def failing_second(records):
        calls.append(len(records))
        if len(calls) == 2:
            raise OSError("disk full")
        return original(records)

    store.append_many = failing_second
    writer = GroupCommitWriter(store, max_batch=1000, max_wait_ms=5)
    assert writer.submit(decision(0, id="first")).result(timeout=30)["seq"] == 1
    group = writer.submit_many([decision(i, id=f"r-{i}") for i in range(1500)])
    writer.close()
    assert calls == [1, 1500]
    for future in group:
        with pytest.raises(OSError, match="disk full"):
            future.result()
    assert store.verify() == 1 and store.get("r-0") is None
    store.close()


def test_group_commit_batch_failure_rejects_batch_and_leaves_store_consistent(home):
    store = SqliteHarness(home).open()
    writer = GroupCommitWriter(store)
    writer.submit(decision(1)).result()
    head, checkpoint = store.head(), store.checkpoints.read("credit/decisions")

    # disk full: every future of the batch fails, nothing is stored, head and checkpoint unchanged
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    futures = writer.submit_many([decision(i, blob="x" * 20_000) for i in range(2, 6)])
    for future in futures:
        with pytest.raises(sqlite3.OperationalError, match="full"):
            future.result(timeout=10)
    assert store.head() == head and store.count() == 1
    assert store.checkpoints.read("credit/decisions") == checkpoint
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert writer.submit(decision(2)).result(timeout=10)["prev_sha256"] == head["sha256"]

    # corrupted tail: the head row is edited behind the writer's back
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE entries SET entry = replace(entry, '\"score\"', '\"scorf\"') WHERE seq = 2")
    conn.close()
    with pytest.raises(ChainError, match="entry 2: edited"):
        writer.submit(decision(3)).result(timeout=10)
    assert store.count() == 2

    # store closed underneath the writer
    store.close()
    with pytest.raises(StoreClosedError):
        writer.submit(decision(4)).result(timeout=10)
    writer.close()


CRASH_SCRIPT = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from ensemble_platform.integrity import CheckpointStore, GroupCommitWriter, SqliteChainStore, load_signing_key
    from ensemble_platform.settings import PlatformPaths

    db, checkpoints, home = sys.argv[1:4]
    key = load_signing_key(PlatformPaths(Path(home)))
    store = SqliteChainStore(Path(db), "crash", key, CheckpointStore(key, Path(checkpoints), PlatformPaths(Path(home))))
    writer = GroupCommitWriter(store)
    out = threading.Lock()

    def run(t):
        i = 0
        while True:
            rid = f"t{t}-{i}"
            record = {"id": rid, "kind": "decision", "created_at": "2026-01-01T00:00:00Z", "p": [0.1] * 6}
            writer.submit(record).result()
            with out:
                sys.stdout.write(rid + "\\n")
                sys.stdout.flush()
            i += 1

    for t in range(4):
        threading.Thread(target=run, args=(t,), daemon=True).start()
    threading.Event().wait()
""")


def test_sigkill_mid_way_loses_no_acknowledged_append(home, tmp_path):
    key = SigningKey.generate()
    db, checkpoint_dir = home / "decisions" / "crash.db", tmp_path / "crash_checkpoints"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(db), str(checkpoint_dir), str(home)],
                            env=_env(**{KEY_ENV: key.secret.hex()}), stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        while len(acknowledged) < 600:
            line = proc.stdout.readline()
            assert line, f"writer died early (exit {proc.poll()})"
            acknowledged.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    acknowledged += [line for line in rest.splitlines() if line.strip()]
    checkpoints = CheckpointStore(key, checkpoint_dir, PlatformPaths(home))
    with SqliteChainStore(db, "crash", key, checkpoints) as store:  # the tail check passes on open
        total = store.verify()
        assert total >= len(acknowledged) and total >= checkpoints.read("crash").count
        assert all(store.get(rid) is not None for rid in acknowledged)
        assert store.append_many([decision(1)])[0]["seq"] == total + 1
