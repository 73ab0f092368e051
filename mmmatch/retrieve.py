"""The retrieve stage: nearest neighbours as a candidates table.

Candidates are a DataFrame with columns ``query_id, cand_id, score, rank`` (rank 1 is the
best). Queries are processed in chunks, so the same functions run inside Spark's
``mapInPandas`` on one partition at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmmatch.similarity import Metric

__all__ = [
    "CANDIDATE_COLUMNS",
    "candidates_from_search",
    "rank_candidates",
    "retrieve_candidates",
]

CANDIDATE_COLUMNS = ["query_id", "cand_id", "score", "rank"]


def candidates_from_search(
    query_ids: Sequence[Any], scores: np.ndarray, cand_ids: np.ndarray
) -> pd.DataFrame:
    """Turn ``(scores, ids)`` search results into a candidates table.

    Args:
        query_ids: n query ids.
        scores: (n, k) float32, best first.
        cand_ids: (n, k) object array; ``None`` entries (padding) are dropped.

    Returns:
        Candidates (``query_id, cand_id, score, rank``), rank = column position + 1.
    """
    n, k = cand_ids.shape
    q = np.repeat(np.asarray(query_ids, dtype=object), k)
    rank = np.tile(np.arange(1, k + 1, dtype=np.int32), n)
    c = cand_ids.ravel()
    keep = np.array([x is not None for x in c], dtype=bool)
    return pd.DataFrame({
        "query_id": q[keep], "cand_id": c[keep],
        "score": scores.ravel()[keep].astype(np.float32), "rank": rank[keep],
    })


def rank_candidates(
    candidates: pd.DataFrame, metric: str | Metric = "cosine", k: int | None = None
) -> pd.DataFrame:
    """Re-number ``rank`` by ``score`` within each query (ties keep their order).

    Args:
        candidates: a table with ``query_id`` and ``score``.
        metric: decides whether higher or lower scores are better.
        k: keep only the best ``k`` per query.

    Returns:
        The table sorted by query then rank.
    """
    metric = Metric.parse(metric)
    out = candidates.sort_values(
        ["query_id", "score"], ascending=[True, not metric.higher_is_better], kind="stable"
    ).reset_index(drop=True)
    out["rank"] = (out.groupby("query_id", sort=False).cumcount() + 1).astype(np.int32)
    if k is not None:
        out = out[out["rank"] <= k].reset_index(drop=True)
    return out


def retrieve_candidates(
    index: Any,
    queries: np.ndarray,
    query_ids: Sequence[Any],
    k: int = 10,
    exclude_self: bool = False,
    query_sources: Sequence[Any] | None = None,
    cand_sources: Mapping[str, Any] | None = None,
    chunk_size: int = 8192,
) -> pd.DataFrame:
    """The top-``k`` candidates of each query.

    Args:
        index: an :class:`~mmmatch.index.EmbeddingIndex` (anything with ``search`` and
            ``metric`` and ``len``).
        queries: (n, dim) float32 query vectors.
        query_ids: n ids.
        k: candidates per query.
        exclude_self: drop a candidate whose id equals its query's id (deduplication).
        query_sources: n source names; with ``cand_sources``, only candidates from another
            source are kept (cross-retailer matching). The search widens until each query
            has ``k`` such candidates or the index is exhausted.
        cand_sources: id -> source name of the indexed items.
        chunk_size: queries searched at once.

    Returns:
        Candidates (``query_id, cand_id, score, rank``), at most ``k`` per query.
    """
    query_ids = [str(q) for q in query_ids]
    if len(query_ids) != len(queries):
        raise ValueError(f"got {len(queries)} query vectors but {len(query_ids)} ids")
    cross = query_sources is not None and cand_sources is not None
    if cross and len(query_sources) != len(query_ids):
        raise ValueError("query_sources must have one entry per query")
    total = len(index)
    frames = []
    for start in range(0, len(query_ids), chunk_size):
        stop = min(start + chunk_size, len(query_ids))
        rows = np.arange(start, stop)
        fetch = k + int(exclude_self)
        while len(rows):
            fetch = min(fetch, max(total, 1))
            scores, ids = index.search(queries[rows], fetch)
            part = candidates_from_search([query_ids[r] for r in rows], scores, ids)
            part["_row"] = np.repeat(rows, fetch)[[x is not None for x in ids.ravel()]]
            if exclude_self:
                part = part[part["query_id"] != part["cand_id"]]
            if cross:
                own = np.asarray(query_sources, dtype=object)[part["_row"].to_numpy()]
                theirs = part["cand_id"].map(cand_sources).to_numpy(dtype=object)
                part = part[own != theirs]
            counts = part.groupby("_row").size().reindex(rows, fill_value=0).to_numpy()
            done = (counts >= k) | (fetch >= total)
            frames.append(part[np.isin(part["_row"].to_numpy(), rows[done])])
            rows = rows[~done]
            fetch *= 4
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            CANDIDATE_COLUMNS, (object, object, np.float32, np.int32), strict=True)})
    out = pd.concat(frames, ignore_index=True).sort_values(
        ["_row", "score"], ascending=[True, not index.metric.higher_is_better], kind="stable"
    )
    out["rank"] = (out.groupby("_row", sort=False).cumcount() + 1).astype(np.int32)
    return out[out["rank"] <= k].drop(columns="_row").reset_index(drop=True)
