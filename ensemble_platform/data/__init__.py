"""Dataset specs, loading, schema inference, validation and splitting."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "batches",
    "catalog",
    "loading",
    "reference",
    "schema",
    "spec",
    "splitting",
    "validation",
]
