"""The entry format every keyed log shares: a hash chain whose links are signed with an HMAC.

An entry is a JSON object `{"seq": n, "prev_sha256": ..., "sha256": ..., "mac": ..., **record}`:
  - `seq` counts from 1 without gaps;
  - `prev_sha256` is the `sha256` of entry n-1 (`GENESIS`, 64 zeros, for entry 1);
  - `sha256` is SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8, no NaN) of the
    entry without `sha256` and `mac`;
  - `mac` is HMAC-SHA256, under the signing key, of the `sha256` value (hex, ASCII).

Protects against (with the key kept away from the attacker): editing, inserting, reordering or
deleting entries in the middle, and forging entries (a recomputed SHA-256 does not help without
the key). `verify_entries` names the first bad position.

Does not protect against, on its own: dropping the LAST entries, or replacing the whole log by an
older copy; a chain prefix is a valid chain. The signed checkpoint (`checkpoint.py`), stored
outside the platform home, closes that. Nothing protects against a holder of the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ensemble_platform.integrity.errors import ChainError, IntegrityError
from ensemble_platform.integrity.keys import SigningKey

GENESIS = "0" * 64
SEQ = "seq"
PREV = "prev_sha256"
SHA = "sha256"
MAC = "mac"
CHAIN_FIELDS = (SEQ, PREV, SHA, MAC)

REORDERED = "deleted, inserted or reordered"
UNLINKED = "prev link broken: prev_sha256 is not the sha256 of the previous entry"
EDITED = "edited"
FORGED = "forged or signed with another key: MAC does not verify"
UNSIGNED = "unsigned entry (written before keyed logs)"
MALFORMED = "not a chain entry"


def canonical_json(document: Any) -> bytes:
    """The bytes every hash is taken over: sorted keys, no whitespace, UTF-8, strict JSON (no NaN)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def entry_text(entry: Mapping[str, Any]) -> str:
    """How an entry is stored: the same canonical JSON (so a stored entry can be checked byte for byte)."""
    return canonical_json(entry).decode("utf-8")


def entry_digest(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the entry without its `sha256` and `mac`."""
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k not in (SHA, MAC)})).hexdigest()


def seal(record: Mapping[str, Any], prev_entry: Mapping[str, Any] | None, key: SigningKey) -> dict[str, Any]:
    """The entry that follows `prev_entry` (None: the first entry) and carries `record`.

    Raises `IntegrityError` if the record uses a chain field or is not strict JSON.
    """
    clash = sorted(set(record) & set(CHAIN_FIELDS))
    if clash:
        raise IntegrityError(f"record uses reserved chain field(s) {clash}; rename them")
    entry: dict[str, Any] = {
        **record,
        SEQ: int(prev_entry[SEQ]) + 1 if prev_entry else 1,
        PREV: str(prev_entry[SHA]) if prev_entry else GENESIS,
    }
    try:
        entry[SHA] = entry_digest(entry)
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"record {dict(record)!r:.200} is not strict JSON ({exc})") from exc
    entry[MAC] = key.mac(entry[SHA].encode("ascii"))
    return entry


def check_entry(entry: Any, key: SigningKey, *, position: int, expected_seq: int, prev_sha256: str,
                name: str = "") -> None:
    """Check one entry against the chain state before it; raises `ChainError` naming `position`."""
    if not isinstance(entry, Mapping) or not all(field in entry for field in (SEQ, PREV, SHA)):
        raise ChainError(position, MALFORMED, name=name, detail=f"expected a JSON object with {list(CHAIN_FIELDS)}")
    if MAC not in entry:
        raise ChainError(position, UNSIGNED, name=name, detail="no 'mac' field")
    if entry[SEQ] != expected_seq:
        raise ChainError(position, REORDERED, name=name, detail=f"seq {entry[SEQ]!r}, expected {expected_seq}")
    if entry[PREV] != prev_sha256:
        raise ChainError(position, UNLINKED, name=name)
    try:
        digest = entry_digest(entry)
    except (TypeError, ValueError) as exc:
        raise ChainError(position, EDITED, name=name, detail=f"not strict JSON: {exc}") from exc
    if entry[SHA] != digest:
        raise ChainError(position, EDITED, name=name, detail="content does not match its sha256")
    if not isinstance(entry[SHA], str) or not key.verify(entry[SHA].encode("ascii", "replace"), entry[MAC]):
        raise ChainError(position, FORGED, name=name, detail=f"key {key.key_id}")


def verify_entries(entries: Iterable[Any], key: SigningKey, *, name: str,
                   after: Mapping[str, Any] | None = None) -> None:
    """Check every entry in order; raises `ChainError` at the first bad one.

    `after` is the (already trusted) entry preceding the first of `entries`: pass it to verify a
    segment of a log (positions then continue from `after[seq] + 1`). Without it the entries must
    start at seq 1 from `GENESIS`.
    """
    expected = int(after[SEQ]) + 1 if after else 1
    previous = str(after[SHA]) if after else GENESIS
    for entry in entries:
        check_entry(entry, key, position=expected, expected_seq=expected, prev_sha256=previous, name=name)
        previous = entry[SHA]
        expected += 1


def record_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The record an entry carries (the entry without its chain fields)."""
    return {k: v for k, v in entry.items() if k not in CHAIN_FIELDS}
