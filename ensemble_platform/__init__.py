"""ensemble_platform: build, validate, govern and ship multi-model ensembles."""

from ensemble_platform.blas_kernel import pin_kernel

# Before anything imports numpy: the same BLAS kernel on every x86-64 CPU (see blas_kernel.py).
pin_kernel()

__version__ = "0.1.0"
