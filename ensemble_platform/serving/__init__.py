"""Serving: the one MLflow pyfunc, the parity set, the hash-verified serving bundle and the decider (degraded modes)."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "bundle",
    "decider",
    "parity",
    "pyfunc",
    "signature",
]
