"""Dagster orchestration: thin assets, checks and jobs that wire the domain core together."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "jobs",
    "lifecycle",
    "release",
    "resources",
    "retraining",
    "runner",
    "schedules",
    "sensors",
    "assets",
]
