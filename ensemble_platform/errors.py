"""Errors users see. Each names the file, field or column at fault and what was expected."""


class PlatformError(Exception):
    """Base class for errors the platform raises on purpose (as opposed to bugs)."""


class DatasetSpecError(PlatformError):
    """The dataset spec YAML is missing, malformed or inconsistent with its data."""


class DataError(PlatformError):
    """The data itself cannot be used (empty, one-class target, unparseable values, ...)."""


class LineageError(PlatformError):
    """Artefacts that must come from the same data/split/folds do not."""
