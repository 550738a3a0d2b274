"""The decision log on a real PostgreSQL (`PostgresChainStore`, started alone by scripts/stack.sh postgres):
known answers, every attack the SQLite store's tests make (through SQL), checkpoint rollback, writers in
several processes "on several machines" (own checkpoint directories) making one chain, the setting that
chooses the store, and the decision service end to end writing to PostgreSQL.

Skipped when PostgreSQL cannot start here, unless ENSEMBLE_PLATFORM_REQUIRE_STACK is set (CI sets it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from ensemble_platform.data.spec import load_spec
from ensemble_platform.decisions.log import (
    DecisionLog,
    decision_log_exists,
    decision_log_path,
    decision_store_location,
    open_decision_store,
)
from ensemble_platform.errors import PlatformError
from ensemble_platform.integrity import (
    CHECKPOINT_DIR_ENV,
    KEY_ENV,
    KEY_FILE_ENV,
    ChainError,
    ChainStore,
    CheckpointError,
    IntegrityError,
    PostgresChainStore,
    RecordError,
    SigningKey,
    SqliteChainStore,
    load_signing_key,
    seal,
)
from ensemble_platform.integrity.chain import entry_text
from ensemble_platform.integrity.postgres_store import CHECKPOINT_TABLE, table_name
from ensemble_platform.service import cli as service_cli
from ensemble_platform.settings import DECISION_STORE_ENV, PlatformPaths, masked_url
from ensemble_platform_tests.conftest import decision_record as decision
from ensemble_platform_tests.conftest import home_in_production
from ensemble_platform_tests.stack_driver import Postgres, free_port, start_postgres, started_or_skip, stop_postgres

REPO = Path(__file__).resolve().parents[1]
N = 4  # entries written before each attack
PASSWORD = "s3cret-never-shown"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    started = started_or_skip(start_postgres())
    try:
        yield started
    finally:
        stop_postgres(started)


@pytest.fixture
def home(keyed_home) -> Path:
    return keyed_home


class Harness:
    """One store (its own table: a fresh name per test) and the attacker's SQL connection."""

    def __init__(self, postgres: Postgres, key: SigningKey | None = None):
        self.url = postgres.url()
        self.name = f"test/{uuid.uuid4().hex[:12]}"
        self.table = table_name(self.name)
        self.key = key

    def open(self) -> PostgresChainStore:
        return PostgresChainStore(self.url, self.name, self.key)

    def fill(self, n: int, start: int = 1) -> list[dict]:
        with self.open() as store:
            return store.append_many([decision(i) for i in range(start, start + n)])

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg2.connect(self.url) as conn, conn.cursor() as cursor:
            cursor.execute(query.format(table=self.table), params)
            rows = cursor.fetchall() if cursor.description else []
        conn.close()
        return rows

    def read(self) -> list[dict]:
        return [json.loads(text) for (text,) in self.sql("SELECT entry FROM {table} ORDER BY seq")]

    def rewrite(self, entries: list[dict]) -> None:
        """The attacker rewrites the table consistently: seq column = position, columns copied from the entry."""
        self.sql("DELETE FROM {table}")
        for position, e in enumerate(entries, start=1):
            self.sql("INSERT INTO {table} VALUES (%s, %s, %s, %s, %s)",
                     (position, e["id"], e["kind"], e["created_at"], entry_text(e)))

    def checkpoint_row(self) -> str:
        return self.sql(f"SELECT checkpoint FROM {CHECKPOINT_TABLE} WHERE log = %s", (self.name,))[0][0]

    def check(self) -> int:
        with self.open() as store:
            return store.verify()


# -- known answers ---------------------------------------------------------------------------------


def test_store_basics_and_restart_continues_chain(postgres, home):
    harness = Harness(postgres)
    with harness.open() as store:
        assert isinstance(store, ChainStore)
        assert store.count() == 0 and store.head() is None and store.verify() == 0
        first = store.append_many([decision(1), decision(2)])
        assert [e["seq"] for e in first] == [1, 2] and store.get("d-2") == first[1] and store.get("nope") is None
        assert store.existing_ids(["d-1", "d-9"]) == {"d-1"}
        with pytest.raises(RecordError, match="already stored"):
            store.append_many([decision(3), decision(1)])
        with pytest.raises(RecordError, match="appears twice"):
            store.append_many([decision(3), decision(3)])
        with pytest.raises(RecordError, match="kind"):
            store.append_many([{"id": "x", "created_at": "t"}])
        assert store.count() == 2 and store.head() == first[1]
        # The durability PostgreSQL promises for a committed batch is asked for on every session.
        assert store._one("SHOW synchronous_commit")[0] == "on"
    with harness.open() as store:
        more = store.append_many([decision(3), decision(4, kind="review_claim")])
        assert more[0]["prev_sha256"] == first[1]["sha256"]
        assert [e["id"] for e in store.iter_entries(since_seq=1)] == ["d-2", "d-3", "d-4"]
        assert [e["id"] for e in store.iter_kinds(["review_claim"])] == ["d-4"]
        assert [e["id"] for e in store.iter_created("2026-01-01T00:00:02Z", "2026-01-01T00:00:04Z")] == ["d-2", "d-3"]
        assert store.verify() == 4
    # The stored rows are the entries as written, and the shared checkpoint row is signed over the head.
    assert harness.read() == first + more
    shared = json.loads(harness.checkpoint_row())
    assert (shared["count"], shared["head_sha256"]) == (4, more[-1]["sha256"])


def test_the_same_records_give_the_same_entries_as_sqlite(postgres, home):
    """The chain does not depend on the store: identical entries, byte for byte, under the same key."""
    harness = Harness(postgres)
    on_postgres = harness.fill(5)
    with SqliteChainStore(home / "decisions" / "same.db", f"{harness.name}-sqlite") as store:
        on_sqlite = store.append_many([decision(i) for i in range(1, 6)])
    assert [entry_text(e) for e in on_postgres] == [entry_text(e) for e in on_sqlite]


def test_check_and_append_is_one_critical_section(postgres, home):
    harness = Harness(postgres)
    harness.fill(2)
    with harness.open() as store:
        def claim():
            assert store.get("claim-1") is None
            return [{"id": "claim-1", "kind": "review_claim", "created_at": "2026-01-02T00:00:00Z"}]

        assert [e["seq"] for e in store.append_checked(claim)] == [3]
        with pytest.raises(AssertionError):
            store.append_checked(claim)
        assert store.append_checked(lambda: []) == [] and store.count() == 3


# -- attacks through SQL ---------------------------------------------------------------------------


def _edit(harness: Harness, entries: list[dict]) -> None:
    entries[1]["score"] = 99.0
    harness.sql("UPDATE {table} SET entry = %s WHERE seq = 2", (entry_text(entries[1]),))


def _columns(harness: Harness, entries: list[dict]) -> None:
    harness.sql("UPDATE {table} SET record_id = 'd-x' WHERE seq = 2")


def _delete_middle(harness: Harness, entries: list[dict]) -> None:
    harness.sql("DELETE FROM {table} WHERE seq = 2")


def _reorder(harness: Harness, entries: list[dict]) -> None:
    harness.rewrite([entries[0], entries[2], entries[1], entries[3]])


def _insert_forged(harness: Harness, entries: list[dict]) -> None:
    forged = seal(decision(77), entries[1], SigningKey(os.urandom(32), "attacker"))
    harness.rewrite(entries[:2] + [forged] + entries[2:])


def _swap_seqs(harness: Harness, entries: list[dict]) -> None:
    """Only the seq columns of rows 2 and 3 swapped (entries untouched)."""
    harness.sql("UPDATE {table} SET seq = -2 WHERE seq = 2")
    harness.sql("UPDATE {table} SET seq = 2 WHERE seq = 3")
    harness.sql("UPDATE {table} SET seq = 3 WHERE seq = -2")


# attack, the first bad seq verify() names, whether opening the store already refuses (tail check)
ATTACKS = [
    pytest.param(_edit, 2, "entry 2: edited", False, id="edited-entry"),
    pytest.param(_columns, 2, "entry 2: edited.*columns", False, id="column-disagrees-with-entry"),
    pytest.param(_delete_middle, 2, "entry 2: deleted, inserted or reordered", True, id="deleted-middle-row"),
    pytest.param(_reorder, 2, "entry 2: deleted, inserted or reordered", False, id="reordered-rows"),
    pytest.param(_swap_seqs, 2, "entry 2: deleted, inserted or reordered", False, id="swapped-seqs"),
    pytest.param(_insert_forged, 3, "entry 3: forged", True, id="forged-inserted-row"),
]


@pytest.mark.parametrize(("attack", "position", "message", "on_open"), ATTACKS)
def test_attack_is_detected_naming_the_first_bad_seq(postgres, home, attack, position, message, on_open):
    harness = Harness(postgres)
    entries = harness.fill(N)
    attack(harness, entries)
    if on_open:
        with pytest.raises(ChainError, match=message) as opened:
            harness.open()
        assert opened.value.position == position
    with pytest.raises(ChainError, match=message) as caught:
        harness.check()
    assert caught.value.position == position


def test_column_tampering_is_refused_on_lookup(postgres, home):
    harness = Harness(postgres)
    entries = harness.fill(3)
    _columns(harness, entries)
    with harness.open() as store, pytest.raises(ChainError, match="columns") as caught:
        store.get("d-x")
    assert caught.value.position == 2


@pytest.mark.parametrize(("attack", "message", "position"), [
    pytest.param("DELETE FROM {table} WHERE seq >= 3", "truncated: checkpoint says 4 entries, log has 2", 3,
                 id="dropped-last-rows"),
    pytest.param("TRUNCATE {table}", "truncated: checkpoint says 4 entries, log has 0", 1, id="truncated-table"),
    pytest.param("DROP TABLE {table}", "did not exist: dropped", 1, id="dropped-table"),
])
def test_shrinking_the_table_is_refused_on_open(postgres, home, attack, message, position):
    harness = Harness(postgres)
    harness.fill(N)
    harness.sql(attack)
    with pytest.raises(CheckpointError, match=message) as caught:
        harness.open()
    assert caught.value.position == position


def test_checkpoint_rollback_is_caught_by_the_local_checkpoint(postgres, home, monkeypatch):
    """An old signed checkpoint row put back together with truncation: the shared row agrees with the
    table, but this machine's checkpoint (outside the database and the home) remembers 4 entries. A
    machine that never wrote (no local checkpoint) cannot tell: the documented limit."""
    harness = Harness(postgres)
    harness.fill(2)
    old_row = harness.checkpoint_row()
    harness.fill(2, start=3)
    harness.sql("DELETE FROM {table} WHERE seq > 2")
    harness.sql(f"UPDATE {CHECKPOINT_TABLE} SET checkpoint = %s WHERE log = %s", (old_row, harness.name))
    with pytest.raises(CheckpointError, match="truncated: checkpoint says 4 entries, log has 2") as caught:
        harness.open()
    assert caught.value.position == 3
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(home.parent / "another-machine"))
    assert harness.check() == 2  # the rollback passes where this machine's checkpoint is not


def test_forged_or_deleted_checkpoint_row(postgres, home, monkeypatch):
    harness = Harness(postgres)
    harness.fill(N)
    row = json.loads(harness.checkpoint_row())
    harness.sql(f"UPDATE {CHECKPOINT_TABLE} SET checkpoint = %s WHERE log = %s",
                (json.dumps({**row, "count": 2}), harness.name))
    with pytest.raises(CheckpointError, match="MAC does not verify"):
        harness.open()
    harness.sql(f"DELETE FROM {CHECKPOINT_TABLE} WHERE log = %s", (harness.name,))
    assert harness.check() == N  # this machine's checkpoint still anchors the log
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(home.parent / "another-machine"))
    with pytest.raises(CheckpointError, match="no checkpoint") as caught:
        harness.open()  # a machine with no checkpoint of its own sees entries nobody vouches for
    assert caught.value.position == 1
    with PostgresChainStore(harness.url, harness.name, check_tail=False) as store:
        assert store.reanchor() == N
    assert harness.check() == N


def test_append_onto_a_tampered_head_writes_nothing(postgres, home):
    harness = Harness(postgres)
    entries = harness.fill(2)
    with harness.open() as store:
        entries[1]["score"] = 5.0
        harness.sql("UPDATE {table} SET entry = %s WHERE seq = 2", (entry_text(entries[1]),))
        with pytest.raises(ChainError, match="head entry changed"):
            store.append_many([decision(3)])
    assert len(harness.read()) == 2


def test_a_batch_whose_local_checkpoint_cannot_be_written_is_undone(postgres, home, monkeypatch, tmp_path):
    """The caller gets an error only for a batch that is not stored: rows and shared checkpoint row go back."""
    blocked = tmp_path / "checkpoints"
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(blocked))
    harness = Harness(postgres)
    harness.fill(2)
    before = harness.checkpoint_row()
    with harness.open() as store:
        shutil.rmtree(blocked)
        blocked.write_text("not a directory")  # the checkpoint directory cannot be written any more
        with pytest.raises(OSError):
            store.append_many([decision(3), decision(4)])
        assert store.count() == 2
    assert [e["seq"] for e in harness.read()] == [1, 2] and harness.checkpoint_row() == before


def test_a_cut_session_is_replaced_and_the_chain_continues(postgres, home):
    harness = Harness(postgres)
    with harness.open() as store:
        store.append_many([decision(1)])
        harness.sql("SELECT pg_terminate_backend(%s)", (store._conn.get_backend_pid(),))
        with pytest.raises(psycopg2.Error):
            store.count()  # the call that finds the session gone fails ...
        assert [e["seq"] for e in store.append_many([decision(2)])] == [2]  # ... the next one reconnects
    assert harness.check() == 2


def test_wrong_key_is_reported(postgres, home):
    harness = Harness(postgres)
    harness.fill(2)
    with pytest.raises(IntegrityError, match="key"):
        PostgresChainStore(harness.url, harness.name, SigningKey(os.urandom(32), "other")).verify()


# -- writers in several processes (and "machines") -------------------------------------------------


WRITER = textwrap.dedent("""
    import sys, time
    from ensemble_platform.integrity import PostgresChainStore
    url, name, writer, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    with PostgresChainStore(url, name) as store:
        time.sleep(max(0.0, start_at - time.time()))  # all write at once
        for i in range(200):
            store.append_many([{"id": f"{writer}-{i}", "kind": "decision", "created_at": f"{time.time():.6f}"}])
""")


def test_writers_in_several_processes_and_machines_make_one_chain(postgres, home, tmp_path):
    harness = Harness(postgres)
    load_signing_key()  # one key for every writer, created before the race
    env = {k: v for k, v in os.environ.items() if k != CHECKPOINT_DIR_ENV}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    machines = {writer: tmp_path / f"checkpoints-{writer}" for writer in ("a", "b")}
    start_at = time.time() + 5
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, harness.url, harness.name, writer, str(start_at)],
                              env={**env, CHECKPOINT_DIR_ENV: str(directory)}, stderr=subprocess.PIPE, text=True)
             for writer, directory in machines.items()]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [e[-2000:] for e in errors]
    print(f"2 processes x 200 single-record appends: {time.perf_counter() - started - 5:.1f}s after the start signal")
    entries = harness.read()
    assert [e["seq"] for e in entries] == list(range(1, 401))
    ids = [e["id"] for e in entries]
    assert len(set(ids)) == 400 and sorted(ids) == sorted(f"{w}-{i}" for w in "ab" for i in range(200))
    writers = "".join(i[0] for i in ids)
    assert "ab" in writers and "ba" in writers  # they really interleaved
    for directory in machines.values():  # each machine's view: one valid chain its own checkpoint agrees with
        os.environ[CHECKPOINT_DIR_ENV] = str(directory)
        try:
            assert harness.check() == 400
        finally:
            del os.environ[CHECKPOINT_DIR_ENV]


# -- the setting that chooses the store --------------------------------------------------------------


def test_the_setting_chooses_the_store(postgres, home, monkeypatch):
    paths = PlatformPaths.from_env(home)
    with open_decision_store(paths) as store:  # unset: the SQLite file under the home, as always
        assert isinstance(store, SqliteChainStore) and store.path == decision_log_path(paths)
    url = postgres.url().replace("platform@", f"platform:{PASSWORD}@")
    monkeypatch.setenv(DECISION_STORE_ENV, url)
    assert not decision_log_exists(paths)
    with open_decision_store(paths, name=f"decisions-{uuid.uuid4().hex[:8]}") as store:
        assert isinstance(store, PostgresChainStore)
        store.append_many([decision(1)])
        assert PASSWORD not in store.label and PASSWORD not in repr(store) and "platform:***@" in store.label
    assert PASSWORD not in decision_store_location(paths) and DECISION_STORE_ENV in decision_store_location(paths)
    monkeypatch.setenv(DECISION_STORE_ENV, f"mysql://platform:{PASSWORD}@127.0.0.1/decisions")
    with pytest.raises(PlatformError, match=f"{DECISION_STORE_ENV}.*expected unset .* or a PostgreSQL URL") as caught:
        open_decision_store(paths)
    assert PASSWORD not in str(caught.value)
    monkeypatch.setenv(DECISION_STORE_ENV, f"postgresql://platform:{PASSWORD}@127.0.0.1:{free_port()}/decisions")
    with pytest.raises(IntegrityError, match="cannot connect") as refused:
        DecisionLog.for_home(paths)
    assert PASSWORD not in str(refused.value)


def test_masked_url():
    assert masked_url("postgresql://u:p%40ss@db.example:5432/decisions?sslmode=require") == \
        "postgresql://u:***@db.example:5432/decisions?sslmode=require"
    assert masked_url("postgresql://u@db/decisions") == "postgresql://u@db/decisions"


# -- the decision service writing to PostgreSQL ------------------------------------------------------


def _serve(home: PlatformPaths, bundle: str, manifest_sha256: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ensemble_platform.service", "--home", str(home.home), "serve", "--bundle", bundle,
         "--manifest-sha256", manifest_sha256, "--no-auth", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, 9) if process.poll() is None else None
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"the decision service did not start:\n{output[-3000:]}")
        time.sleep(0.2)


def test_service_decides_into_postgres_and_auditors_replay_from_it(postgres, tmp_path, credit_slice, monkeypatch,
                                                                   capsys):
    from ensemble_platform.serving.parity import ParitySet

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in (KEY_ENV, KEY_FILE_ENV, CHECKPOINT_DIR_ENV, DECISION_STORE_ENV):
        monkeypatch.delenv(variable, raising=False)
    paths, spec_path, _, result = home_in_production(tmp_path, credit_slice)
    dataset, version = load_spec(spec_path).name, "1.0.0"
    url = postgres.url().replace("platform@", f"platform:{PASSWORD}@")
    monkeypatch.setenv(DECISION_STORE_ENV, url)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    service, base = _serve(paths, str(result.bundle.path), result.bundle.manifest_sha256, env)
    try:
        rows = json.loads(ParitySet.read(paths.parity_dir(dataset, version)).rows.head(3).to_json(orient="records"))
        answer = httpx.post(f"{base}/v1/decisions", json={"request_id": "pg-1", "rows": rows}, timeout=60)
        assert answer.status_code == 200, answer.text
        decisions = answer.json()["decisions"]
        assert len(decisions) == 3
        assert httpx.get(f"{base}/v1/decisions/{decisions[1]['decision_id']}", timeout=10).status_code == 200
    finally:
        os.killpg(service.pid, 15)
        output = service.communicate(timeout=60)[0].decode()
    assert "platform:***@" in output and PASSWORD not in output
    # Nothing went to the SQLite file, and no file under the home holds the password.
    assert not decision_log_path(paths).exists()
    for file in paths.home.rglob("*"):
        if file.is_file() and file.stat().st_size < 5_000_000:
            assert PASSWORD.encode() not in file.read_bytes(), file
    with open_decision_store(paths) as store:
        stored = {e["id"] for e in store.iter_kinds(["decision"])}
    assert {d["decision_id"] for d in decisions} <= stored
    capsys.readouterr()
    assert service_cli.main(["--home", str(paths.home), "decisions", "replay", decisions[0]["decision_id"]]) == 0
    assert "identical to the bit" in capsys.readouterr().out
    assert service_cli.main(["--home", str(paths.home), "decisions", "verify"]) == 0
    verified = capsys.readouterr().out
    assert "platform:***@" in verified and "verified" in verified and PASSWORD not in verified
