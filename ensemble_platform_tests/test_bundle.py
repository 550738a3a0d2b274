"""The serving bundle of a version promoted to production (real MLflow, real Dagster run):
contents, verification before unpickling, input checks, MLflow loading and serving, determinism."""

import dataclasses
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from ensemble_platform import cli
from ensemble_platform.errors import DataError
from ensemble_platform.governance.gates import gate_names
from ensemble_platform.governance.release import BUNDLE_TAGS
from ensemble_platform.policy import GovernancePolicy
from ensemble_platform.safe_format import UnsafeModelError
from ensemble_platform.serving.bundle import BundleError, load_bundle, sha256_file, verify_bundle
from ensemble_platform.serving.parity import ParitySet
from ensemble_platform_tests.conftest import home_in_production

DATASET = "credit_slice"
VERSION = "1.0.0"


@pytest.fixture(scope="module")
def production(tmp_path_factory, credit_slice):
    """A home whose 1.0.0 was approved (failing gates waived), staged and promoted to production."""
    _, _, release, result = home_in_production(tmp_path_factory.mktemp("bundle"), credit_slice)
    return release, Path(result.bundle.path), result


@pytest.fixture
def parity(production):
    release, _, _ = production
    return ParitySet.read(release.paths.parity_dir(DATASET, VERSION))


@pytest.fixture
def copy_of_bundle(production, tmp_path):
    _, bundle, _ = production
    return Path(shutil.copytree(bundle, tmp_path / VERSION))


def test_manifest_describes_members_schema_approval_and_every_file(production, tmp_path):
    release, bundle, result = production
    manifest = json.loads((bundle / "manifest.json").read_text())
    config = release.state(DATASET, VERSION).config
    assert (manifest["dataset"], manifest["ensemble_version"], manifest["config_hash"]) == (
        DATASET, VERSION, config.config_hash)
    assert [m["name"] for m in manifest["members"]] == [m.name for m in config.members]
    for member in manifest["members"]:
        assert member["sha256"] == sha256_file(bundle / member["file"]) == manifest["files"][member["file"]]
        assert member["run_id"] and member["registered_model"] == f"{DATASET}.{member['name']}"
    # The member files are the registered safe artefacts, byte for byte.
    registered = release.registry.download_member_artefact(f"{DATASET}.xgboost", "1", tmp_path / "xgboost")
    xgboost = next(m for m in manifest["members"] if m["name"] == "xgboost")
    assert registered is not None and sha256_file(registered) == xgboost["sha256"]
    columns = {c["name"]: c for c in manifest["input_schema"]["columns"]}
    assert columns["Income"]["type"] == "numeric" and "owner" in columns["Home"]["categories"]
    assert manifest["input_schema"]["unseen_category"] == "review"
    assert manifest["approval"]["reviewer"] == "bob" and manifest["approval"]["config_hash"] == config.config_hash
    assert manifest["created_at"] == manifest["approval"]["decided_at"]
    assert {"MLmodel", "requirements.txt", "model_card.html", "data/ensemble/combiner.skops",
            "data/ensemble/calibrator.skops"} <= set(manifest["files"])
    assert not [f for f in manifest["files"] if f.endswith((".pkl", ".pickle"))]
    assert "Approved" in (bundle / "model_card.md").read_text()
    tags = release.registry.client.get_model_version(f"{DATASET}.ensemble", "1").tags
    assert tags[BUNDLE_TAGS[1]] == sha256_file(bundle / "manifest.json") == result.bundle.manifest_sha256


def test_verify_bundle_says_when_nothing_vouches_for_the_manifest(copy_of_bundle, capsys):
    """Without the registry's manifest hash, `verify-bundle` exits 1 saying it is not authenticated (it
    printed "verified ... approved by ..." and exited 0 for a manifest anyone can write); a hand-written
    manifest listing no files, or lacking a field, is refused naming the cause (0 files passed; a missing
    field was a KeyError traceback)."""
    digest = sha256_file(copy_of_bundle / "manifest.json")
    assert cli.main(["verify-bundle", str(copy_of_bundle), "--manifest-sha256", digest]) == 0
    assert "as required" in capsys.readouterr().out
    assert cli.main(["verify-bundle", str(copy_of_bundle)]) == 1
    assert "NOT AUTHENTICATED" in capsys.readouterr().err
    manifest = json.loads((copy_of_bundle / "manifest.json").read_text())
    forged = copy_of_bundle.parent / "forged"
    forged.mkdir()
    (forged / "manifest.json").write_text(json.dumps({**manifest, "files": {}}))
    assert cli.main(["verify-bundle", str(forged)]) == 2
    assert "stored runtime is missing runtime.json" in capsys.readouterr().err
    (forged / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "dataset"}))
    assert cli.main(["verify-bundle", str(forged)]) == 2
    err = capsys.readouterr().err
    assert "missing or mistyped field(s) 'dataset' (str)" in err and "Traceback" not in err


def test_bundle_reproduces_the_validated_holdout_scores_exactly(production, parity):
    _, bundle, _ = production
    runtime = load_bundle(bundle)
    # MLflow's signature types numeric columns double: in Python they are sent as floats (int64 is refused).
    as_floats = parity.rows.astype({c: float for c in runtime.schema.numeric})
    for model in (runtime, mlflow.pyfunc.load_model(str(bundle))):
        served = model.score(parity.rows) if hasattr(model, "score") else model.predict(as_floats)
        for column in parity.scores.columns:
            np.testing.assert_array_equal(served[column].to_numpy(), parity.scores[column].to_numpy(), column)


@pytest.mark.parametrize("tamper, message", [
    (lambda b: (b / "data/ensemble/combiner.skops").write_bytes((b / "data/ensemble/combiner.skops").read_bytes() + b"x"),
     "changed file data/ensemble/combiner.skops"),
    (lambda b: (b / "data/ensemble/members/xgboost.skops").unlink(),
     "missing file data/ensemble/members/xgboost.skops"),
    (lambda b: (b / "data/ensemble/notes.pkl").write_bytes(b"\x80\x04N."), "extra file data/ensemble/notes.pkl"),
    # A file named like the manifest below the top was skipped by the walk (so never checked).
    (lambda b: (b / "data/ensemble/manifest.json").write_text("{}"), "extra file data/ensemble/manifest.json"),
    # A linked folder was not walked: its files were neither listed nor refused.
    (lambda b: (b / "code").symlink_to(b / "data", target_is_directory=True), "symbolic link code"),
    # A FIFO in a listed file's place blocked the read for ever.
    (lambda b: ((b / "data/ensemble/combiner.skops").unlink(), os.mkfifo(b / "data/ensemble/combiner.skops")),
     "data/ensemble/combiner.skops is not a regular file"),
], ids=["changed", "missing", "extra", "nested manifest", "linked folder", "fifo"])
def test_a_tampered_bundle_is_refused_naming_the_file(copy_of_bundle, tamper, message, capsys):
    tamper(copy_of_bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy_of_bundle)
    with pytest.raises(BundleError, match=message):
        mlflow.pyfunc.load_model(str(copy_of_bundle))
    assert cli.main(["verify-bundle", str(copy_of_bundle)]) == 2
    assert message in capsys.readouterr().err


class _Payload:
    """Unpickling this touches a marker file: proof that code in a pickle would have run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rewrite_manifest(bundle: Path) -> None:
    """What an attacker with write access does: recompute every hash in the manifest."""
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = {rel: sha256_file(bundle / rel) for rel in manifest["files"]}
    manifest_path.write_text(json.dumps(manifest))


def test_nothing_is_deserialised_before_the_hashes_match(copy_of_bundle, production, tmp_path):
    _, bundle, _ = production
    marker = tmp_path / "pwned"
    (copy_of_bundle / "data/ensemble/calibrator.skops").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(BundleError, match="changed file data/ensemble/calibrator.skops"):
        load_bundle(copy_of_bundle)
    assert not marker.exists()
    # An attacker who also rewrites the manifest is caught by the manifest hash the registry recorded.
    _rewrite_manifest(copy_of_bundle)
    with pytest.raises(BundleError, match="not the expected"):
        load_bundle(copy_of_bundle, expected_manifest_sha256=sha256_file(bundle / "manifest.json"))
    assert not marker.exists()


@pytest.mark.parametrize("part", ["data/ensemble/calibrator.skops", "data/ensemble/members/xgboost.skops"])
def test_a_rewritten_bundle_with_a_recomputed_manifest_still_cannot_run_code(copy_of_bundle, tmp_path, part):
    """Without the registry's manifest hash the manifest is the attacker's; the format still refuses:
    a pickle, and a skops payload naming a code-running type, load nothing and run nothing."""
    marker = tmp_path / "pwned"
    (copy_of_bundle / part).write_bytes(pickle.dumps(_Payload(marker)))
    _rewrite_manifest(copy_of_bundle)
    with pytest.raises(UnsafeModelError):
        load_bundle(copy_of_bundle)
    with pytest.raises(UnsafeModelError):
        mlflow.pyfunc.load_model(str(copy_of_bundle))
    assert not marker.exists()


def test_the_mlmodel_loader_is_covered_by_the_manifest(copy_of_bundle):
    """An edited `loader_module` in MLmodel is a changed file: the safe loader refuses the bundle.
    (`mlflow.pyfunc.load_model` itself imports whatever an MLmodel names before any check of ours
    can run: on an untrusted path, use `load_bundle` / `verify-bundle` first; README, Security.)"""
    mlmodel = copy_of_bundle / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("ensemble_platform.serving.bundle", "evil_loader"))
    with pytest.raises(BundleError, match="changed file MLmodel"):
        load_bundle(copy_of_bundle)


def test_the_service_loads_the_bytes_it_verified(copy_of_bundle, production, tmp_path, monkeypatch):
    """A file swapped on disk after verification is never what gets loaded: each file is read once."""
    from ensemble_platform.serving import bundle as bundle_module

    _, original, _ = production
    swapped = copy_of_bundle / "data/ensemble/calibrator.skops"
    good = swapped.read_bytes()
    real_read = bundle_module.read_verified

    def read_then_swap(directory, expected=None):
        result = real_read(directory, expected)
        swapped.write_bytes(b"swapped after verification")
        return result

    monkeypatch.setattr(bundle_module, "read_verified", read_then_swap)
    manifest, runtime = bundle_module.load_verified(copy_of_bundle, sha256_file(original / "manifest.json"))
    assert swapped.read_bytes() != good and runtime.calibrator is not None
    assert manifest["ensemble_version"] == VERSION


def test_input_rows_are_checked_against_the_schema(production, credit_slice):
    _, bundle, _ = production
    runtime = load_bundle(bundle)
    rows = credit_slice.head(4).copy()
    with pytest.raises(DataError, match=r"missing feature column\(s\) \['Income'\]"):
        runtime.score(rows.drop(columns=["Income"]))
    with pytest.raises(MlflowException, match="Income"):
        mlflow.pyfunc.load_model(str(bundle)).predict(rows.drop(columns=["Income"]))
    # The MLflow signature is typed from the training schema: numeric double, categorical string.
    signature = {c.name: c.type.name for c in Model.load(str(bundle)).signature.inputs.inputs}
    assert signature == {**{c: "double" for c in runtime.schema.numeric},
                         **{c: "string" for c in runtime.schema.categorical}}
    assert list(signature) == runtime.schema.features
    with pytest.raises(DataError, match="'Amount'.*lots"):
        runtime.score(rows.assign(Amount=rows["Amount"].astype(object).where(rows.index != rows.index[1], "lots")))
    unseen = rows.assign(Home=rows["Home"].where(rows.index != rows.index[2], "houseboat"))
    scored = runtime.score(unseen)  # default policy: score the row, and send it to a human
    low_agreement = (scored["agreement"] < runtime.agreement_threshold).to_numpy()
    assert scored["needs_review"].tolist() == (low_agreement | np.array([False, False, True, False])).tolist()
    lenient = dataclasses.replace(runtime, unseen_category="ignore").score(unseen)
    assert lenient["needs_review"].tolist() == low_agreement.tolist()
    np.testing.assert_array_equal(lenient["probability"], scored["probability"])
    strict = dataclasses.replace(runtime, unseen_category="error")
    with pytest.raises(DataError, match=r"column 'Home' has value\(s\) never seen in training \['houseboat'\]"):
        strict.score(unseen)


def test_reexport_is_byte_identical(production):
    release, bundle, result = production
    _, archive = release.bundle_paths(DATASET, VERSION)
    shutil.rmtree(bundle)
    archive.unlink()
    again = release.export(DATASET, VERSION)
    assert again.archive_sha256 == result.bundle.archive_sha256
    assert again.manifest_sha256 == result.bundle.manifest_sha256
    verify_bundle(bundle)


def test_release_gates_are_dagster_asset_checks(production):
    release, _, _ = production
    instance = dg.DagsterInstance.from_config(str(release.paths.dagster_home))
    gates = {g.name: g.passed for g in release.state(DATASET, VERSION).gates.gates}
    keys = [dg.AssetCheckKey(dg.AssetKey("release_gates"), "gate_" + name.replace(".", "_"))
            for name in gate_names(GovernancePolicy())]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    assert len(records) == len(gates) == len(keys)
    for key, name in zip(keys, gate_names(GovernancePolicy())):
        evaluation = records[key].event.dagster_event.event_specific_data
        assert evaluation.passed == gates[name], name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _invoke(port: int, payload: str, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=payload.encode(),
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_serves_the_bundle(production, parity):
    _, bundle, _ = production
    port = _free_port()
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    server = subprocess.Popen(
        [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", str(bundle), "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mlflow models serve did not start:\n" + server.stdout.read().decode()[-3000:])
                time.sleep(0.5)
        rows = parity.rows.head(25)
        assert rows.isna().any().any() and (rows.dtypes == "int64").any()  # missing values, integer columns
        expected = parity.scores["probability"].head(25).to_numpy()
        data = [[None if v != v else v for v in row] for row in rows.itertuples(index=False)]
        body = {"dataframe_split": {"columns": list(rows.columns), "data": data}}
        # JSON and CSV bodies are parsed by the signature's types (numeric double, categorical string).
        for payload, content_type in ((json.dumps(body), "application/json"), (rows.to_csv(index=False), "text/csv")):
            status, answer = _invoke(port, payload, content_type)
            assert status == 200, (content_type, answer)
            served = np.array([p["probability"] for p in answer["predictions"]])
            np.testing.assert_allclose(served, expected, rtol=0, atol=1e-12, err_msg=content_type)
        # A value that is not a number is refused by MLflow's parser naming the column (before the model runs).
        bad = {"dataframe_split": {"columns": list(rows.columns),
                                   "data": [[("lots" if c == "Amount" else v) for c, v in zip(rows.columns, data[0])]]}}
        status, answer = _invoke(port, json.dumps(bad), "application/json")
        assert status == 400 and "column Amount" in answer["message"] and "lots" in answer["message"], answer
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_hostile_numbers_empty_batches_and_empty_rows(production, credit_slice):
    """±inf and magnitudes past float32 are refused naming the column; no rows give no scores;
    a row missing most of its features is scored but sent to a human."""
    _, bundle, _ = production
    runtime = load_bundle(bundle)
    rows = credit_slice.head(3).copy()
    for value in (float("inf"), -float("inf"), 1e308):
        with pytest.raises(DataError, match=r"column 'Income' has 1 infinite or out-of-range"):
            runtime.score(rows.assign(Income=[value, 1.0, 2.0]))
    empty = runtime.score(rows.iloc[0:0])
    assert len(empty) == 0 and list(empty.columns) == ["probability", "decision", "agreement", "needs_review"]
    blank = rows.copy()
    blank.loc[blank.index[0], runtime.schema.features] = None
    scored = runtime.score(blank)
    assert bool(scored["needs_review"].iloc[0])
