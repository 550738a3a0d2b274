"""Errors of the integrity package. Each names the log, file or position at fault and what was expected."""

from __future__ import annotations

from ensemble_platform.errors import PlatformError


class IntegrityError(PlatformError):
    """Base class: a keyed log, its checkpoint or its signing key cannot be trusted or used."""


class SigningKeyError(IntegrityError):
    """The signing key is missing, malformed, or stored where an attacker could read or replace it."""


class KeyMismatchError(IntegrityError):
    """The checkpoint was signed with a different key than the one configured (rotated or wrong key)."""


class ChainError(IntegrityError):
    """An entry of a hash chain does not verify. `position` is 1-based (the line number of a JSON Lines
    log, the expected `seq` of a store row)."""

    def __init__(self, position: int, reason: str, *, name: str = "", detail: str = ""):
        self.position = position
        self.reason = reason
        self.name = name
        self.detail = detail
        where = f"{name}: entry {position}" if name else f"entry {position}"
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))


class CheckpointError(IntegrityError):
    """A log does not match its signed checkpoint (truncated, rolled back, deleted, checkpoint missing or
    edited), or the checkpoint location is unsafe. `position` is the 1-based entry at fault, if one is."""

    def __init__(self, message: str, *, position: int | None = None):
        self.position = position
        super().__init__(message)


class LogIntegrityError(IntegrityError):
    """A JSON Lines log that does not verify; names the file, the line and the reason."""

    def __init__(self, path: object, line: int | None, reason: str):
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path} line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")


class StoreClosedError(IntegrityError):
    """The store or group-commit writer was closed; nothing more can be appended."""
