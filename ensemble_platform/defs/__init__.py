"""Dagster orchestration: thin assets, checks and jobs that wire the domain core together."""
