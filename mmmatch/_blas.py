"""Pick OpenBLAS kernels for CPUs the bundled OpenBLAS does not recognise.

The faiss-cpu wheel bundles OpenBLAS 0.3.15, which falls back to generic kernels on CPUs
newer than itself (Sapphire Rapids, for one): exact FAISS search then runs 3-4x slower
(measured here: 607 vs 2,342 queries/s, 10k queries against 100k x 384). OpenBLAS reads
``OPENBLAS_CORETYPE`` when it loads, so this must run before faiss is imported. It sets the
kernel family the CPU supports (``SkylakeX`` with AVX-512, ``Haswell`` with AVX2) and never
overrides a value the user set; ``MMMATCH_NO_BLAS_TUNING=1`` turns it off.
"""

from __future__ import annotations

import os
import platform

__all__ = ["tune_openblas"]


def tune_openblas() -> str | None:
    """Set ``OPENBLAS_CORETYPE`` from the CPU flags if unset; returns the value in force."""
    if os.environ.get("MMMATCH_NO_BLAS_TUNING") or "OPENBLAS_CORETYPE" in os.environ:
        return os.environ.get("OPENBLAS_CORETYPE")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags):
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= set(flags):
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"
    return os.environ.get("OPENBLAS_CORETYPE")
