"""Signed checkpoints: how many entries a log had and the sha256 of the last, kept APART from the log.

A hash chain alone cannot tell a log from its own prefix: dropping the last lines, emptying the
file or deleting it leaves a valid (shorter) chain. After every append the writer stores a
checkpoint `{"log", "count", "head_sha256", "key_id", "mac"}` (the MAC over the canonical JSON
of the other fields) outside the platform home. Verification then requires the log to have at
least `count` entries with entry `count` equal to `head_sha256`. Entries beyond the checkpoint are
accepted only if they chain and carry valid MACs: the writer crashed between appending and
checkpointing.

Protects against (attacker writes anything under the platform home, has no key, cannot write the
checkpoint directory): truncation, emptying, deletion and replacement of a log, forged or edited
checkpoints (MAC), a checkpoint copied from another log (`log` is signed).

Does not protect against:
  - an attacker who can also write the checkpoint directory: they can put back an OLDER signed
    checkpoint and truncate the log to match (a rollback). That is why a checkpoint directory
    inside the platform home is refused; keep it on storage the platform's writers own;
  - dropping entries appended after the last checkpoint (only possible after a crash in between);
  - a holder of the key.

Location: env `ENSEMBLE_PLATFORM_CHECKPOINT_DIR`, else
`<key file directory>/checkpoints/<first 16 hex of sha256(str(resolved platform home))>/`.
A fresh deployment needs nothing: no log and no checkpoint is an empty, valid log.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ensemble_platform.integrity.chain import PREV, SEQ, SHA, canonical_json, check_entry, verify_entries
from ensemble_platform.integrity.errors import CheckpointError, KeyMismatchError
from ensemble_platform.integrity.keys import DIR_MODE, FILE_MODE, SigningKey, is_inside, key_file_path
from ensemble_platform.settings import PlatformPaths

CHECKPOINT_DIR_ENV = "ENSEMBLE_PLATFORM_CHECKPOINT_DIR"
CHECKPOINTS_DIRNAME = "checkpoints"
CHECKPOINT_SUFFIX = ".checkpoint.json"
HOME_ID_CHARS = 16
LOG = "log"
COUNT = "count"
HEAD = "head_sha256"
KEY_ID = "key_id"
MAC = "mac"
CHECKPOINT_FIELDS = (LOG, COUNT, HEAD, KEY_ID, MAC)


@dataclass(frozen=True)
class Checkpoint:
    log: str
    count: int
    head_sha256: str
    key_id: str
    mac: str

    def body(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != MAC}

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=2).encode() + b"\n"

    @classmethod
    def signed(cls, log: str, count: int, head_sha256: str, key: SigningKey) -> Checkpoint:
        body = {LOG: log, COUNT: count, HEAD: head_sha256, KEY_ID: key.key_id}
        return cls(log=log, count=count, head_sha256=head_sha256, key_id=key.key_id, mac=key.mac(canonical_json(body)))

    def verifies(self, key: SigningKey) -> bool:
        return key.verify(canonical_json(self.body()), self.mac)


def write_durable(path: Path, content: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` atomically and durably: temp file + fsync + rename + fsync of the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def home_id(paths: PlatformPaths) -> str:
    return hashlib.sha256(str(paths.home.resolve()).encode()).hexdigest()[:HOME_ID_CHARS]


def default_checkpoint_dir(paths: PlatformPaths | None = None) -> Path:
    paths = paths or PlatformPaths.from_env()
    chosen = os.environ.get(CHECKPOINT_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser().resolve()
    return key_file_path().parent / CHECKPOINTS_DIRNAME / home_id(paths)


def _parse(data: bytes, source: object) -> Checkpoint:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {source} is not JSON ({exc}): edited or damaged") from exc
    types = {LOG: str, COUNT: int, HEAD: str, KEY_ID: str, MAC: str}
    if (not isinstance(document, dict) or set(document) != set(CHECKPOINT_FIELDS)
            or any(not isinstance(document[k], t) or isinstance(document[k], bool) for k, t in types.items())):
        raise CheckpointError(f"checkpoint {source} is malformed: expected exactly the fields "
                              f"{list(CHECKPOINT_FIELDS)} with {COUNT} an integer: edited or damaged")
    return Checkpoint(**document)


def parse_checkpoint(data: bytes, source: object, key: SigningKey, name: str) -> Checkpoint:
    """The checkpoint of log `name` stored as `data` (read from `source`, named in errors), after checking
    its fields, key id, MAC and log name."""
    checkpoint = _parse(data, source)
    if checkpoint.key_id != key.key_id:
        raise KeyMismatchError(
            f"checkpoint {source} was signed with key {checkpoint.key_id}, but the configured key "
            f"({key.source}) is {key.key_id}: the key was rotated or the wrong key is configured "
            f"(or the checkpoint was edited). Configure the key that signed this log")
    if not checkpoint.verifies(key):
        raise CheckpointError(f"checkpoint {source}: MAC does not verify with key {key.key_id}: "
                              f"the checkpoint was edited or forged")
    if checkpoint.log != name:
        raise CheckpointError(f"checkpoint {source} belongs to log {checkpoint.log!r}, not {name!r}: "
                              f"copied from another log")
    return checkpoint


class CheckpointStore:
    """Signed checkpoints of the logs of one platform home, one file per log name."""

    def __init__(self, key: SigningKey, directory: Path | None = None, paths: PlatformPaths | None = None):
        paths = paths or PlatformPaths.from_env()
        chosen = Path(directory).expanduser().resolve() if directory is not None else default_checkpoint_dir(paths)
        if is_inside(chosen, paths.home):
            raise CheckpointError(
                f"checkpoint directory {chosen} is inside the platform home {paths.home}: an attacker who can "
                f"write the home could roll a log and its checkpoint back together. Point {CHECKPOINT_DIR_ENV} "
                f"(or the key file location) outside the home")
        self.directory = chosen
        self.key = key

    def path(self, name: str) -> Path:
        return self.directory / (urllib.parse.quote(name, safe="") + CHECKPOINT_SUFFIX)

    def read(self, name: str) -> Checkpoint | None:
        """The checkpoint of log `name` after checking its key id, MAC and log name; None if there is none."""
        path = self.path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return parse_checkpoint(data, path, self.key, name)

    def write(self, name: str, count: int, head_sha256: str) -> Checkpoint:
        checkpoint = Checkpoint.signed(name, count, head_sha256, self.key)
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, mode=DIR_MODE, exist_ok=True)
        write_durable(self.path(name), checkpoint.to_json())
        return checkpoint


def verify_tail(tail: Sequence[Mapping[str, Any]], total: int, checkpoint: Checkpoint | None,
                key: SigningKey, *, name: str) -> None:
    """Check a log of `total` entries against its checkpoint, given only `tail`: the log's entries from
    seq `checkpoint.count` (or from seq 1 when the checkpoint's count is 0) to the end.

    Raises `CheckpointError`: entries but no checkpoint, a checkpoint but fewer entries than it
    counts (truncated, emptied, deleted), a different entry at the checkpointed position (rewritten),
    or a `ChainError` for entries beyond the checkpoint that do not chain or are not signed.
    """
    if checkpoint is None:
        if total:
            raise CheckpointError(
                f"{name}: log has {total} entries but no checkpoint: the checkpoint was deleted, the platform "
                f"home moved (set {CHECKPOINT_DIR_ENV} to the old checkpoint directory), or the log was written "
                f"without one. If the entries are trusted, re-anchor the log", position=1)
        return
    if total < checkpoint.count:
        raise CheckpointError(f"{name}: truncated: checkpoint says {checkpoint.count} entries, log has {total}",
                              position=total + 1)
    if checkpoint.count == 0:
        verify_entries(tail, key, name=name)
        return
    anchor = tail[0] if tail else None
    if anchor is None or anchor.get(SEQ) != checkpoint.count or anchor.get(SHA) != checkpoint.head_sha256:
        raise CheckpointError(f"{name}: entry {checkpoint.count} is not the checkpointed head "
                              f"{checkpoint.head_sha256[:16]}...: the log was rewritten or replaced",
                              position=checkpoint.count)
    check_entry(anchor, key, position=checkpoint.count, expected_seq=checkpoint.count,
                prev_sha256=str(anchor.get(PREV)), name=name)
    verify_entries(tail[1:], key, name=name, after=anchor)


def verify_against(entries: Sequence[Mapping[str, Any]], checkpoint: Checkpoint | None, key: SigningKey, *,
                   name: str) -> None:
    """Check a whole log (entries from seq 1) against its checkpoint; see `verify_tail`."""
    start = max(checkpoint.count - 1, 0) if checkpoint else 0
    verify_tail(entries[start:], len(entries), checkpoint, key, name=name)
