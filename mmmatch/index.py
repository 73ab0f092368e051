"""The index stage: a FAISS index over embeddings, addressed by string ids.

:class:`EmbeddingIndex` wraps a FAISS index with the things a catalogue needs: string ids,
add / remove / search, a metric that knows which direction is closer, and an atomic save
with a manifest that is checked on load.

``factory="auto"`` picks the index type when vectors are first added:

* fewer than 200,000 vectors: ``"Flat"`` (exact search);
* more: ``"IVF{n},Flat"`` with ``n`` = the power of two nearest 4·sqrt(N) inverted lists,
  trained on the first batch, searched with ``nprobe = max(16, n / 16)``.

``factory="auto-search"`` (what :class:`~mmmatch.search.SearchIndex` builds) serves small
batches of queries, where an exact scan reads every vector once per batch: it stays
``"Flat"`` only while the vectors hold at most 2**25 floats (128 MB; 100,000 photo + title
vectors of 1,664 dims are 666 MB). Above, the vectors are stored in half precision in the
same IVF (``IVF{n},SQfp16``, which also gives :meth:`EmbeddingIndex.reconstruct`), and a
*shortlist* finds the candidates: ``IVF{n},PQ{dim/4}x4fs``, 4-bit product codes scanned
with SIMD (FAISS "fast scan"), ``nprobe = max(128, n / 8)``; its best ``k_factor * k`` (8k)
candidates are then re-scored exactly from the half-precision vectors. On 100,000
grocery photo + title vectors, 16 queries: 5.5 ms per batch (2.4 of them the shortlist)
against 9.6 ms for the ``SQfp16`` IVF alone (``nprobe`` 64) and 166 ms exact; top-10
overlap with exact search 0.97 against 0.95 (see ``benchmarks/serve_load.py``). Indexes
saved without a shortlist are searched through their IVF as before.

Any FAISS factory string (``"HNSW32"``, ``"IVF4096,PQ32"``...) can be given instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmmatch._io import atomic_dir
from mmmatch._validation import check_embeddings, l2_normalize
from mmmatch.exceptions import ConfigMismatchError
from mmmatch.similarity import Metric

__all__ = ["EmbeddingIndex", "auto_factory", "shortlist_factory"]

FORMAT_VERSION = 1
FLAT_LIMIT = 200_000
SEARCH_FLAT_FLOATS = 2**25


def auto_factory(n: int, dim: int | None = None, search: bool = False
                 ) -> tuple[str, int | None]:
    """The factory string and ``nprobe`` that ``factory="auto"`` (or, with ``search``,
    ``"auto-search"``) uses for ``n`` vectors of ``dim`` floats."""
    if search:
        if n * (dim or 1) <= SEARCH_FLAT_FLOATS or n < 1024:
            return "Flat", None
    elif n < FLAT_LIMIT:
        return "Flat", None
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    if search:  # half-precision codes: half the memory read per query, same ranking
        return f"IVF{nlist},SQfp16", max(64, nlist // 16)
    return f"IVF{nlist},Flat", max(16, nlist // 16)


def shortlist_factory(factory: str, dim: int) -> tuple[str, int] | None:
    """The fast-scan shortlist (factory string, ``nprobe``) that ``"auto-search"`` adds to
    an ``IVF{n},SQfp16`` index of ``dim``-wide vectors; ``None`` where there is none (an
    exact index, or a width 4-bit codes of 4 dims each cannot pair up)."""
    match = re.fullmatch(r"IVF(\d+),SQfp16", factory)
    if match is None or dim % 8:
        return None
    nlist = int(match.group(1))
    return f"IVF{nlist},PQ{dim // 4}x4fs", max(128, nlist // 8)


def _versions() -> dict[str, str]:
    import faiss

    from mmmatch import __version__

    return {"mmmatch": __version__, "faiss": faiss.__version__, "numpy": np.__version__}


class EmbeddingIndex:
    """A FAISS index with string ids.

    Args:
        dim: vector width.
        metric: ``"cosine"`` (vectors are L2-normalised on the way in), ``"ip"`` or ``"l2"``.
        factory: ``"auto"`` (see the module docstring) or a FAISS factory string.
        nprobe: inverted lists visited per query for IVF indexes (``None``: the auto rule).
        metadata: JSON-serialisable facts saved with the index and checked on load
            (for example the encoder ids that made the vectors).
        k_factor: with a shortlist (``"auto-search"`` above the exact limit), how many
            candidates per wanted result it passes on to be re-scored exactly.

    Example:
        >>> index = EmbeddingIndex(dim=4)
        >>> index.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
        >>> scores, ids = index.search(np.array([[1, 0.1, 0, 0]], np.float32), k=2)
        >>> ids.tolist()
        [['a', 'b']]
    """

    def __init__(
        self,
        dim: int,
        metric: str | Metric = "cosine",
        factory: str = "auto",
        nprobe: int | None = None,
        metadata: dict[str, Any] | None = None,
        k_factor: int = 8,
    ) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.metric = Metric.parse(metric)
        self.factory = factory
        self.nprobe = nprobe
        self.metadata = dict(metadata or {})
        self.k_factor = max(1, int(k_factor))
        self._index: Any = None
        self._shortlist: Any = None  # fast-scan candidates, re-scored from _index
        self._shortlist_factory: str | None = None
        self._resolved_factory: str | None = None
        self._next = 0
        self._int_of: dict[str, int] = {}
        self._str_of: dict[int, str] = {}
        self._table: np.ndarray | None = None  # int id -> str id, rebuilt after changes

    # -- building ---------------------------------------------------------------------------
    def _faiss_metric(self) -> int:
        import faiss

        return faiss.METRIC_L2 if self.metric is Metric.L2 else faiss.METRIC_INNER_PRODUCT

    def _create(self, train: np.ndarray) -> None:
        import faiss

        if self.factory in ("auto", "auto-search"):
            factory, nprobe = auto_factory(len(train), self.dim, self.factory == "auto-search")
        else:
            factory, nprobe = self.factory, self.nprobe
        self.nprobe = self.nprobe if self.nprobe is not None else nprobe
        if factory == "Flat":
            index = faiss.index_factory(self.dim, "IDMap2,Flat", self._faiss_metric())
        else:
            index = faiss.index_factory(self.dim, factory, self._faiss_metric())
            if not index.is_trained:
                index.train(train)
            try:  # IVF indexes take ids natively; a hashtable direct map allows reconstruct
                faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
            except RuntimeError:
                index = faiss.IndexIDMap2(index)
        self._index = index
        self._resolved_factory = factory
        self._apply_nprobe()
        short = shortlist_factory(factory, self.dim) if self.factory == "auto-search" else None
        if short is not None:
            shortlist = faiss.index_factory(self.dim, short[0], self._faiss_metric())
            shortlist.train(train)
            faiss.extract_index_ivf(shortlist).nprobe = short[1]
            self._shortlist, self._shortlist_factory = shortlist, short[0]

    def _apply_nprobe(self) -> None:
        import faiss

        if self.nprobe is not None and self._index is not None:
            with contextlib.suppress(RuntimeError):  # not an IVF index
                faiss.ParameterSpace().set_index_parameter(self._index, "nprobe", self.nprobe)

    def _prepare(self, vectors: Any, name: str) -> np.ndarray:
        arr = check_embeddings(vectors, self.dim, name)
        return l2_normalize(arr) if self.metric is Metric.COSINE else arr

    def add(self, vectors: Any, ids: Sequence[Any]) -> None:
        """Add vectors under string ids.

        Args:
            vectors: (n, dim) array-like; converted to float32 (and normalised for cosine).
            ids: n unique ids, none already in the index (converted with ``str``).

        Raises:
            ValueError: wrong shape, non-finite values, or duplicate / existing ids.
        """
        arr = self._prepare(vectors, "vectors")
        ids = [str(i) for i in ids]
        if len(ids) != len(arr):
            raise ValueError(f"got {len(arr)} vectors but {len(ids)} ids")
        if len(set(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique()[:5].tolist()
            raise ValueError(f"ids must be unique; repeated: {dup}")
        existing = [i for i in ids if i in self._int_of]
        if existing:
            raise ValueError(
                f"{len(existing)} id(s) already in the index, e.g. {existing[:5]}; remove first"
            )
        if len(arr) == 0:
            return
        if self._index is None:
            self._create(arr)
        ints = np.arange(self._next, self._next + len(ids), dtype=np.int64)
        self._index.add_with_ids(arr, ints)
        if self._shortlist is not None:
            self._shortlist.add_with_ids(arr, ints)
        self._next += len(ids)
        self._table = None
        for s, i in zip(ids, ints.tolist(), strict=True):
            self._int_of[s] = i
            self._str_of[i] = s

    def remove(self, ids: Sequence[Any]) -> int:
        """Remove ids; unknown ids are ignored.

        Returns:
            How many vectors were removed.
        """
        import faiss

        ints = [self._int_of.pop(str(i)) for i in ids if str(i) in self._int_of]
        for i in ints:
            del self._str_of[i]
        self._table = None
        if not ints or self._index is None:
            return 0
        arr = np.asarray(ints, np.int64)
        if self._shortlist is not None:
            self._shortlist.remove_ids(faiss.IDSelectorArray(len(arr), faiss.swig_ptr(arr)))
        if (self._resolved_factory or "").startswith("IVF"):
            # an IVF's hashtable direct map removes only by an explicit id array
            return int(self._index.remove_ids(faiss.IDSelectorArray(len(arr),
                                                                    faiss.swig_ptr(arr))))
        return int(self._index.remove_ids(faiss.IDSelectorBatch(arr)))

    # -- querying ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._int_of)

    def __contains__(self, item: object) -> bool:
        return str(item) in self._int_of

    @property
    def ids(self) -> list[str]:
        """The ids in insertion order."""
        return [self._str_of[i] for i in sorted(self._str_of)]

    def reconstruct(self, ids: Sequence[Any]) -> np.ndarray:
        """The stored vectors of some ids, (n, dim) float32 (normalised for cosine)."""
        if self._index is None:
            return np.empty((0, self.dim), np.float32)
        missing = [i for i in ids if str(i) not in self._int_of]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        ints = np.fromiter((self._int_of[str(i)] for i in ids), np.int64, len(ids))
        return np.ascontiguousarray(self._index.reconstruct_batch(ints), dtype=np.float32)

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored vectors of each query.

        Args:
            queries: (n, dim) array-like.
            k: neighbours per query; fewer stored vectors pad the result.

        Returns:
            ``(scores, ids)``: (n, k) float32, best first (cosine / ip: higher; l2: squared
            distance, lower), and (n, k) object array of ids. Padding has id ``None`` and
            score ``-inf`` (``+inf`` for l2).
        """
        scores, ids, _ = self._search(queries, k, False)
        return scores, ids

    def search_with_vectors(self, queries: Any, k: int = 10
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`search`, plus the stored vectors of the hits: (n, k, dim) float32, zero
        for padding (as :meth:`reconstruct` gives them; with a shortlist they were read for
        the re-scoring already, and are not read again)."""
        return self._search(queries, k, True)

    def _search(self, queries: Any, k: int, want_vectors: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._prepare(queries, "queries")
        n = len(q)
        vectors = np.zeros((n, k, self.dim) if want_vectors else (0, 0, 0), np.float32)
        if self._index is None or len(self) == 0 or n == 0:
            return (
                np.full((n, k), self.metric.worst, np.float32),
                np.full((n, k), None, dtype=object),
                vectors,
            )
        if self._shortlist is not None:
            scores, labels, found = self._rescored(q, k, want_vectors)
            if want_vectors:
                vectors[:, : found.shape[1]] = found
        else:
            scores, labels = self._index.search(q, k)
            hit = labels >= 0
            if want_vectors and hit.any():
                vectors[hit] = self._index.reconstruct_batch(labels[hit])
        if self._table is None:
            self._table = np.full(self._next + 1, None, dtype=object)  # last slot: padding
            self._table[list(self._str_of)] = list(self._str_of.values())
        valid = labels >= 0
        ids = self._table[np.where(valid, labels, self._next)]
        scores = np.where(valid, scores, self.metric.worst).astype(np.float32)
        return np.ascontiguousarray(scores), ids, vectors

    def _rescored(self, q: np.ndarray, k: int, want_vectors: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The shortlist's ``k_factor * k`` candidates re-scored exactly from the stored
        vectors: FAISS-style ``(scores, labels)``, (n, k), label -1 for padding, and (with
        ``want_vectors``) the (n, min(k, candidates), dim) vectors of the labels, zero for
        padding."""
        _, cand = self._shortlist.search(q, min(len(self), self.k_factor * k))
        valid = cand >= 0
        if valid.all():
            vecs = self._index.reconstruct_batch(cand.ravel()).reshape(*cand.shape, self.dim)
        else:  # padding (fewer stored vectors than asked): zero vectors, never ranked
            vecs = np.zeros((*cand.shape, self.dim), np.float32)
            if valid.any():
                vecs[valid] = self._index.reconstruct_batch(cand[valid])
        # (n, kk, d) candidates against their (n, d) query in one batched product
        if self.metric is Metric.L2:  # lower is closer: rank by the negated distance
            diff = vecs - q[:, None, :]
            closeness = -np.einsum("nkd,nkd->nk", diff, diff)
        else:
            closeness = np.matmul(vecs, q[:, :, None])[:, :, 0]
        closeness[~valid] = -np.inf
        top = np.argsort(-closeness, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(closeness, top, axis=1)
        labels = np.where(np.isfinite(best), np.take_along_axis(cand, top, axis=1), -1)
        found = np.take_along_axis(vecs, top[:, :, None], axis=1) if want_vectors else vecs[:0]
        if labels.shape[1] < k:  # fewer stored vectors than k
            pad = k - labels.shape[1]
            labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=-1)
            best = np.pad(best, ((0, 0), (0, pad)), constant_values=-np.inf)
        scores = -best if self.metric is Metric.L2 else best
        return scores.astype(np.float32), labels, found

    # -- persistence ------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """What is saved next to the vectors and checked on load."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": "mmmatch.EmbeddingIndex",
            "dim": self.dim,
            "metric": self.metric.value,
            "factory": self.factory,
            "resolved_factory": self._resolved_factory,
            "nprobe": self.nprobe,
            "shortlist": self._shortlist_factory,
            "k_factor": self.k_factor,
            "count": len(self),
            "metadata": self.metadata,
            "versions": _versions(),
        }

    def save_into(self, folder: Path) -> None:
        """Write the index files into an existing folder (used inside atomic writes)."""
        import faiss

        (folder / "manifest.json").write_text(json.dumps(self.manifest(), indent=2))
        if self._index is not None:
            faiss.write_index(self._index, str(folder / "index.faiss"))
        if self._shortlist is not None:
            faiss.write_index(self._shortlist, str(folder / "shortlist.faiss"))
        ints = np.array(sorted(self._str_of), dtype=np.int64)
        table = pd.DataFrame({"int_id": ints, "id": [self._str_of[i] for i in ints]})
        table.to_parquet(folder / "ids.parquet", index=False)

    def save(self, path: str | Path) -> Path:
        """Save atomically to a folder (``manifest.json``, ``index.faiss``, ``ids.parquet``)."""
        with atomic_dir(path) as tmp:
            self.save_into(tmp)
        return Path(path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        dim: int | None = None,
        metric: str | Metric | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> EmbeddingIndex:
        """Load a saved index and check it against what the caller expects.

        Args:
            path: folder written by :meth:`save`.
            dim: expected vector width.
            metric: expected metric.
            metadata: expected metadata entries (for example encoder ids); each given key
                must match the saved value.

        Raises:
            FileNotFoundError: no index at ``path``.
            ConfigMismatchError: the saved index differs from what is expected, or was
                written by a newer format; the message gives both values.
        """
        import faiss

        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"no mmmatch index at {path} (missing manifest.json)")
        m = json.loads(manifest_path.read_text())
        if m.get("format_version", 0) > FORMAT_VERSION:
            raise ConfigMismatchError(
                f"{path}: index format {m.get('format_version')} is newer than this mmmatch "
                f"reads ({FORMAT_VERSION}); upgrade mmmatch"
            )
        expected = {"dim": dim, "metric": Metric.parse(metric).value if metric else None}
        for key, want in expected.items():
            if want is not None and m[key] != want:
                raise ConfigMismatchError(f"{path}: index has {key}={m[key]!r}, expected {want!r}")
        for key, want in (metadata or {}).items():
            have = m.get("metadata", {}).get(key)
            if have != want:
                raise ConfigMismatchError(
                    f"{path}: index was built with {key}={have!r}, but {want!r} is in use"
                )
        index = cls(m["dim"], m["metric"], m["factory"], m.get("nprobe"), m.get("metadata"),
                    m.get("k_factor", 8))
        if (path / "index.faiss").exists():
            index._index = faiss.read_index(str(path / "index.faiss"))
            index._resolved_factory = m.get("resolved_factory")
            if index._index.d != index.dim:
                raise ConfigMismatchError(
                    f"{path}: index.faiss has dim {index._index.d}, manifest says {index.dim}"
                )
            index._apply_nprobe()
        if m.get("shortlist"):
            if not (path / "shortlist.faiss").exists():
                raise ConfigMismatchError(f"{path}: the manifest names a shortlist index "
                                          f"({m['shortlist']}) but shortlist.faiss is missing")
            index._shortlist = faiss.read_index(str(path / "shortlist.faiss"))
            index._shortlist_factory = m["shortlist"]
        table = pd.read_parquet(path / "ids.parquet")
        ints = table["int_id"].to_numpy(np.int64)
        index._str_of = dict(zip(ints.tolist(), table["id"].astype(str).tolist(), strict=True))
        index._int_of = {s: i for i, s in index._str_of.items()}
        index._next = int(ints.max()) + 1 if len(ints) else 0
        index._table = None
        for name, part in (("index.faiss", index._index), ("shortlist.faiss", index._shortlist)):
            if part is not None and part.ntotal != len(index._str_of):
                raise ConfigMismatchError(
                    f"{path}: {name} holds {part.ntotal} vectors but ids.parquet "
                    f"{len(index._str_of)}"
                )
        return index
