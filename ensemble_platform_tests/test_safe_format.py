"""The code-free serialisation format: exact round trips, deterministic bytes, refused attacks."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from ensemble_platform import safe_format
from ensemble_platform.data.schema import FeatureSchema
from ensemble_platform.ensemble.calibrators import ProbabilityCalibrator
from ensemble_platform.ensemble.runtime import OWN_TYPES
from ensemble_platform.ensemble.strategies import (
    Combiner,
    MajorityVote,
    strategy_catalogue,
)
from ensemble_platform.errors import PlatformError
from ensemble_platform.members.catalogue import CATALOGUE, MEMBER_NAMES, predict_single_threaded
from ensemble_platform.safe_format import (
    SKLEARN_ALLOWED,
    MalformedModelError,
    UnsafeModelError,
    allowed_names,
    dumps,
    loads,
)

# The allow-list the runtime loads with: the tests exercise exactly what serving trusts.
OURS = OWN_TYPES
SCHEMA = FeatureSchema(("a", "b", "c"), ("d", "e"), {"d": ("x", "y", "z"), "e": ("p", "q")})
ROWS = 400


def synthetic() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({
        "a": rng.normal(size=ROWS),
        "b": rng.normal(size=ROWS),
        "c": rng.uniform(size=ROWS),
        "d": rng.choice(["x", "y", "z"], size=ROWS).astype(object),
        "e": rng.choice(["p", "q"], size=ROWS).astype(object),
    })
    X.loc[rng.random(ROWS) < 0.1, "a"] = np.nan
    X.loc[rng.random(ROWS) < 0.05, "c"] = np.nan
    X.loc[rng.random(ROWS) < 0.1, "d"] = None
    logit = 1.2 * X["b"].to_numpy() + (X["d"] == "x").to_numpy() - 0.5 * (X["e"] == "q").to_numpy()
    y = (logit + rng.logistic(size=ROWS) * 0.5 > 0.2).astype(int)
    return X, y


def fitted_member(name: str) -> Any:
    X, y = synthetic()
    return predict_single_threaded(CATALOGUE[name].build(SCHEMA, 0).fit(X, y))


def probability_matrix() -> np.ndarray:
    return np.random.default_rng(1).uniform(0.01, 0.99, size=(ROWS, 4))


def fitted_combiners() -> dict[str, Combiner]:
    X, y = synthetic()
    P = probability_matrix()
    return {name: combiner.fit(P, y, X) for name, combiner in strategy_catalogue(SCHEMA, 0).items()}


def fitted_calibrator(method: str) -> Any:
    _, y = synthetic()
    return ProbabilityCalibrator(method).fit(probability_matrix()[:, 0], y)


def digests() -> dict[str, str]:
    """SHA-256 of the payload of one object of each kind (run in a subprocess, too)."""
    objects = {"random_forest": fitted_member("random_forest"), "xgboost": fitted_member("xgboost"),
               "k_nearest_neighbours": fitted_member("k_nearest_neighbours"),
               "hist_gradient_boosting": fitted_member("hist_gradient_boosting"),
               "stacking_passthrough": fitted_combiners()["stacking_passthrough"],
               "isotonic": fitted_calibrator("isotonic")}
    return {name: hashlib.sha256(dumps(obj)).hexdigest() for name, obj in objects.items()}


def schema_types(payload: bytes) -> set[str]:
    found: set[str] = set()

    def visit(state: Any) -> None:
        if isinstance(state, dict):
            if "__loader__" in state:
                found.add(f"{state['__module__']}.{state['__class__']}")
            for value in state.values():
                visit(value)
        elif isinstance(state, list):
            for value in state:
                visit(value)

    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        visit(json.loads(archive.read("schema.json")))
    return found


# --- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_member_round_trip_is_bit_identical_and_bytes_are_stable(name: str) -> None:
    X, _ = synthetic()
    member = fitted_member(name)
    payload = dumps(member)
    assert dumps(member) == payload
    loaded = loads(payload, [])
    # Re-serialising the loaded model gives the same bytes (before predicting: a KD-tree counts
    # its queries, which is state).
    assert dumps(loaded) == payload
    assert type(loaded) is type(member)
    assert np.array_equal(loaded.predict_proba(X), member.predict_proba(X))
    assert np.array_equal(loaded.predict(X), member.predict(X))


def _public_path_bytes(obj: Any) -> bytes:
    """`dumps` as it was written first: skops's public `sio.dumps`, then the canonical rewrite."""
    prepared = safe_format._map_graph(obj, safe_format._to_state, {})
    with zipfile.ZipFile(io.BytesIO(sio.dumps(prepared))) as archive:
        schema = json.loads(archive.read("schema.json"))
        blobs = {name: archive.read(name) for name in archive.namelist() if name != "schema.json"}
    return safe_format._canonical(schema, blobs)


@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_dumps_without_skops_archive_gives_the_public_paths_bytes(name: str) -> None:
    # `dumps` takes skops's state directly instead of encoding, zipping and decoding it: the bytes
    # must be exactly those of the public `sio.dumps` path (a forest, boosting, XGBoost, k-NN ...).
    member = fitted_member(name)
    assert dumps(member) == _public_path_bytes(member)


def test_dumps_without_skops_archive_matches_for_combiners_and_calibrators() -> None:
    parts = [*fitted_combiners().values(), *(fitted_calibrator(m) for m in ("isotonic", "sigmoid"))]
    for part in parts:
        assert dumps(part) == _public_path_bytes(part), type(part).__name__


def test_xgboost_is_stored_as_ubj_bytes_and_plain_parameters() -> None:
    X, _ = synthetic()
    member = fitted_member("xgboost")
    payload = dumps(member)
    types = schema_types(payload)
    assert not any(t.startswith("xgboost.") for t in types), types
    assert "ensemble_platform.safe_format.XGBoostModelState" in types
    loaded = loads(payload, [])
    original, restored = member.steps[-1][1], loaded.steps[-1][1]
    assert type(restored) is type(original)
    assert restored is not original and member.steps[-1][1] is original  # dumps did not mutate
    assert _same_params(original.get_params(), restored.get_params())
    features = member[:-1].transform(X)
    assert np.array_equal(restored.predict_proba(features), original.predict_proba(features))


def _same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
               for x, y in ((a[k], b[k]) for k in a))


@pytest.mark.parametrize("name", list(strategy_catalogue(SCHEMA, 0)))
def test_combiner_round_trip(name: str) -> None:
    X, _ = synthetic()
    P = np.random.default_rng(2).uniform(0.01, 0.99, size=(ROWS, 4))
    combiner = fitted_combiners()[name]
    payload = dumps(combiner)
    assert dumps(combiner) == payload
    loaded = loads(payload, OURS)
    assert type(loaded) is type(combiner)
    assert dumps(loaded) == payload
    assert np.array_equal(loaded.predict_proba(P, X), combiner.predict_proba(P, X))
    assert loaded.describe() == combiner.describe()


@pytest.mark.parametrize("method", ["none", "isotonic", "sigmoid"])
def test_calibrator_round_trip(method: str) -> None:
    p = np.random.default_rng(3).uniform(size=ROWS)
    calibrator = fitted_calibrator(method)
    payload = dumps(calibrator)
    assert dumps(calibrator) == payload
    loaded = loads(payload, OURS)
    assert dumps(loaded) == payload
    assert np.array_equal(loaded.transform(p), calibrator.transform(p))
    assert loaded.describe() == calibrator.describe()


def test_bytes_are_identical_across_processes() -> None:
    here = digests()
    root = Path(__file__).resolve().parents[1]
    code = "import json; from ensemble_platform_tests.test_safe_format import digests; print(json.dumps(digests()))"
    for seed in ("1", "12345"):  # str hashing (set order) differs per seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                             check=True, timeout=300)
        assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_allowed_names_and_allow_list_are_exact() -> None:
    assert allowed_names(MajorityVote, MajorityVote) == ("ensemble_platform.ensemble.strategies.MajorityVote",)
    assert len(set(SKLEARN_ALLOWED)) == len(SKLEARN_ALLOWED)
    assert all(name.count(".") >= 1 and not name.endswith(".") and "*" not in name for name in SKLEARN_ALLOWED)
    with pytest.raises(TypeError):
        allowed_names("sklearn.pipeline.Pipeline")  # type: ignore[arg-type]


def test_our_classes_must_be_allowed_explicitly() -> None:
    payload = dumps(fitted_combiners()["stacking_passthrough"])
    with pytest.raises(UnsafeModelError) as refused:
        loads(payload, [])
    assert "ensemble_platform.ensemble.strategies.Stacking" in str(refused.value)
    assert "ensemble_platform.data.schema.FeatureSchema" in str(refused.value)


def test_sklearn_types_skops_trusts_by_default_are_still_refused() -> None:
    from sklearn.svm import SVC

    X, y = synthetic()
    payload = dumps(SVC().fit(X[["b"]].to_numpy(), y))
    assert "sklearn.svm._classes.SVC" not in sio.get_untrusted_types(data=payload)  # skops would load it
    with pytest.raises(UnsafeModelError, match=r"sklearn\.svm\._classes\.SVC"):
        loads(payload, [])


# --- attacks ----------------------------------------------------------------------------------

def _protocol() -> int:
    with zipfile.ZipFile(io.BytesIO(dumps(0))) as archive:
        return json.loads(archive.read("schema.json"))["protocol"]


def _zip(root: dict[str, Any], files: dict[str, bytes] | None = None) -> bytes:
    root = {**root, "protocol": _protocol(), "_skops_version": "0.16.0"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps(root))
        for name, data in (files or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _json(value: Any) -> dict[str, Any]:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value),
            "is_json": True}


def _seq(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"__class__": kind, "__module__": "builtins", "__loader__": f"{kind.capitalize()}Node", "content": items}


def _type(module: str, name: str) -> dict[str, Any]:
    return {"__class__": name, "__module__": module, "__loader__": "TypeNode"}


def _system_key_payload(command: str) -> bytes:
    """A dict whose key type is `posix.system`: skops calls key_type(key) while building it."""
    return _zip({"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                 "content": {command: _json(1)}, "key_types": _seq("list", [_type(os.name, "system")])})


def _reduce_payload(module: str, name: str, args: list[Any]) -> bytes:
    """`module.name(*args)` through skops's constructor-from-reduce node (a pickle-style reduce)."""
    return _zip({"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
                 "content": _seq("tuple", [_json(a) for a in args])})


def test_posix_system_payload_is_refused_and_does_not_run(tmp_path: Path) -> None:
    control, marker = tmp_path / "control", tmp_path / "marker"
    # The payload is live: skops itself runs it once the type is trusted.
    sio.loads(_system_key_payload(f"touch {control}"), trusted=[f"{os.name}.system", "builtins.int"])
    assert control.exists()
    with pytest.raises(UnsafeModelError, match=rf"{os.name}\.system"):
        loads(_system_key_payload(f"touch {marker}"), OURS)
    assert not marker.exists()


def test_hand_edited_member_naming_posix_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    payload = dumps(fitted_calibrator("none"))
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        schema = json.loads(archive.read("schema.json"))
    # Swap the calibrator's attribute dict for one that calls posix.system on its key.
    schema["content"] = {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                         "content": {f"touch {marker}": _json(1)},
                         "key_types": _seq("list", [_type("posix", "system")])}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
    with pytest.raises(UnsafeModelError, match=r"posix\.system"):
        loads(buffer.getvalue(), OURS)
    assert not marker.exists()


@pytest.mark.parametrize("target", [("builtins", "eval"), ("subprocess", "Popen"), ("os", "system")])
def test_reduce_style_payloads_are_refused_and_do_not_run(tmp_path: Path, target: tuple[str, str]) -> None:
    marker = tmp_path / "marker"
    module, name = target
    args: list[Any] = {
        "eval": [f"__import__('pathlib').Path({str(marker)!r}).touch()"],
        "Popen": [["touch", str(marker)]],
        "system": [f"touch {marker}"],
    }[name]
    payload = _reduce_payload(module, name, args)
    with pytest.raises(UnsafeModelError) as refused:
        loads(payload, [*OURS, f"{module}.{name}"])  # even a careless allow-list cannot enable this node kind
    assert "ConstructorFromReduceNode" in str(refused.value)
    with pytest.raises(UnsafeModelError, match=rf"{module}\.{name}"):
        loads(_zip({"__class__": name, "__module__": module, "__loader__": "ObjectNode",
                    "content": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                                "content": {}, "key_types": _seq("list", [])}}), OURS)
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("pickler", [pickle, cloudpickle])
def test_pickle_files_are_refused_not_executed(tmp_path: Path, pickler: Any) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(MalformedModelError):
        loads(pickler.dumps(_Evil(marker)), OURS)
    with pytest.raises(MalformedModelError):
        loads(cloudpickle.dumps(fitted_calibrator("sigmoid")), OURS)
    assert not marker.exists()


def test_pickled_array_inside_the_archive_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    payload = _zip({"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy",
                    "file": "a.npy"}, {"a.npy": buffer.getvalue()})
    with pytest.raises(MalformedModelError):
        loads(payload, OURS)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad_json", "no_schema", "compressed",
                                    "missing_blob", "old_protocol"])
def test_damaged_payloads_raise_a_clean_error(damage: str) -> None:
    good = dumps(fitted_calibrator("isotonic"))
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}

    def rezip(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return buffer.getvalue()

    schema = json.loads(entries["schema.json"])
    payload = {
        "truncated": good[: len(good) // 2],
        "garbage": os.urandom(2048),
        "empty": b"",
        "bad_json": rezip({**entries, "schema.json": b"{not json"}),
        "no_schema": rezip({k: v for k, v in entries.items() if k != "schema.json"}),
        "compressed": rezip(entries, zipfile.ZIP_DEFLATED),
        "missing_blob": rezip({k: v for k, v in entries.items() if not k.endswith(".npy")}),
        "old_protocol": rezip({**entries, "schema.json": json.dumps({**schema, "protocol": 0}).encode()}),
    }[damage]
    with pytest.raises(MalformedModelError) as refused:
        loads(payload, OURS)
    assert isinstance(refused.value, PlatformError)


def _edit_blobs(payload: bytes, edit: Any) -> bytes:
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    for name in sorted(entries):
        if name.endswith(".npy"):
            array = np.load(io.BytesIO(entries[name]), allow_pickle=False)
            if edit(array):
                out = io.BytesIO()
                np.save(out, array, allow_pickle=False)
                entries[name] = out.getvalue()
                break
    else:
        raise AssertionError("nothing edited")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_out_of_range_tree_indices_are_refused() -> None:
    def corrupt(array: np.ndarray) -> bool:
        if array.dtype.names and "left_child" in array.dtype.names and len(array) > 1:
            array["left_child"][0] = 10**9
            return True
        return False

    with pytest.raises(UnsafeModelError, match="out of range"):
        loads(_edit_blobs(dumps(fitted_member("random_forest")), corrupt), [])


def test_out_of_range_boosted_tree_indices_are_refused() -> None:
    def corrupt(array: np.ndarray) -> bool:
        if array.dtype.names and "feature_idx" in array.dtype.names and len(array) > 1:
            array["feature_idx"][0] = 10**6
            return True
        return False

    with pytest.raises(UnsafeModelError, match="out of range"):
        loads(_edit_blobs(dumps(fitted_member("hist_gradient_boosting")), corrupt), [])


def test_kd_tree_index_array_is_checked() -> None:
    member = fitted_member("k_nearest_neighbours")
    n = len(member.steps[-1][1]._fit_X)

    def corrupt(array: np.ndarray) -> bool:
        if array.dtype == np.intp and array.shape == (n,) and np.array_equal(np.sort(array), np.arange(n)):
            array[0] = 10**9
            return True
        return False

    with pytest.raises(UnsafeModelError, match="KDTree"):
        loads(_edit_blobs(dumps(member), corrupt), [])


def test_xgboost_state_cannot_point_at_a_file() -> None:
    payload = dumps(fitted_member("xgboost"))
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    schema = json.loads(entries["schema.json"])

    def swap(state: Any) -> bool:
        if isinstance(state, dict):
            if state.get("__loader__") == "BytesNode":
                entries.pop(state["file"])
                state.clear()
                state.update(_json("/etc/passwd"))
                return True
            return any(swap(v) for v in list(state.values()))
        return isinstance(state, list) and any(swap(v) for v in state)

    assert swap(schema)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
        for name, data in entries.items():
            if name != "schema.json":
                archive.writestr(name, data)
    with pytest.raises(UnsafeModelError, match="bytes"):
        loads(buffer.getvalue(), [])


def test_loads_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        loads("not bytes", [])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loads(dumps(0), ["sklearn.*"])
    assert loads(dumps({"a": [1, 2.5, "x", None]}), []) == {"a": [1, 2.5, "x", None]}
    assert safe_format.UnsafeModelError is UnsafeModelError
