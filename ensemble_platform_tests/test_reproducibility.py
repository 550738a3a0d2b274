"""Versions must not depend on the machine's thread settings or CPU: the same out-of-fold evidence fitted
under OMP_NUM_THREADS=1 and =2 gives the same combiner bytes (and so the same config hash)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ensemble_platform import blas_kernel

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


MEMBER_SCRIPT = """
import hashlib, sys, numpy as np, pandas as pd
from ensemble_platform.data.spec import DatasetSpec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.members.training import fit_member
rng = np.random.default_rng(0)
n = 10_000  # the shape of bench/bench_scale.py's table at 10k rows, where the bits differed
numeric = rng.normal(size=(n, 10))
table = pd.DataFrame({f"num_{j}": numeric[:, j].round(4) for j in range(10)})
for j, k in enumerate((3, 5, 8, 12)):
    table[f"cat_{j}"] = np.array([f"c{j}_{v}" for v in range(k)])[rng.integers(0, k, n)]
table.loc[rng.random(n) < 0.02, "num_6"] = np.nan
score = numeric[:, 0] - 0.7 * numeric[:, 1] + 0.5 * numeric[:, 2] * numeric[:, 3] + rng.logistic(scale=0.8, size=n)
table["target"] = np.where(score > 0.6, "bad", "good")
spec = DatasetSpec(name="threads", source="inline.csv", target="target", positive_label="bad")
fit = fit_member(sys.argv[1], split_dataset(table, spec), seed=0)
print(hashlib.sha256(fit.oof_proba.tobytes() + fit.holdout_proba.tobytes()).hexdigest())
"""


def _member_digest(member: str, threads: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return subprocess.run([sys.executable, "-c", MEMBER_SCRIPT, member], env=env, capture_output=True, text=True,
                          check=True, timeout=300).stdout.strip()


def test_member_predictions_do_not_depend_on_the_thread_count():
    # With OpenBLAS's two threads the logistic-regression member's fit gave other bits than with
    # one on 7,500 rows (and took 10x longer): member fits run with one BLAS thread.
    assert _member_digest("logistic_regression", "1") == _member_digest("logistic_regression", "2")


KNN_SCRIPT = """
import hashlib
from ensemble_platform.data.loading import load_dataset
from ensemble_platform.data.spec import load_spec
from ensemble_platform.data.splitting import split_dataset
from ensemble_platform.members.training import fit_member
spec = load_spec(None)  # the default data: integer-valued columns, so exact distance ties
fit = fit_member("k_nearest_neighbours", split_dataset(load_dataset(spec), spec), seed=0)
print(hashlib.sha256(fit.oof_proba.tobytes() + fit.holdout_proba.tobytes()).hexdigest())
"""


def test_k_nearest_neighbours_does_not_depend_on_the_openmp_thread_count():
    # scikit-learn's neighbour search splits its work by the OpenMP thread count and settles exact distance
    # ties at the k-th neighbour accordingly: 8 threads gave other probabilities than 1 or 2 on the default
    # data, and with them another version (found by review). k-NN predicts with KNN_OPENMP_THREADS always.
    def digest(threads: str) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        return subprocess.run([sys.executable, "-c", KNN_SCRIPT], env=env, capture_output=True, text=True,
                              check=True, timeout=300).stdout.strip()

    assert digest("1") == digest("8")


# Versions must not depend on the CPU either: OpenBLAS picks its kernels by the CPU it finds, and the
# AVX-512 kernels of a recent Xeon gave the logistic-regression member other bits than the AVX2
# kernels of an EPYC (the default demo's config hash differed). The package pins one kernel.
_SKYLAKEX_FLAGS = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}


def _member_digest_under(coretype: str, numpy_first: bool) -> str:
    # numpy_first: numpy (and so OpenBLAS) loads before the package can pin the kernel, as on a machine
    # without the pin; the control that shows the kernel changes these bits at all.
    script = ("import numpy\n" if numpy_first else "import ensemble_platform\n") + MEMBER_SCRIPT
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script, "logistic_regression"], env=env, capture_output=True,
                          text=True, check=True, timeout=300).stdout.strip()


@pytest.mark.skipif(not _SKYLAKEX_FLAGS <= blas_kernel.cpu_flags() or not blas_kernel.cpu_runs_pinned_kernel(),
                    reason="needs an x86-64 CPU that runs both the AVX2 and the AVX-512 OpenBLAS kernels")
def test_member_predictions_do_not_depend_on_the_cpu_kernel():
    pinned = _member_digest_under("Haswell", numpy_first=True)
    # The environment asks for the AVX-512 kernels (what OpenBLAS picks by itself on such a CPU).
    assert _member_digest_under("SkylakeX", numpy_first=False) == pinned
    assert _member_digest_under("SkylakeX", numpy_first=True) != pinned, "control: the kernel no longer matters here"


def test_the_package_pins_the_kernel_before_numpy_loads():
    script = "import ensemble_platform, numpy, scipy.linalg\nfrom ensemble_platform import blas_kernel\nprint(blas_kernel.kernels())"
    env = dict(os.environ)
    if blas_kernel.cpu_runs_pinned_kernel():
        env["OPENBLAS_CORETYPE"] = "Prescott"  # an inherited setting (SSE3 kernels) is overridden
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                         timeout=120).stdout.strip()
    if blas_kernel.cpu_runs_pinned_kernel():
        assert out == blas_kernel.PINNED_CORETYPE
    else:
        assert blas_kernel.PINNED_CORETYPE not in out.split(",")


def test_native_leaves_openblas_its_own_choice():
    script = "import os, ensemble_platform\nprint(os.environ.get('OPENBLAS_CORETYPE', 'unset'))"
    env = {k: v for k, v in os.environ.items() if k != blas_kernel.CORETYPE_ENV}
    pinned = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    native = subprocess.run([sys.executable, "-c", script], env=env | {blas_kernel.SETTING_ENV: "native"},
                            capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert native == "unset"
    assert pinned == (blas_kernel.PINNED_CORETYPE if blas_kernel.cpu_runs_pinned_kernel() else "unset")


@pytest.mark.skipif(not blas_kernel.cpu_runs_pinned_kernel(), reason="no pin on this CPU")
def test_an_unpinned_fit_is_flagged():
    script = ("import {first}\nimport ensemble_platform, numpy, scipy.linalg\nfrom ensemble_platform import blas_kernel\n"
              "print(blas_kernel.unpinned_warning())")
    env = {**os.environ, "OPENBLAS_CORETYPE": "Prescott"}  # what OpenBLAS runs when the pin comes too late

    def warning(first: str) -> str:
        return subprocess.run([sys.executable, "-c", script.format(first=first)], env=env, capture_output=True,
                              text=True, check=True, timeout=120).stdout.strip()

    assert warning("os") == "None"
    late = warning("numpy")
    # (threadpoolctl names the SSE3 kernel's architecture "Katmai")
    assert f"kernel, not {blas_kernel.PINNED_CORETYPE} (numpy was imported before ensemble_platform)" in late


def test_the_pin_needs_avx2_and_fma(tmp_path, monkeypatch):
    monkeypatch.setattr(blas_kernel.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx fma\n")
    assert not blas_kernel.cpu_runs_pinned_kernel(str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n")
    assert blas_kernel.cpu_runs_pinned_kernel(str(cpuinfo))
    assert not blas_kernel.cpu_runs_pinned_kernel(str(tmp_path / "missing"))
    monkeypatch.setattr(blas_kernel.platform, "machine", lambda: "aarch64")
    assert not blas_kernel.cpu_runs_pinned_kernel(str(cpuinfo))
