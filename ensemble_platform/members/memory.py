"""Will a training run fit in memory? A simple model, checked before any member is trained.

Peak resident memory of a run grows with the training rows in two regimes (per 14 features; a
wider table costs proportionally more per row):

    peak_mb(rows) = BASE_MB + rows * BYTES_PER_ROW_UNBOUNDED / 2**20                 rows <= SCALE_ROWS
                  = peak_mb(SCALE_ROWS) + (rows - SCALE_ROWS) * BYTES_PER_ROW_BOUNDED / 2**20   above

Up to SCALE_ROWS the forests grow full depth (their nodes grow with the rows, ~11 KB per row for
the two forests) and k-NN keeps every row: BASE_MB and BYTES_PER_ROW_UNBOUNDED are fitted on the
whole graph's peak RSS measured by `bench/bench_scale.py` (3,340 training rows: 669 MB; 7,500:
868 MB; see bench/README.md, "Scale"). Above it the members are bounded (`members.scale`: forest
samples capped at the threshold's 50,000 rows, k-NN's reference growing with the square root of
the rows: 193,649 rows of 40 float64 columns, ~60 MB, at 750k), so what still grows is the table
and its encoded copies:
BYTES_PER_ROW_BOUNDED is that estimate (pandas table ~0.4 KB, the members' encoded float64 copies
~2.5 KB, fold copies ~0.4 KB, rounded up), not yet checked by a run above SCALE_ROWS.
"""

from __future__ import annotations

from pathlib import Path

from ensemble_platform.members.scale import SCALE_ROWS

BASE_MB = 620.0
BYTES_PER_ROW_UNBOUNDED = 30_000.0
BYTES_PER_ROW_BOUNDED = 4_000.0
REFERENCE_FEATURES = 14
# Refuse when the estimate exceeds this share of the memory available when the run starts.
MAX_SHARE_OF_AVAILABLE = 0.9


def estimated_peak_mb(training_rows: int, n_features: int = REFERENCE_FEATURES) -> float:
    width = max(n_features, 1) / REFERENCE_FEATURES
    unbounded = min(training_rows, SCALE_ROWS) * BYTES_PER_ROW_UNBOUNDED
    bounded = max(training_rows - SCALE_ROWS, 0) * BYTES_PER_ROW_BOUNDED
    return BASE_MB + (unbounded + bounded) * width / 2**20


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
            f"{estimate / 1024:.1f} GB at its peak (members.memory: {BASE_MB:.0f} MB + {BYTES_PER_ROW_UNBOUNDED:,.0f} "
            f"bytes per row up to {SCALE_ROWS:,} rows, {BYTES_PER_ROW_BOUNDED:,.0f} above, per {REFERENCE_FEATURES} "
            f"features), more than {MAX_SHARE_OF_AVAILABLE:.0%} of the "
            f"{available / 1024:.1f} GB available; free memory or train on a sample")
