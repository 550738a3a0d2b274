"""The signing key of keyed logs: an HMAC-SHA256 secret kept OUTSIDE the platform home.

Protects against: anyone who can write files under the platform home (`ENSEMBLE_PLATFORM_HOME`)
but cannot read the key. Without the key they cannot produce a valid MAC, so a forged entry or
checkpoint is detected. A key file inside the platform home is refused, because an attacker there
could read it (and forge) or replace it.

Does not protect against: a person or process holding the key (it can rewrite any log and re-sign
it), nor against someone who can change the installed code.

Resolution order:
  1. env `ENSEMBLE_PLATFORM_SIGNING_KEY`: the key as hex (deployments, Kubernetes secrets);
  2. env `ENSEMBLE_PLATFORM_KEY_FILE`: a file holding the key as hex;
  3. `${XDG_CONFIG_HOME:-~/.config}/ensemble_platform/signing.key`.
A missing key file is created on first use (32 random bytes as hex, mode 0600, directory 0700),
atomically: processes racing to create it all end up with the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path

from ensemble_platform.integrity.errors import SigningKeyError
from ensemble_platform.settings import PlatformPaths

KEY_ENV = "ENSEMBLE_PLATFORM_SIGNING_KEY"
KEY_FILE_ENV = "ENSEMBLE_PLATFORM_KEY_FILE"
XDG_CONFIG_ENV = "XDG_CONFIG_HOME"
CONFIG_DIRNAME = "ensemble_platform"
KEY_FILENAME = "signing.key"
KEY_BYTES = 32
MIN_KEY_BYTES = 32
KEY_ID_CHARS = 16
FILE_MODE = 0o600
DIR_MODE = 0o700


@dataclass(frozen=True)
class SigningKey:
    """An HMAC-SHA256 key. `source` says where it came from (a path or the env variable's name)."""

    secret: bytes = field(repr=False)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise SigningKeyError(f"signing key from {self.source} has {len(self.secret)} bytes; "
                                  f"at least {MIN_KEY_BYTES} are required")

    @property
    def key_id(self) -> str:
        """First 16 hex chars of SHA-256 of the key: names the key in checkpoints without revealing it."""
        return hashlib.sha256(self.secret).hexdigest()[:KEY_ID_CHARS]

    def mac(self, data: bytes) -> str:
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()

    def verify(self, data: bytes, mac: object) -> bool:
        # compare_digest raises TypeError on non-ASCII text: a tag typed with one is simply wrong.
        return isinstance(mac, str) and mac.isascii() and hmac.compare_digest(self.mac(data), mac)

    @classmethod
    def generate(cls, source: str = "<generated>") -> SigningKey:
        return cls(secrets.token_bytes(KEY_BYTES), source)


def default_key_file() -> Path:
    config = os.environ.get(XDG_CONFIG_ENV) or str(Path("~/.config").expanduser())
    return Path(config).expanduser() / CONFIG_DIRNAME / KEY_FILENAME


def key_file_path() -> Path:
    """The key file in use (env `ENSEMBLE_PLATFORM_KEY_FILE` or the default), resolved to an absolute path."""
    chosen = os.environ.get(KEY_FILE_ENV)
    return (Path(chosen).expanduser() if chosen else default_key_file()).resolve()


def is_inside(path: Path, directory: Path) -> bool:
    """Whether `path` is `directory` or below it, after resolving symlinks of both."""
    return path.resolve().is_relative_to(directory.resolve())


def _parse_hex(text: str, source: str, remedy: str) -> bytes:
    cleaned = text.strip()
    if not cleaned or len(cleaned) % 2 or any(ch not in string.hexdigits for ch in cleaned):
        raise SigningKeyError(f"signing key in {source} is malformed: expected {2 * KEY_BYTES} hex characters, "
                              f"found {len(cleaned)} characters that are not all hex; {remedy}")
    secret = bytes.fromhex(cleaned)
    if len(secret) < MIN_KEY_BYTES:
        raise SigningKeyError(f"signing key in {source} is malformed: {len(secret)} bytes, at least "
                              f"{MIN_KEY_BYTES} required; {remedy}")
    return secret


def _refuse_inside_home(path: Path, paths: PlatformPaths) -> None:
    if is_inside(path, paths.home):
        raise SigningKeyError(
            f"signing key file {path} is inside the platform home {paths.home}: anyone who can write the home "
            f"could read or replace it. Move it outside the home and point {KEY_FILE_ENV} at it "
            f"(or unset {KEY_FILE_ENV} to use {default_key_file()})")


def _create_key_file(path: Path) -> None:
    """Write a new key to `path` unless one appears first: link(2) of a complete temp file never
    overwrites, so racing creators all keep the first key."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=DIR_MODE, exist_ok=True)
        os.chmod(path.parent, DIR_MODE)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race: its key is the key
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_signing_key(paths: PlatformPaths | None = None, *, create: bool = True) -> SigningKey:
    """The configured signing key (see the module docstring), creating the key file on first use.

    Raises `SigningKeyError` for a malformed key, a key file inside the platform home, or (with
    `create=False`) a missing key file.
    """
    paths = paths or PlatformPaths.from_env()
    from_env = os.environ.get(KEY_ENV)
    if from_env is not None:
        return SigningKey(_parse_hex(from_env, f"env {KEY_ENV}", f"set {KEY_ENV} to {2 * KEY_BYTES} hex characters "
                                                                   "(e.g. `openssl rand -hex 32`)"), f"env {KEY_ENV}")
    path = key_file_path()
    _refuse_inside_home(path, paths)
    if not path.exists():
        if not create:
            raise SigningKeyError(f"signing key file {path} does not exist; restore it from backup "
                                  f"or set {KEY_ENV} / {KEY_FILE_ENV}")
        _create_key_file(path)
    remedy = ("restore the key file from backup; if the key is lost, move the file away to generate a new key "
              "(logs signed with the old key will then be reported as signed with another key)")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyError(f"signing key file {path} cannot be read ({exc}); {remedy}") from exc
    return SigningKey(_parse_hex(text, str(path), remedy), str(path))
