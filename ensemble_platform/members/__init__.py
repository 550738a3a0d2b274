"""Member model catalogue, fitting and out-of-fold prediction."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "adoption",
    "catalogue",
    "training",
]
