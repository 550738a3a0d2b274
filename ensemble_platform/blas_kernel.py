"""One OpenBLAS kernel on every x86-64 machine, so a version's bits do not depend on the CPU.

OpenBLAS picks its kernels by the CPU it finds (`DYNAMIC_ARCH`): AVX2 "Haswell" kernels on an AMD
EPYC, AVX-512 "SkylakeX" kernels on a recent Xeon. The two sum in different orders, so the
logistic-regression member fitted on the same rows differs in the last bits, and with it every
version and hash downstream: the default demo gave config 5f1244953a66 on an EPYC and 1ddfef831e76
on a Xeon (2026-12-04), and 5f1244953a66 on the Xeon with `OPENBLAS_CORETYPE=Haswell`.

OpenBLAS reads `OPENBLAS_CORETYPE` once, when the library loads (numpy's or scipy's first import), so
the package sets it on import, before anything of ours imports numpy, and children inherit it
(Dagster run workers, the decision service's workers). It overrides an inherited value: a value set
in the environment is exactly what would make two machines disagree. The pin applies only where the
CPU runs the kernel (x86-64 with AVX2 and FMA, every x86 server CPU since 2013); elsewhere, or if
numpy was imported before this package, OpenBLAS keeps its own choice and `kernels()` says which
(recorded on every member's MLflow run). `ENSEMBLE_PLATFORM_BLAS_KERNEL=native` leaves OpenBLAS its own
choice (say, to try the CPU's faster kernels): versions may then differ between machines, and the tag
says on which kernel each member was fitted.

Haswell's AVX2 kernels rather than a newer set: the newest set any machine we run on has in common,
and the one the published figures (bench/README.md) were produced with. The price on an AVX-512 Xeon,
measured at 200k rows: the bounded k-NN's holdout prediction (distance products) 9.3 s instead of
8.8 s (+5%); the logistic regression's fit 1.38 s either way."""

from __future__ import annotations

import os
import platform
import sys

CORETYPE_ENV = "OPENBLAS_CORETYPE"
SETTING_ENV = "ENSEMBLE_PLATFORM_BLAS_KERNEL"  # "native": no pin
PINNED_CORETYPE = "Haswell"
_REQUIRED_CPU_FLAGS = frozenset({"avx2", "fma"})
_CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str = _CPUINFO) -> frozenset[str]:
    """The instruction-set flags the (first) CPU reports on Linux; empty where there is no cpuinfo."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_runs_pinned_kernel(cpuinfo: str = _CPUINFO) -> bool:
    """True on x86-64 Linux where the CPU reports AVX2 and FMA (what the Haswell kernels execute)."""
    return platform.machine().lower() in ("x86_64", "amd64") and _REQUIRED_CPU_FLAGS <= cpu_flags(cpuinfo)


def _native() -> bool:
    return os.environ.get(SETTING_ENV, "").strip().lower() == "native"


def pin_kernel() -> bool:
    """Set `OPENBLAS_CORETYPE` for this process and its children; False where it cannot take effect
    (OpenBLAS already loaded, or a CPU without the kernel's instructions)."""
    if _native():
        return False
    if "numpy" in sys.modules or "scipy" in sys.modules or not cpu_runs_pinned_kernel():
        return False
    os.environ[CORETYPE_ENV] = PINNED_CORETYPE
    return True


def kernels() -> str:
    """The kernel each loaded OpenBLAS runs, e.g. "Haswell" (or "SkylakeX,Haswell" when they differ)."""
    from threadpoolctl import threadpool_info

    found = sorted({str(info.get("architecture")) for info in threadpool_info() if info.get("internal_api") == "openblas"})
    return ",".join(found) or "none"


def unpinned_warning() -> str | None:
    """Why this process's fits may not reproduce on another machine: the CPU runs the pinned kernel
    but OpenBLAS runs another (None when pinned, or where no pin applies)."""
    if not cpu_runs_pinned_kernel():
        return None
    running = kernels()
    if running in (PINNED_CORETYPE, "none"):
        return None
    why = f"{SETTING_ENV}=native" if _native() else "numpy was imported before ensemble_platform"
    return (f"OpenBLAS runs the {running} kernel, not {PINNED_CORETYPE} ({why}): this fit's last bits, and the "
            f"versions fitted on it, may differ from another machine's")
