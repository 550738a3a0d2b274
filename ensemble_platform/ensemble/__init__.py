"""Combination strategies, out-of-fold selection, fitted calibrators, config + semver, build, the runtime and holdout validation."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "build",
    "calibrators",
    "config",
    "predictions",
    "runtime",
    "selection",
    "strategies",
    "validation",
]
