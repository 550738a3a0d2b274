"""Bearer tokens with scopes. The token file (under the platform home) stores only each token's SHA-256,
name, scopes and creation time; the plaintext is returned once by `create_token` and never stored.

The file carries an HMAC-SHA256 under the platform's signing key (kept outside the home), checked at
every read: anyone who can write under the home could otherwise add a hash of their own with every
scope. A file that does not verify is refused (no token works) until an operator checks it and signs
it as it is (`tokens sign`) or deletes it and creates the tokens again.

A presented token is hashed and compared with every stored hash by `hmac.compare_digest` (no early exit,
constant time per comparison). The file is re-read when it changes, so tokens created by the CLI work in
a running server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ensemble_platform.errors import PlatformError
from ensemble_platform.integrity.chain import canonical_json
from ensemble_platform.integrity.checkpoint import CheckpointStore
from ensemble_platform.integrity.documents import sign_document, verify_document
from ensemble_platform.integrity.keys import SigningKey, load_signing_key
from ensemble_platform.settings import PlatformPaths

SCOPES = ("decide", "read", "review")
TOKEN_PREFIX = "ept_"
TOKENS_FILE = "tokens.json"
FILE_MODE = 0o600
MAC_FIELD = "mac"
TOKENS_CHECKPOINT = "service-tokens"
_PURPOSE = b"ensemble_platform.tokens.v1"


class TokenError(PlatformError):
    """A token cannot be created (unknown scope, duplicate name) or the token file is unreadable."""


@dataclass(frozen=True)
class TokenInfo:
    name: str
    sha256: str
    scopes: tuple[str, ...]
    created_at: str


def tokens_path(paths: PlatformPaths) -> Path:
    return paths.home / "service" / TOKENS_FILE


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """`checkpoints` (outside the home) hold the digest of the token list last written: a signed token file
    put back after tokens were removed (the only revocation is removing them) would bring a leaked token
    back; it is refused as an older file."""

    def __init__(self, path: Path, key: SigningKey, checkpoints: CheckpointStore | None = None):
        self.path = Path(path)
        self.key = key
        self.checkpoints = checkpoints
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tokens: list[TokenInfo] = []

    @classmethod
    def for_home(cls, paths: PlatformPaths) -> TokenStore:
        key = load_signing_key(paths)
        return cls(tokens_path(paths), key, CheckpointStore(key, paths=paths))

    def tokens(self) -> list[TokenInfo]:
        with self._lock:
            self._reload()
            return list(self._tokens)

    def create_token(self, name: str, scopes: Iterable[str]) -> str:
        """A new token named `name` with `scopes`; returns the plaintext (shown once, never stored)."""
        chosen = tuple(sorted(set(scopes)))
        unknown = sorted(set(chosen) - set(SCOPES))
        if unknown or not chosen:
            raise TokenError(f"scopes must be a non-empty subset of {list(SCOPES)}, got {list(chosen)}")
        if not name.strip():
            raise TokenError("a token needs a name")
        plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._reload()
            if any(t.name == name for t in self._tokens):
                raise TokenError(f"a token named {name!r} already exists in {self.path}")
            info = TokenInfo(name, token_sha256(plaintext), chosen, datetime.now(UTC).isoformat())
            self._write([*self._tokens, info])
            self._reload()
        return plaintext

    def authenticate(self, token: str | None) -> TokenInfo | None:
        """The token's record if `token` matches a stored hash, else None (every hash is compared)."""
        if not token:
            return None
        presented = token_sha256(token)
        found: TokenInfo | None = None
        for info in self.tokens():
            if hmac.compare_digest(presented, info.sha256):
                found = info
        return found

    def sign_as_is(self) -> list[TokenInfo]:
        """Operator action: sign the file as it stands (after checking its tokens by hand), e.g. one
        written before token files were signed. Returns its tokens."""
        with self._lock:
            tokens = self._parse(self._read_document())
            self._write(tokens)
            self._stamp = None
            self._reload()
            return list(self._tokens)

    # -- file --------------------------------------------------------------------------------------

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._tokens = None, []
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._tokens = []  # nothing is trusted until the file verifies
        self._stamp = None
        document = self._read_document()
        tokens = self._parse(document)
        if not verify_document(self.key, _PURPOSE, document["tokens"], document.get(MAC_FIELD)):
            raise TokenError(f"token file {self.path} is not signed with the platform's signing key (key "
                             f"{self.key.key_id}): it was edited, written with another key, or written before token "
                             "files were signed. No token is accepted until it is resolved: check its tokens and run "
                             "`ensemble-platform tokens sign`, or delete it and create the tokens again")
        if self.checkpoints is not None:
            last = self.checkpoints.read(TOKENS_CHECKPOINT)
            if last is None or last.head_sha256 != self._digest(document["tokens"]):
                raise TokenError(f"token file {self.path} is not the one last written (its checkpoint in "
                                 f"{self.checkpoints.directory} names another): an older file put back, or one "
                                 "written before token files were checkpointed. No token is accepted until it is "
                                 "resolved: check its tokens and run `ensemble-platform tokens sign`")
        self._tokens, self._stamp = tokens, stamp

    def _read_document(self) -> dict:
        try:
            document = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise TokenError(f"token file {self.path} is unreadable ({exc})") from exc
        if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
            raise TokenError(f"token file {self.path}: expected an object with a 'tokens' list")
        return document

    def _parse(self, document: dict) -> list[TokenInfo]:
        try:
            return [TokenInfo(str(t["name"]), str(t["sha256"]), tuple(map(str, t["scopes"])), str(t["created_at"]))
                    for t in document["tokens"]]
        except (KeyError, TypeError) as exc:
            raise TokenError(f"token file {self.path}: a token lacks name, sha256, scopes or created_at ({exc})") from exc

    @staticmethod
    def _digest(tokens: object) -> str:
        return hashlib.sha256(canonical_json(tokens)).hexdigest()

    def _write(self, tokens: list[TokenInfo]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        listed = [{"name": t.name, "sha256": t.sha256, "scopes": list(t.scopes), "created_at": t.created_at}
                  for t in tokens]
        document = {"tokens": listed, MAC_FIELD: sign_document(self.key, _PURPOSE, listed)}
        if self.checkpoints is not None:  # first: a crash in between leaves a file refused, never an old one trusted
            self.checkpoints.write(TOKENS_CHECKPOINT, len(listed), self._digest(listed))
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
