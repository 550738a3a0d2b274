"""Keyed, hash-chained, checkpointed append-only logs.

Threat model: an attacker can write any file under the platform home but does not hold the
signing key (kept outside the home, see `keys`) and cannot change the installed code or write the
checkpoint directory (also outside the home, see `checkpoint`). Then every edit, insertion,
reordering, deletion, truncation and forgery of a log is detected, naming the first bad position.
Nothing here protects against a holder of the key: it can rewrite and re-sign anything.

Ground floor: imports only `ensemble_platform.errors`, `ensemble_platform.settings` and the stdlib.
"""

from ensemble_platform.integrity.chain import GENESIS, canonical_json, entry_digest, record_of, seal, verify_entries
from ensemble_platform.integrity.checkpoint import (
    CHECKPOINT_DIR_ENV,
    Checkpoint,
    CheckpointStore,
    default_checkpoint_dir,
    verify_against,
    verify_tail,
)
from ensemble_platform.integrity.errors import (
    ChainError,
    CheckpointError,
    IntegrityError,
    KeyMismatchError,
    LogIntegrityError,
    SigningKeyError,
    StoreClosedError,
)
from ensemble_platform.integrity.group_commit import GroupCommitWriter
from ensemble_platform.integrity.jsonl_log import KeyedLog
from ensemble_platform.integrity.keys import KEY_ENV, KEY_FILE_ENV, SigningKey, key_file_path, load_signing_key
from ensemble_platform.integrity.postgres_store import PostgresChainStore
from ensemble_platform.integrity.sqlite_store import SqliteChainStore
from ensemble_platform.integrity.store import ChainStore, RecordError

__all__ = [
    "CHECKPOINT_DIR_ENV",
    "GENESIS",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "ChainError",
    "ChainStore",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "GroupCommitWriter",
    "IntegrityError",
    "KeyMismatchError",
    "KeyedLog",
    "LogIntegrityError",
    "PostgresChainStore",
    "RecordError",
    "SigningKey",
    "SigningKeyError",
    "SqliteChainStore",
    "StoreClosedError",
    "canonical_json",
    "default_checkpoint_dir",
    "entry_digest",
    "key_file_path",
    "load_signing_key",
    "record_of",
    "seal",
    "verify_against",
    "verify_entries",
    "verify_tail",
]
