"""The production-shaped stack for real (scripts/stack.sh): PostgreSQL, an MLflow tracking server on
it with proxied artifacts, Dagster on PostgreSQL with the run queue, daemon, webserver and a gRPC
code server. Two datasets' lifecycles go through the queue and run concurrently in their own
processes; then approval, promotion (two processes at once per stage), bundle export and the decision service writing
to the stack's PostgreSQL decision store.
The same data through the embedded sqlite path must give the same versions and config hashes.

Skipped when the stack cannot start here (no PostgreSQL and no root/apt), unless
ENSEMBLE_PLATFORM_REQUIRE_STACK is set (CI sets it: there a stack that does not start fails)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from ensemble_platform import cli
from ensemble_platform.data.spec import load_spec
from ensemble_platform.decisions.log import decision_log_path, open_decision_store
from ensemble_platform.governance.release import Release
from ensemble_platform.integrity import PostgresChainStore
from ensemble_platform.members.catalogue import MEMBER_NAMES
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform.settings import DECISION_STORE_ENV, MLFLOW_URI_ENV, PlatformPaths
from ensemble_platform.tags import CONFIG_HASH_TAG, SEMVER_TAG
from ensemble_platform_tests.conftest import write_spec
from ensemble_platform_tests.stack_driver import (
    Queue,
    free_port,
    most_at_once,
    start_stack,
    started_or_skip,
    stop_stack,
)

VERSION = "1.0.0"
MAX_RUNS = 4


@pytest.fixture(scope="module")
def stack():
    started = started_or_skip(start_stack(MAX_RUNS))
    try:
        yield started
    finally:
        stop_stack(started)


@pytest.fixture(scope="module")
def specs(tmp_path_factory, credit_slice) -> dict[str, Path]:
    """Two small datasets (the slice, and the slice under another name and seed), folds 3."""
    root = tmp_path_factory.mktemp("stack-specs")
    return {
        "credit_a": write_spec(root / "a", credit_slice, name="credit_a"),
        "credit_b": write_spec(root / "b", credit_slice, name="credit_b", seed=1),
    }


def _registered(uri: str, dataset: str) -> dict[str, list[str]]:
    client = MlflowClient(uri, uri)
    return {m.name: sorted(str(v.version) for v in client.search_model_versions(f"name = '{m.name}'"))
            for m in client.search_registered_models(f"name LIKE '{dataset}.%'")}


def _config_hashes(uri: str, dataset: str) -> dict[str, str]:
    """Ensemble semver -> config hash, as registered."""
    client = MlflowClient(uri, uri)
    return {v.tags[SEMVER_TAG]: v.tags[CONFIG_HASH_TAG]
            for v in client.search_model_versions(f"name = '{dataset}.ensemble'")}


@pytest.fixture(scope="module")
def stack_lifecycles(stack, specs):
    """Both datasets through the run queue, stage by stage; member partitions all at once."""
    queue = Queue(stack)
    started = time.perf_counter()
    queue.wait([queue.submit("data_job", spec) for spec in specs.values()])
    members = [queue.submit("members_job", spec, member) for spec in specs.values() for member in MEMBER_NAMES]
    queue.wait(members)
    queue.wait([queue.submit("ensemble_job", spec) for spec in specs.values()])
    queue.wait([queue.submit("governance_job", spec) for spec in specs.values()])
    return queue.intervals(members), time.perf_counter() - started


def test_lifecycles_run_concurrently_through_the_queue(stack_lifecycles):
    intervals, wall = stack_lifecycles
    assert len(intervals) == 2 * len(MEMBER_NAMES)
    most = most_at_once(intervals)
    print(f"member runs: {len(intervals)}, at most {most} at once, lifecycles {wall:.0f}s")
    assert 2 <= most <= MAX_RUNS


def test_stack_registers_once_with_the_versions_and_hashes_of_the_sqlite_path(
        stack, specs, stack_lifecycles, tmp_path, monkeypatch):
    monkeypatch.delenv(MLFLOW_URI_ENV, raising=False)
    sqlite_home = tmp_path / "sqlite-home"
    for spec in specs.values():
        assert cli.main(["--home", str(sqlite_home), "demo", "--dataset", str(spec)]) == 0
    sqlite_paths = PlatformPaths.from_env(sqlite_home)
    monkeypatch.setenv(MLFLOW_URI_ENV, stack.mlflow_uri)
    stack_paths = PlatformPaths.from_env(stack.home)
    for dataset in specs:
        on_stack = _registered(stack.mlflow_uri, dataset)
        expected = {**{f"{dataset}.{m}": ["1"] for m in MEMBER_NAMES}, f"{dataset}.ensemble": ["1"]}
        assert on_stack == expected
        assert on_stack == _registered(sqlite_paths.mlflow_tracking_uri, dataset)
        assert _config_hashes(stack.mlflow_uri, dataset) == _config_hashes(sqlite_paths.mlflow_tracking_uri, dataset)
        assert _config_hashes(stack.mlflow_uri, dataset).keys() == {VERSION}
        # The configs written under the stack's home are the registered ones.
        assert (stack_paths.configs_dir(dataset) / f"{VERSION}.json").is_file()
        # Artifacts went through the tracking server (--serve-artifacts) to its storage.
        experiment = MlflowClient(stack.mlflow_uri).get_experiment_by_name(f"ensemble_platform/{dataset}")
        assert experiment.artifact_location == f"mlflow-artifacts:/{dataset}"
        assert (stack.root / "mlflow-artifacts" / dataset).is_dir()


def test_release_and_decisions_against_the_stack(stack, specs, stack_lifecycles, monkeypatch):
    monkeypatch.setenv(MLFLOW_URI_ENV, stack.mlflow_uri)
    home = str(stack.home)
    dataset = load_spec(specs["credit_a"]).name
    release = Release(PlatformPaths.from_env(stack.home))
    failing = list(release.state(dataset, VERSION).gates.failing)
    assert cli.main(["--home", home, "approve", "--dataset", dataset, "--version", VERSION, "--reviewer", "bob",
                     "--decision", "approve", "--note", "reviewed on the stack",
                     *(["--waive", *failing] if failing else [])]) == 0
    for stage in ("staging", "production"):  # two processes at once per target: one promotes, one is a no-op
        outputs = _race_promotions(stack, home, dataset, stage)
        assert sorted(f"-> {stage}" in out for out in outputs) == [False, True], outputs
        assert sum(f"already in {stage}; nothing changed" in out for out in outputs) == 1, outputs
    promoted = [e["to"] for e in release.promotions_log(dataset).verify() if e.get("version") == VERSION]
    assert promoted == ["staging", "production"]
    assert cli.main(["--home", home, "export", "--dataset", dataset, "--version", VERSION]) == 0
    client = MlflowClient(stack.mlflow_uri, stack.mlflow_uri)
    assert str(client.get_registered_model(f"{dataset}.ensemble").aliases.get("production")) == "1"

    port = free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "ensemble_platform.service", "--home", home, "serve", "--dataset", dataset,
         "--no-auth", "--port", str(port)],
        env={**stack.env, MLFLOW_URI_ENV: stack.mlflow_uri}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if service.poll() is not None or time.monotonic() > deadline:
                output = service.stdout.read().decode() if service.stdout else ""
                pytest.fail(f"the decision service did not start:\n{output[-3000:]}")
            time.sleep(0.2)
        rows = json.loads(ParitySet.read(release.paths.parity_dir(dataset, VERSION)).rows.head(3)
                          .to_json(orient="records"))
        answer = httpx.post(f"{url}/v1/decisions", json={"request_id": "stack-1", "rows": rows}, timeout=60)
        assert answer.status_code == 200, answer.text
        decisions = answer.json()["decisions"]
        assert len(decisions) == 3
        # ... and written to the decision log (group commit: poll briefly).
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/decisions/{decisions[0]['decision_id']}", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the decision never reached the decision log"
            time.sleep(0.2)
        assert "decisions" in httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        if service.poll() is None:
            os.killpg(service.pid, 15)
        service.wait(timeout=60)
    # The decisions landed in the stack's PostgreSQL decision store (stack.sh env sets it), not under the home.
    monkeypatch.setenv(DECISION_STORE_ENV, stack.env[DECISION_STORE_ENV])
    stack_paths = PlatformPaths.from_env(stack.home)
    assert not decision_log_path(stack_paths).exists()
    with open_decision_store(stack_paths) as store:
        assert isinstance(store, PostgresChainStore)
        assert {d["decision_id"] for d in decisions} <= {e["id"] for e in store.iter_kinds(["decision"])}
        assert store.verify() >= len(decisions)


PROMOTER = textwrap.dedent("""
    import sys, time
    from ensemble_platform import cli
    time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # both call the CLI at the same instant
    sys.exit(cli.main(sys.argv[2:]))
""")


def _race_promotions(stack, home: str, dataset: str, stage: str) -> list[str]:
    start_at = time.time() + 10  # after both have imported the platform
    argv = ["--home", home, "promote", "--dataset", dataset, "--version", VERSION, "--to", stage]
    env = {**stack.env, MLFLOW_URI_ENV: stack.mlflow_uri}
    racers = [subprocess.Popen([sys.executable, "-c", PROMOTER, str(start_at), *argv], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [racer.communicate(timeout=300)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], [out[-2000:] for out in outputs]
    return outputs


RACER = textwrap.dedent("""
    import sys, time
    from ensemble_platform.data.loading import load_dataset
    from ensemble_platform.data.spec import load_spec
    from ensemble_platform.data.splitting import split_dataset
    from ensemble_platform.governance.registry import Registry
    from ensemble_platform.members.training import fit_member
    from ensemble_platform.settings import PlatformPaths

    spec = load_spec(sys.argv[1])
    split = split_dataset(load_dataset(spec), spec)
    fit = fit_member("logistic_regression", split, seed=7)
    registry = Registry(PlatformPaths.from_env(sys.argv[2]))
    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # both register at the same moment
    registered = registry.register_member(fit, "race", split.lineage(), split.X_train())
    print("VERSION", registered.version, fit.fingerprint)
""")


def test_two_processes_registering_one_member_get_one_version(stack, specs, tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    start_at = time.time() + 60  # after both have imported, loaded and fitted (a loaded machine is slow)
    env = {**stack.env, MLFLOW_URI_ENV: stack.mlflow_uri}
    racers = [subprocess.Popen([sys.executable, str(script), str(specs["credit_a"]), str(tmp_path / f"home{i}"),
                                str(start_at)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(2)]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), [err[-2000:] for _, err in outputs]
    answers = {line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("VERSION ")}
    assert len(answers) == 1, answers  # both processes were handed the same version
    client = MlflowClient(stack.mlflow_uri, stack.mlflow_uri)
    versions = client.search_model_versions("name = 'race.logistic_regression'")
    assert [str(v.version) for v in versions] == list(answers)
    live = [r for r in client.search_runs([client.get_experiment_by_name("ensemble_platform/race").experiment_id])]
    assert [r.info.run_id for r in live] == [versions[0].run_id]  # a losing racer's run is deleted
