"""A small thread pool for numeric work that releases the GIL (SciPy sparse products, NumPy
partitions), split by rows: the TF-IDF top-k search uses it to put every core on a batch."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

__all__ = ["CORES", "split_rows"]

T = TypeVar("T")

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_POOL: ThreadPoolExecutor | None = None
_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(CORES, thread_name_prefix="mmmatch-rows")
        return _POOL


def split_rows(fn: Callable[[int, int], T], start: int, stop: int, threads: int) -> list[T]:
    """``fn(a, b)`` over ``threads`` contiguous parts of ``range(start, stop)``, in order.

    One part runs on the calling thread, the others on the pool. ``fn`` must not call
    :func:`split_rows` itself (the pool's threads could all end up waiting). With
    ``threads <= 1`` or a single row it is just ``[fn(start, stop)]``.
    """
    threads = max(1, min(int(threads), stop - start))
    if threads == 1:
        return [fn(start, stop)]
    bounds = np.linspace(start, stop, threads + 1).astype(int).tolist()
    parts = list(itertools.pairwise(bounds))
    futures = [_pool().submit(fn, a, b) for a, b in parts[1:]]
    first = fn(*parts[0])
    return [first, *(f.result() for f in futures)]
