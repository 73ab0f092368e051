"""Pick OpenBLAS kernels for CPUs the bundled OpenBLAS does not recognise.

The faiss-cpu wheel bundles OpenBLAS 0.3.15, which falls back to generic kernels on CPUs
newer than itself (Sapphire Rapids, for one): exact FAISS search then runs 3-4x slower
(measured here: 607 vs 2,342 queries/s, 10k queries against 100k x 384). OpenBLAS reads
``OPENBLAS_CORETYPE`` when it loads, so this must run before faiss is imported. It sets the
kernel family the CPU supports (``SkylakeX`` with AVX-512, ``Haswell`` with AVX2) and never
overrides a value the user set; ``MMMATCH_NO_BLAS_TUNING=1`` turns it off.

:func:`tune_malloc` keeps glibc from handing every large tensor of a CPU forward pass fresh
pages: by default glibc serves blocks above a threshold (128 KB, raised only slowly) with
``mmap`` and returns them on free, so each batch page-faults its activations in again. A
32 MB mmap threshold, a 1 GB trim threshold and a 64 MB top pad keep that memory in the
heap: the default encoders ran 1.5x faster on photo + title batches of 16 (81 -> 124
queries/s here). The cost is that a process keeps up to about 1 GB it freed.
``MMMATCH_NO_MALLOC_TUNING=1`` turns it off; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["tune_malloc", "tune_openblas"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_malloc_tuned = False


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


def tune_malloc() -> bool:
    """Keep large freed blocks in glibc's heap (see the module docstring), once per process;
    returns whether the settings are in force."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if os.environ.get("MMMATCH_NO_MALLOC_TUNING") or platform.system() != "Linux":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):  # the user tuned it already
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl...)
        return False
    ok = (mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) == 1
          and mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
          and mallopt(_M_TOP_PAD, 64 * 2**20) == 1)
    _malloc_tuned = ok
    return ok
