"""Sealed asset values (`integrity.sealed_values`): attack tests. Someone who can write the platform
home but holds no key must not get a pickle of theirs unpickled, nor a genuine value accepted in
another place; a failed write leaves the previous value whole."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from ensemble_platform.integrity.keys import SigningKey
from ensemble_platform.integrity.sealed_values import MAGIC, SealedValueError, read_sealed, write_sealed
from ensemble_platform_tests.conftest import RunsCode

KEY = SigningKey(bytes(range(32)), "test")
OTHER_KEY = SigningKey(bytes(range(1, 33)), "other")
LABEL = "credit/member_model/random_forest"



class _Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("no")


@pytest.fixture
def stored(tmp_path) -> Path:
    path = tmp_path / "storage" / "member_model" / "random_forest"
    write_sealed(path, {"proba": np.arange(5.0), "name": "random_forest"}, KEY, LABEL)
    return path


def test_a_sealed_value_reads_back_equal(stored):
    value = read_sealed(stored, KEY, LABEL)
    assert value["name"] == "random_forest" and np.array_equal(value["proba"], np.arange(5.0))
    assert stored.read_bytes().startswith(MAGIC)


def _sealed_with_forged_mac(payload: bytes) -> bytes:
    return MAGIC + b"0" * 64 + b"\n" + payload


@pytest.mark.parametrize("forge", ["plain pickle", "sealed header, made-up MAC"])
def test_a_planted_pickle_never_runs(tmp_path, stored, forge):
    marker = tmp_path / "ran"
    payload = pickle.dumps(RunsCode(marker))
    assert not marker.exists()
    stored.write_bytes(payload if forge == "plain pickle" else _sealed_with_forged_mac(payload))
    with pytest.raises(SealedValueError, match=str(stored)):
        read_sealed(stored, KEY, LABEL)
    assert not marker.exists()
    pickle.loads(payload)  # the control: this file does run code when unpickled unchecked
    assert marker.exists()


@pytest.mark.parametrize("edit", ["flip a payload byte", "truncate", "append", "empty", "flip a MAC digit",
                                  "non-ASCII MAC"])
def test_an_edited_value_is_refused(stored, edit):
    data = stored.read_bytes()
    stored.write_bytes({
        "flip a payload byte": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],
        "truncate": data[:-10],
        "append": data + b".",
        "empty": b"",
        "flip a MAC digit": data[:len(MAGIC)] + (b"1" if data[len(MAGIC):len(MAGIC) + 1] != b"1" else b"2")
        + data[len(MAGIC) + 1:],
        "non-ASCII MAC": data[:len(MAGIC)] + "é".encode() * 32 + data[len(MAGIC) + 64:],
    }[edit])
    with pytest.raises(SealedValueError, match="materialize its asset again"):
        read_sealed(stored, KEY, LABEL)


def test_a_genuine_value_is_refused_in_another_place_or_under_another_key(stored):
    with pytest.raises(SealedValueError, match="credit/member_model/xgboost"):
        read_sealed(stored, KEY, "credit/member_model/xgboost")
    with pytest.raises(SealedValueError, match="other/member_model/random_forest"):
        read_sealed(stored, KEY, "other/member_model/random_forest")
    with pytest.raises(SealedValueError, match=OTHER_KEY.key_id):
        read_sealed(stored, OTHER_KEY, LABEL)


def test_a_label_cannot_be_shifted_into_the_payload(tmp_path):
    """The label is length-prefixed: (label 'ab', payload 'c...') never MACs like (label 'a', 'bc...')."""
    path = tmp_path / "v"
    write_sealed(path, 1, KEY, "credit/a")
    data = path.read_bytes()
    header = len(MAGIC) + 65
    shifted = data[:header] + b"a" + data[header:]
    path.write_bytes(shifted)
    with pytest.raises(SealedValueError):
        read_sealed(path, KEY, "credit/")


def test_a_failed_write_keeps_the_previous_value_and_leaves_no_temp_file(stored):
    before = stored.read_bytes()
    with pytest.raises(pickle.PicklingError):
        write_sealed(stored, {"half": np.zeros(1000), "bad": _Unpicklable()}, KEY, LABEL)
    assert stored.read_bytes() == before
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]


def test_the_io_manager_binds_a_value_to_its_dataset_and_asset(tmp_path):
    """The orchestrator's IO manager seals with the dataset and the asset path: the same asset's
    genuine value copied from another dataset's storage, or another asset's, is refused."""
    from upath import UPath

    from ensemble_platform.defs.resources import SealedValueIOManager

    storage = tmp_path / "dagster" / "storage"
    a = SealedValueIOManager(storage / "credit_a", "credit_a", KEY)
    b = SealedValueIOManager(storage / "credit_b", "credit_b", KEY)
    a.dump_to_path(None, {"rows": 1}, UPath(storage / "credit_a" / "train_holdout_split"))
    assert a.load_from_path(None, UPath(storage / "credit_a" / "train_holdout_split")) == {"rows": 1}
    copied = storage / "credit_b" / "train_holdout_split"
    copied.parent.mkdir(parents=True)
    copied.write_bytes((storage / "credit_a" / "train_holdout_split").read_bytes())
    with pytest.raises(SealedValueError, match="credit_b/train_holdout_split"):
        b.load_from_path(None, UPath(copied))
    moved = storage / "credit_a" / "raw_dataset"
    moved.write_bytes(copied.read_bytes())
    with pytest.raises(SealedValueError, match="credit_a/raw_dataset"):
        a.load_from_path(None, UPath(moved))
