"""The small protocol every decision-log store implements (SQLite now, Postgres later), and the
fields a stored record must carry.

A record is a JSON object with its own `"id"` (unique in the store), `"kind"` and `"created_at"`
(ISO 8601 text); the store seals it into a chain entry (`chain.py`). Integrity guarantees are
those of the chain and the checkpoint; see `sqlite_store.py` for what a store adds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ensemble_platform.integrity.chain import CHAIN_FIELDS
from ensemble_platform.integrity.errors import IntegrityError

RECORD_ID = "id"
RECORD_KIND = "kind"
RECORD_CREATED_AT = "created_at"
REQUIRED_RECORD_FIELDS = (RECORD_ID, RECORD_KIND, RECORD_CREATED_AT)


class RecordError(IntegrityError):
    """A record cannot be stored (missing or non-text id/kind/created_at, reserved field, duplicate id)."""


def check_record(record: Any) -> None:
    """Raise `RecordError` unless `record` is a mapping with text `id`, `kind`, `created_at` and no chain field."""
    if not isinstance(record, Mapping):
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    for field in REQUIRED_RECORD_FIELDS:
        value = record.get(field)
        if not isinstance(value, str) or not value:
            raise RecordError(f"record {record.get(RECORD_ID)!r}: field {field!r} must be a non-empty string, "
                              f"got {value!r}")
    clash = sorted(set(record) & set(CHAIN_FIELDS))
    if clash:
        raise RecordError(f"record {record[RECORD_ID]!r} uses reserved chain field(s) {clash}")


@runtime_checkable
class ChainStore(Protocol):
    """An append-only store of chain entries with a signed checkpoint."""

    name: str

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Seal and durably store `records` in order, atomically (all or none), then checkpoint."""
        ...

    def existing_ids(self, record_ids: Sequence[str]) -> set[str]:
        """The ids among `record_ids` already stored."""
        ...

    def get(self, record_id: str) -> dict[str, Any] | None:
        ...

    def iter_entries(self, since_seq: int = 0) -> Iterator[dict[str, Any]]:
        ...

    def count(self) -> int:
        ...

    def head(self) -> dict[str, Any] | None:
        ...

    def verify(self) -> int:
        """Check the whole chain and the checkpoint; returns the number of entries."""
        ...

    def verified_entries(self) -> list[dict[str, Any]]:
        """Every entry, in order, after the checks `verify` makes."""
        ...

    def close(self) -> None:
        ...
