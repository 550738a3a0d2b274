"""Keeping ensembles honest after day one: what sensors and schedules decide (no Dagster here)."""
