"""Will a training run fit in memory? A simple model, checked before any member is trained.

Peak resident memory of the largest stage (a member's fit: the training table, its encoded copy
and the member's fitted structures; fitted models are no longer held by asset values, issue 18)
grows about linearly with the training rows:

    peak_mb(rows) = BASE_MB + rows * BYTES_PER_TRAINING_ROW / 2**20

BASE_MB is the process with its imports (Dagster, MLflow, scikit-learn, XGBoost) on a tiny table;
BYTES_PER_TRAINING_ROW was fitted on `bench/bench_scale.py` peaks (see bench/README.md, "Scale"):
for the 14-feature synthetic table. Wider tables cost more per row: the estimate scales with the
feature count relative to REFERENCE_FEATURES.
"""

from __future__ import annotations

from pathlib import Path

BASE_MB = 650.0
BYTES_PER_TRAINING_ROW = 6_000.0
REFERENCE_FEATURES = 14
# Refuse when the estimate exceeds this share of the memory available when the run starts.
MAX_SHARE_OF_AVAILABLE = 0.9


def estimated_peak_mb(training_rows: int, n_features: int = REFERENCE_FEATURES) -> float:
    width = max(n_features, 1) / REFERENCE_FEATURES
    return BASE_MB + training_rows * BYTES_PER_TRAINING_ROW * width / 2**20


def available_mb(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """MemAvailable (MB), or None where /proc/meminfo is not there (then nothing is refused)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_problem(dataset: str, training_rows: int, n_features: int, available: float | None) -> str | None:
    """Why a run on this many rows should not start (None when it fits or nothing is known)."""
    estimate = estimated_peak_mb(training_rows, n_features)
    if available is None or estimate <= MAX_SHARE_OF_AVAILABLE * available:
        return None
    return (f"training {dataset} on {training_rows:,} rows x {n_features} features needs an estimated "
            f"{estimate / 1024:.1f} GB at its peak ({BASE_MB:.0f} MB + {BYTES_PER_TRAINING_ROW:,.0f} bytes per row "
            f"per {REFERENCE_FEATURES} features, members.memory), more than {MAX_SHARE_OF_AVAILABLE:.0%} of the "
            f"{available / 1024:.1f} GB available; free memory or train on a sample")
