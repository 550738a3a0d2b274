"""Versions must not depend on the machine's thread settings: the same out-of-fold evidence fitted
under OMP_NUM_THREADS=1 and =2 gives the same combiner bytes (and so the same config hash)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import hashlib, numpy as np, cloudpickle
from ensemble_platform.ensemble.selection import select_strategy
from ensemble_platform.ensemble.strategies import SoftAverage, WeightedAverage, GreedySelection, Stacking
rng = np.random.default_rng(0)
n = 4000
y = rng.integers(0, 2, n)
P = np.clip(np.column_stack([0.5 + (y - 0.5) * rng.uniform(0.05, 0.6, n) + rng.normal(0, 0.2, n)
                             for _ in range(6)]), 0.01, 0.99)
folds = np.arange(n) % 5
strategies = {"soft_average": SoftAverage(), "weighted_average": WeightedAverage(),
              "greedy_selection": GreedySelection(), "stacking": Stacking()}
result = select_strategy(strategies, P, y, folds)
print(hashlib.sha256(b"".join(cloudpickle.dumps(e.combiner) for e in result.candidates.values())).hexdigest())
"""


def _digest(threads: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          check=True, timeout=300).stdout.strip()


def test_fitted_combiners_do_not_depend_on_the_thread_count():
    assert _digest("1") == _digest("2")
