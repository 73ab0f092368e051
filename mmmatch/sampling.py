"""P x K batches for metric learning: P products per batch, K examples of each.

:class:`PKSampler` plans one epoch at a time from a label per example (row). Every row
appears at least once per epoch; products with fewer than K examples are topped up with
augmented views of their own examples (``Batch.views``), so even a product with a single
photo forms positive pairs; products with more than K examples are cut into K-chunks that
land in different batches. A view number is meant for
:func:`mmmatch.augment.augment_view`: ``augment_view(item, aug, seed, key, view)``.

Example:
    >>> sampler = PKSampler(["a", "a", "b", "c", "c", "c"], p=2, k=2)
    >>> for batch in sampler:  # doctest: +SKIP
    ...     images = [augment_view(photos[r], aug, 0, ids[r], v) for r, v in batch.pairs()]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Batch", "PKSampler"]


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch: ``b`` examples, grouped product by product (K consecutive entries each).

    Attributes:
        rows: (b,) int64 positions into the sampler's labels.
        views: (b,) int64; 0 is the example itself, ``v >= 1`` its v-th augmented view.
        labels: (b,) int64 dense product codes (indices into ``PKSampler.classes_``).
    """

    rows: np.ndarray
    views: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def n_products(self) -> int:
        """Number of distinct products in the batch."""
        return len(np.unique(self.labels))

    def pairs(self) -> list[tuple[int, int]]:
        """``[(row, view), ...]`` as Python ints, in batch order."""
        return list(zip(self.rows.tolist(), self.views.tolist(), strict=True))


class PKSampler:
    """Seeded P x K batch sampler over products.

    Each epoch (see :meth:`set_epoch`), with a generator seeded by ``[seed, epoch]``:

    * each product's rows are shuffled and cut into chunks of exactly ``k`` entries; a
      product with fewer than ``k`` rows is one chunk whose rows repeat, the r-th repeat
      of a row with view ``r`` (so ``k`` distinct ``(row, view)`` pairs; with
      ``views=False`` repeats keep view 0); when ``k`` does not divide a larger product,
      its last chunk is topped up with its other rows as view 1 (view 0 with
      ``views=False``);
    * chunks are spread over the epoch (a product's chunks evenly apart, products in a
      random order) and packed into batches of up to ``p`` chunks of distinct products;
    * a batch that would hold a single product gets a second one (the last batch takes a
      chunk from the one before when that keeps >= 2 products there, otherwise an extra
      chunk of a random other product is added, repeating rows).

    So every row appears at least once per epoch (fillers repeat some), every product in a
    batch has exactly ``k`` entries, a batch has at most ``p`` products, and only the tail
    of the epoch (or a product with more chunks than there are batches) gives batches with
    fewer than ``p`` products. With a single product, batches hold just that product.

    ``__init__`` only stores its arguments; they are checked when batches are planned.

    Args:
        labels: one hashable product label per example (strings, ints...), length n >= 1.
        p: products per batch, >= 2.
        k: entries per product, >= 1.
        seed: base seed, >= 0.
        views: top up short products with augmented views (True) or plain repeats (False).

    Attributes:
        epoch: the epoch :meth:`__iter__` and :meth:`__len__` plan (0 until set).
    """

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray,
        p: int = 16,
        k: int = 4,
        seed: int = 0,
        views: bool = True,
    ) -> None:
        self.labels = labels
        self.p = p
        self.k = k
        self.seed = seed
        self.views = views
        self.epoch = 0
        self._encoded: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None
        self._planned: tuple[tuple[Any, ...], list[Batch]] | None = None

    # -- labels ---------------------------------------------------------------------------------

    @staticmethod
    def encode_labels(labels: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense codes for any hashable labels.

        Classes are sorted when the labels can be sorted, else kept in order of first
        appearance (e.g. strings mixed with ints).

        Args:
            labels: n hashable labels.

        Returns:
            ``(codes, classes)``: (n,) int64 with ``classes[codes] == labels``, and the
            (c,) array of distinct labels.
        """
        arr = _as_1d(labels)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64), arr
        try:
            classes, codes = np.unique(arr, return_inverse=True)
        except TypeError:
            index: dict[Any, int] = {}
            codes = np.fromiter(
                (index.setdefault(v, len(index)) for v in arr.tolist()),
                dtype=np.int64, count=len(arr),
            )
            classes = np.empty(len(index), dtype=object)
            for i, v in enumerate(index):
                classes[i] = v
        return np.asarray(codes, dtype=np.int64).reshape(-1), classes

    @property
    def classes_(self) -> np.ndarray:
        """(c,) the distinct labels; ``Batch.labels`` index into it."""
        return self._encode()[2]

    @property
    def codes_(self) -> np.ndarray:
        """(n,) int64 product code of every row."""
        return self._encode()[1]

    def _encode(self) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
        key = (id(self.labels), len(self.labels))
        if self._encoded is None or self._encoded[0] != key:
            codes, classes = self.encode_labels(self.labels)
            self._encoded = (key, codes, classes)
        return self._encoded

    # -- the epoch ------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch to plan (a different shuffle per epoch, the same for the same)."""
        if not isinstance(epoch, int | np.integer) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches in the current epoch."""
        return len(self._plan())

    def __iter__(self) -> Iterator[Batch]:
        """The batches of the current epoch (the same ones on every pass)."""
        return iter(self._plan())

    def batches(self, epoch: int | None = None) -> list[Batch]:
        """All batches of ``epoch`` (default: the current one) without changing it."""
        if epoch is None:
            return self._plan()
        if not isinstance(epoch, int | np.integer) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        return self._plan(int(epoch))

    def _check(self) -> None:
        for name, low in (("p", 2), ("k", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if not isinstance(self.views, bool | np.bool_):
            raise ValueError(f"views: expected a bool, got {self.views!r}")
        try:
            n = len(self.labels)
        except TypeError:
            raise ValueError("labels: expected a sequence of product labels") from None
        if n == 0:
            raise ValueError("labels: expected at least one example, got none")

    def _plan(self, epoch: int | None = None) -> list[Batch]:
        self._check()
        epoch = self.epoch if epoch is None else epoch
        _, codes, classes = self._encode()
        key = (epoch, int(self.p), int(self.k), int(self.seed), bool(self.views), id(codes))
        if self._planned is not None and self._planned[0] == key:
            return self._planned[1]
        batches = _plan_epoch(
            codes, len(classes), int(self.p), int(self.k), bool(self.views),
            np.random.default_rng([int(self.seed), int(epoch)]),
        )
        self._planned = (key, batches)
        return batches


def _as_1d(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Labels as a 1-D array (an object array when they are tuples or ragged)."""
    try:
        arr = np.asarray(labels)
    except ValueError:
        arr = None
    if arr is not None and arr.ndim == 1:
        return arr
    seq = list(labels)
    out = np.empty(len(seq), dtype=object)
    for i, v in enumerate(seq):
        out[i] = v
    return out


def _plan_epoch(
    codes: np.ndarray, n_classes: int, p: int, k: int, views: bool, rng: np.random.Generator
) -> list[Batch]:
    """Chunks of every product, packed into batches (see :class:`PKSampler`)."""
    chunk_rows, chunk_views, chunk_code, keys = _chunks(codes, n_classes, k, views, rng)
    groups = _pack(chunk_code.tolist(), np.argsort(keys, kind="stable").tolist(), p)
    if n_classes >= 2:
        _ensure_two_products(groups, chunk_code, n_classes, rng)
    batches = []
    for group in groups:
        index = np.asarray(group, dtype=np.intp)
        arrays = (
            chunk_rows[index].ravel(),
            chunk_views[index].ravel(),
            np.repeat(chunk_code[index], k),
        )
        for arr in arrays:
            arr.flags.writeable = False
        batches.append(Batch(*arrays))
    return batches


def _chunks(
    codes: np.ndarray, n_classes: int, k: int, views: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut every product's shuffled rows into K-chunks.

    A product with m rows gets ``max(1, ceil(m / k))`` chunks, whose slot ``t`` holds row
    ``t % m`` of the product with view ``t // m``: repeats of a short product are views
    1, 2...; the top-up of a long product's last chunk is view 1 of its first rows.

    Returns:
        ``(rows, views, code, key)``: (n_chunks, k) int64 rows and views, (n_chunks,) int64
        product codes, (n_chunks,) float64 epoch positions (a product's chunks evenly
        apart, the offset random per product).
    """
    n = len(codes)
    order = np.lexsort((rng.random(n), codes))  # grouped by product, shuffled inside
    sizes = np.bincount(codes, minlength=n_classes).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_chunks = np.maximum(1, -(-sizes // k))
    slots = n_chunks * k
    product = np.repeat(np.arange(n_classes, dtype=np.int64), slots)
    slot_starts = np.concatenate([[0], np.cumsum(slots)[:-1]])
    t = np.arange(int(slots.sum()), dtype=np.int64) - np.repeat(slot_starts, slots)
    m = sizes[product]
    rows = order[starts[product] + t % m].astype(np.int64).reshape(-1, k)
    vws = (t // m if views else np.zeros_like(t)).reshape(-1, k)
    code = product[::k]
    j = t[::k] // k
    u = rng.random(n_classes)
    keys = (j + u[code]) / n_chunks[code]
    return rows, vws, code, keys


def _pack(chunk_code: list[int], order: list[int], p: int) -> list[list[int]]:
    """Greedily pack chunks (in ``order``) into groups of <= p chunks of distinct products;
    a chunk whose product is already in the open group waits for the next one."""
    groups: list[list[int]] = []
    current: list[int] = []
    present: set[int] = set()
    waiting: dict[int, deque[int]] = {}

    def take_waiting() -> None:
        for c in list(waiting):
            if len(current) >= p:
                return
            if c in present:
                continue
            queue = waiting[c]
            current.append(queue.popleft())
            present.add(c)
            if not queue:
                del waiting[c]

    def close() -> None:
        nonlocal current, present
        groups.append(current)
        current, present = [], set()

    for i in order:
        c = chunk_code[i]
        if c in present:
            waiting.setdefault(c, deque()).append(i)
            continue
        current.append(i)
        present.add(c)
        while len(current) == p:
            close()
            take_waiting()
    while waiting:
        before = len(current)
        take_waiting()
        if len(current) == p or len(current) == before:
            close()
    if current:
        groups.append(current)
    return groups


def _ensure_two_products(
    groups: list[list[int]], chunk_code: np.ndarray, n_classes: int, rng: np.random.Generator
) -> None:
    """Give every single-product group a second product (in place): the last group takes a
    chunk of the one before when that one keeps >= 2; others re-use the first chunk of a
    random other product (its rows then appear twice this epoch)."""
    first_chunk = np.zeros(n_classes, dtype=np.int64)
    first_chunk[chunk_code[::-1]] = np.arange(len(chunk_code))[::-1]
    for g, group in enumerate(groups):
        if len(group) != 1:
            continue
        c = int(chunk_code[group[0]])
        if g == len(groups) - 1 and g > 0 and len(groups[g - 1]) >= 3:
            prev = groups[g - 1]
            pick = next(j for j in reversed(range(len(prev))) if chunk_code[prev[j]] != c)
            group.append(prev.pop(pick))
            continue
        other = int(rng.integers(n_classes - 1))
        other += other >= c
        group.append(int(first_chunk[other]))
