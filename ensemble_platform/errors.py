"""Errors users see. Each names the file, field or column at fault and what was expected."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line (pydantic's run to dozens), or its type's name when it has no text."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class PlatformError(Exception):
    """Base class for errors the platform raises on purpose (as opposed to bugs)."""


class DatasetSpecError(PlatformError):
    """The dataset spec YAML is missing, malformed or inconsistent with its data."""


class DataError(PlatformError):
    """The data itself cannot be used (empty, one-class target, unparseable values, ...)."""


class LineageError(PlatformError):
    """Artefacts that must come from the same data/split/folds do not."""
