"""Keeping ensembles honest after day one: what sensors and schedules decide (no Dagster here)."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "member_watch",
]
