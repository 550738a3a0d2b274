"""Metrics, calibration, fairness and drift measures (plain functions on arrays)."""
