"""Hubness correction (CSLS) of similarities, without labels.

Some items ("hubs": generic titles, plain pack shots) are close to everything and win many
nearest-neighbour lists. Cross-domain similarity local scaling (Conneau et al., 2018)
corrects each similarity by how close the two items are to their own neighbourhoods:

    csls(x, y) = sim(x, y) - (r_B(x) + r_A(y)) / 2

where ``r_B(x)`` is the mean similarity of ``x`` to its ``k`` nearest items of the other
catalogue (this is half the usual ``2 sim - r - r``, so scores keep cosine units). It is
computed per signal (image, text, lexical), from top-k searches in both directions.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mmmatch._validation import l2_normalize

__all__ = ["dense_neighbourhood", "sparse_neighbourhood"]


def _mean_top(scores: np.ndarray, drop_first: bool) -> np.ndarray:
    if drop_first:
        scores = scores[:, 1:]
    valid = np.isfinite(scores)
    total = np.where(valid, scores, 0.0).sum(axis=1)
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def dense_neighbourhood(
    queries: np.ndarray,
    queries_ok: np.ndarray,
    items: np.ndarray,
    items_ok: np.ndarray,
    k: int = 10,
    same: bool = False,
) -> np.ndarray:
    """Mean cosine of each query to its ``k`` nearest items (exact FAISS search).

    Args:
        queries: (n, d) float32 embeddings.
        queries_ok: (n,) bool, rows that have this signal.
        items: (m, d) float32 embeddings.
        items_ok: (m,) bool.
        k: neighbourhood size.
        same: queries and items are the same catalogue (each row's own match is dropped).

    Returns:
        (n,) float32, NaN for rows without the signal.
    """
    import faiss

    out = np.full(len(queries), np.nan, dtype=np.float32)
    q_rows = np.flatnonzero(queries_ok)
    i_rows = np.flatnonzero(items_ok)
    kk = min(k + int(same), len(i_rows))
    if len(q_rows) == 0 or kk == 0:
        return out
    base = l2_normalize(items[i_rows])
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    scores, _ = index.search(l2_normalize(queries[q_rows]), kk)
    scores[scores < -1e30] = np.nan
    out[q_rows] = _mean_top(scores, same and kk > 1)
    return out


def sparse_neighbourhood(
    queries: sp.csr_matrix, items: sp.csr_matrix, k: int = 10, same: bool = False
) -> np.ndarray:
    """Mean TF-IDF cosine of each query row to its ``k`` nearest item rows.

    Rows with no features (empty text) get NaN.
    """
    from mmmatch.lexical import LexicalModel

    n = queries.shape[0]
    kk = min(k + int(same), items.shape[0])
    out = np.full(n, np.nan, dtype=np.float32)
    if n == 0 or kk == 0:
        return out
    scores, _ = LexicalModel.search(queries, items, kk)
    scores[~np.isfinite(scores)] = np.nan
    out[:] = _mean_top(scores, same and kk > 1)
    out[np.diff(queries.indptr) == 0] = np.nan
    return out
