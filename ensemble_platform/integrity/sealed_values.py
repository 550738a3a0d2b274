"""Sealed values: Python objects stored as pickles that are unpickled only when a MAC over their
bytes, keyed with the platform's signing key, verifies.

Why: the orchestrator keeps every asset value (the split, member records, fitted combiners) under
the platform home, and unpickling runs whatever the bytes say. Anyone who can write a file there
(the threat model, README "Security") could otherwise replace a value with a pickle that runs code in
the next run, which holds the signing key. Dagster's own filesystem IO manager unpickles what it
finds, so the platform stores its values this way instead (`defs.resources.DatasetStorage`).

Layout: MAGIC, the hex HMAC-SHA256, a newline, then the pickle. The MAC covers a label (where the
value belongs: dataset and asset path, so a sealed value moved to another asset or dataset is
refused) and the pickle bytes. The key is derived from the signing key for this one use (a MAC
made for a log line can never pass as one of a value, nor the reverse).

A value is read into memory once, checked and unpickled from those same bytes (no window between
check and use); it is written through the MAC as it is pickled (no second copy in memory), to a
temporary file fsynced and renamed into place (`files.atomic_path`: nothing half-written under the final name).

Does not protect against: a holder of the key; replacing a value with an OLDER sealed value of the
same asset and partition, or with the same asset's value from another home sealed with the same key
(the platform wrote both, so nothing foreign runs, but the next run computes on that value).
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from ensemble_platform.files import atomic_path
from ensemble_platform.integrity.errors import IntegrityError
from ensemble_platform.integrity.keys import SigningKey

MAGIC = b"ensemble_platform sealed value v1\n"
_MAC_HEX = 64
_HEADER = len(MAGIC) + _MAC_HEX + 1
_PURPOSE = b"ensemble_platform/sealed-values/v1"
PICKLE_PROTOCOL = 5


class SealedValueError(IntegrityError):
    """A stored value is not sealed by this platform's key for this place: tampered, truncated,
    moved from another asset, written by another key or by a platform version that did not seal."""


def storage_key(key: SigningKey) -> bytes:
    """The MAC key of sealed values: derived from the signing key for this purpose only."""
    return hmac.new(key.secret, _PURPOSE, hashlib.sha256).digest()


def _mac(secret: bytes, label: str) -> hmac.HMAC:
    encoded = label.encode()
    return hmac.new(secret, len(encoded).to_bytes(8, "big") + encoded, hashlib.sha256)


class _MacWriter:
    """A file wrapper that feeds every byte written to the MAC (pickle writes through it)."""

    def __init__(self, handle: BinaryIO, mac: hmac.HMAC):
        self.handle, self.mac = handle, mac

    def write(self, data: bytes) -> int:
        self.mac.update(data)
        return self.handle.write(data)


def write_sealed(path: Path, value: Any, key: SigningKey, label: str) -> None:
    """Pickle `value` to `path`, sealed for `label`; atomically (`files.atomic_path`)."""
    with atomic_path(Path(path)) as tmp, tmp.open("wb") as handle:
        handle.write(MAGIC + b"0" * _MAC_HEX + b"\n")
        mac = _mac(storage_key(key), label)
        pickle.dump(value, _MacWriter(handle, mac), PICKLE_PROTOCOL)
        handle.seek(len(MAGIC))
        handle.write(mac.hexdigest().encode())


def read_sealed(path: Path, key: SigningKey, label: str) -> Any:
    """The value at `path` if its seal verifies for `label` under `key`; else SealedValueError naming
    the file and what is wrong. Nothing is unpickled before the check passes."""
    path = Path(path)
    data = path.read_bytes()
    remedy = "materialize its asset again (nothing from this file was loaded)"
    if not data.startswith(MAGIC) or len(data) < _HEADER or data[_HEADER - 1:_HEADER] != b"\n":
        raise SealedValueError(f"stored value {path} is not a sealed value (tampered, or written by a platform "
                               f"version that did not seal its values); {remedy}")
    stored = data[len(MAGIC):_HEADER - 1]
    payload = memoryview(data)[_HEADER:]
    mac = _mac(storage_key(key), label)
    mac.update(payload)
    if not hmac.compare_digest(mac.hexdigest().encode(), stored):  # bytes: any stored bytes compare
        raise SealedValueError(f"stored value {path} does not verify for {label!r} with the signing key "
                               f"{key.key_id} (tampered, truncated, moved from another asset, or sealed with "
                               f"another key); {remedy}")
    return pickle.loads(payload)
