"""Bearer tokens with scopes. The token file (under the platform home) stores only each token's SHA-256,
name, scopes and creation time; the plaintext is returned once by `create_token` and never stored.

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
from ensemble_platform.settings import PlatformPaths

SCOPES = ("decide", "read", "review")
TOKEN_PREFIX = "ept_"
TOKENS_FILE = "tokens.json"
FILE_MODE = 0o600


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
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tokens: list[TokenInfo] = []

    @classmethod
    def for_home(cls, paths: PlatformPaths) -> TokenStore:
        return cls(tokens_path(paths))

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
        try:
            document = json.loads(self.path.read_text())
            self._tokens = [TokenInfo(t["name"], t["sha256"], tuple(t["scopes"]), t["created_at"])
                            for t in document["tokens"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"token file {self.path} is unreadable ({exc})") from exc
        self._stamp = stamp

    def _write(self, tokens: list[TokenInfo]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"tokens": [{"name": t.name, "sha256": t.sha256, "scopes": list(t.scopes),
                                "created_at": t.created_at} for t in tokens]}
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
