"""Plain measures on arrays: metrics, calibration measures, agreement, fairness, drift and performance."""

# The package's public modules (import them by name; nothing is re-exported here).
__all__ = [
    "agreement",
    "agreement_report",
    "batch_performance",
    "calibration",
    "drift",
    "fairness",
    "metrics",
]
