"""The cluster stage: matched pairs become products (connected components)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["cluster_pairs"]


def cluster_pairs(
    pairs: pd.DataFrame,
    ids: Sequence[Any],
    left: str = "query_id",
    right: str = "cand_id",
) -> pd.DataFrame:
    """Group items linked by matched pairs into clusters.

    Args:
        pairs: matched pairs (only the rows to link; filter on ``is_match`` first).
        ids: every item id, including those in no pair (they get a cluster of their own).
        left: column of the first id of a pair.
        right: column of the second id.

    Returns:
        DataFrame ``item_id, cluster_id`` in the order of ``ids``; ``cluster_id`` numbers
        clusters 0.. by the position of their first member, so it is stable across runs.

    Raises:
        KeyError: a pair names an id that is not in ``ids``.
    """
    ids = [str(i) for i in ids]
    position = pd.Index(ids)
    if not position.is_unique:
        raise ValueError("ids must be unique")
    a = position.get_indexer(pairs[left].astype(str))
    b = position.get_indexer(pairs[right].astype(str))
    if (a < 0).any() or (b < 0).any():
        bad = pairs[left].astype(str)[a < 0].tolist() + pairs[right].astype(str)[b < 0].tolist()
        raise KeyError(f"pairs name ids that are not among the items: {bad[:5]}")
    n = len(ids)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber by first appearance so cluster ids follow the input order
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    renumber = np.empty_like(order)
    renumber[order] = np.arange(len(order))
    return pd.DataFrame({"item_id": ids, "cluster_id": renumber[labels].astype(np.int64)})
