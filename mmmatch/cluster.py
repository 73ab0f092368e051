"""The cluster stage: matched pairs become products, and pairs become one-to-one links.

* :func:`cluster_pairs` groups items linked by pairs. By default a cluster is a connected
  component (single linkage), which can glue unrelated products together through a long
  path of weak links ("chaining"); ``max_size`` and ``linkage="average"`` guard against it.
* :func:`mutual_edges` keeps only the pairs whose items are in each other's top-k.
* :func:`safe_clusters` chains both with the recommended defaults (what deduplication uses).
* :func:`one_to_one` picks at most one partner per item between two catalogues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.cluster import hierarchy
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import (
    connected_components,
    min_weight_full_bipartite_matching,
    minimum_spanning_tree,
)
from scipy.spatial.distance import squareform

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MUTUAL_K",
    "cluster_pairs",
    "mutual_edges",
    "one_to_one",
    "safe_clusters",
]

DEFAULT_MUTUAL_K = 5
"""Recommended ``k`` of :func:`mutual_edges` for deduplication: half the matcher's default
10 candidates, so a product listed up to 6 times can still be a clique of mutual links, while
an item that is merely *somebody's* neighbour (a hub, or the end of a chain) is not linked."""

DEFAULT_MAX_SIZE = 20
"""Recommended ``max_size`` of :func:`cluster_pairs` for deduplication: well above how often
one product is listed in a catalogue, so it only splits components that are chains."""


def cluster_pairs(
    pairs: pd.DataFrame,
    ids: Sequence[Any],
    left: str = "query_id",
    right: str = "cand_id",
    score: str | None = None,
    max_size: int | None = None,
    linkage: Literal["single", "average"] = "single",
    min_average: float | None = None,
    missing: float | None = None,
) -> pd.DataFrame:
    """Group items linked by matched pairs into clusters.

    With the defaults a cluster is a connected component of the pairs (single linkage).
    A pair ``(a, b)`` and its reverse ``(b, a)`` are one undirected edge; repeated edges
    weigh their highest score, and self-pairs ``(a, a)`` link nothing. The guards against
    chaining run in this order:

    1. ``max_size``: a component of more than ``max_size`` items is split by repeatedly
       cutting its weakest edge (lowest score) until it falls apart, and so on for every
       piece still larger than ``max_size``. Among edges of equal score, the one whose
       ``(earlier, later)`` endpoint positions in ``ids`` are largest is cut first, so the
       result does not depend on the order of the rows. (This is the single-linkage
       dendrogram cut top-down, computed from a maximum spanning tree.)
    2. ``linkage="average"``: inside each component (or piece), average-linkage
       agglomerative clustering on the edge scores: clusters merge, closest first, while
       the mean score over all their cross pairs is ``>= min_average``, a pair without an
       edge counting as ``missing``. Memory is quadratic in the size of a component, so
       pair it with :func:`mutual_edges` and ``max_size`` on large catalogues.

    Args:
        pairs: matched pairs (only the rows to link; filter on ``is_match`` first).
        ids: every item id, including those in no pair (they get a cluster of their own).
        left: column of the first id of a pair.
        right: column of the second id.
        score: column of the pair similarity (higher = closer); needed by ``max_size`` and
            ``linkage="average"``, ignored otherwise.
        max_size: largest cluster allowed (>= 1); ``None`` for no limit.
        linkage: ``"single"`` (connected components) or ``"average"``.
        min_average: smallest mean similarity of a merge (``linkage="average"`` only, where
            it is required). Scores within floating rounding (1e-12 relative) of it pass.
        missing: similarity of two items of one component without an edge (average linkage);
            default the lowest score in ``pairs``, i.e. about the decision threshold when
            ``pairs`` are the matches, so ``min_average`` should be above it.

    Returns:
        DataFrame ``item_id, cluster_id`` in the order of ``ids``; ``cluster_id`` numbers
        clusters 0.. by the position of their first member, so it is stable across runs.

    Raises:
        KeyError: a pair names an id that is not in ``ids``, or a column is missing.
        ValueError: repeated ``ids``, an unknown ``linkage``, ``max_size < 1``, a guard
            without ``score``, average linkage without ``min_average``, or non-finite scores.
    """
    if linkage not in ("single", "average"):
        raise ValueError(f"linkage must be 'single' or 'average', got {linkage!r}")
    if max_size is not None and (int(max_size) != max_size or max_size < 1):
        raise ValueError(f"max_size must be a positive integer or None, got {max_size!r}")
    if linkage == "average" and min_average is None:
        raise ValueError("linkage='average' needs min_average")
    names, a, b = _positions(pairs, ids, left, right)
    n = len(names)
    if max_size is None and linkage == "single":
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        return _frame(names, labels)
    if score is None:
        raise ValueError("max_size and linkage='average' need the score column (score=...)")
    lo, hi, w = _undirected(a, b, _scores(pairs, score), n)
    graph = coo_matrix((np.ones(len(lo), dtype=np.int8), (lo, hi)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    if max_size is not None:
        labels = _split_max_size(labels, lo, hi, w, int(max_size))
    if linkage == "average":
        assert min_average is not None
        fill = missing if missing is not None else (float(w.min()) if len(w) else 0.0)
        labels = _average_linkage(labels, lo, hi, w, float(min_average), float(fill))
    return _frame(names, labels)


def mutual_edges(
    pairs: pd.DataFrame,
    k: int,
    left: str = "left_id",
    right: str = "right_id",
    score: str = "score",
    rank: str | None = "rank",
) -> pd.DataFrame:
    """Keep the pairs whose two items are each within the other's top ``k``.

    ``pairs`` are directed candidate lists: row ``(a, b)`` says ``b`` is a candidate of
    ``a``. An undirected edge ``{a, b}`` is kept when ``b`` is in ``a``'s top ``k`` *and*
    ``a`` is in ``b``'s top ``k``; then every row of the edge (``(a, b)`` and ``(b, a)``,
    repeats included) is kept. Ids compare as strings; self-pairs ``(a, a)`` are dropped.

    * ``rank`` column present (rank 1 = best): ``b`` is in ``a``'s top ``k`` when a row
      ``(a, b)`` has ``rank <= k`` (NaN never is). An edge seen in one direction only is
      therefore dropped: the other item's list did not hold it.
    * otherwise (``rank=None`` or no such column), the top ``k`` come from the scores: the
      pairs form an undirected graph (an edge exists if ``(a, b)`` or ``(b, a)`` appears,
      with its highest score), and ``b`` is in ``a``'s top ``k`` when fewer than ``k`` of
      ``a``'s edges score strictly higher (ties share a rank, so none is dropped at random).

    Args:
        pairs: candidate pairs, e.g. :meth:`~mmmatch.pipeline.Matcher.candidates` or the
            matches of deduplication.
        k: neighbourhood size (>= 1).
        left: column of the query id.
        right: column of the candidate id.
        score: similarity column (higher = closer), used when there are no ranks.
        rank: rank column, or ``None`` to rank by ``score``.

    Returns:
        The kept rows of ``pairs`` (all columns, original index and order).

    Raises:
        KeyError: a needed column is missing.
        ValueError: ``k < 1`` or non-finite scores.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    lid = pairs[left].astype(str).to_numpy()
    rid = pairs[right].astype(str).to_numpy()
    fwd = pd.MultiIndex.from_arrays([lid, rid])
    rev = pd.MultiIndex.from_arrays([rid, lid])
    if rank is not None and rank in pairs.columns:
        top = pairs[rank].to_numpy(dtype=np.float64) <= k
        keep = fwd.isin(fwd[top]) & rev.isin(fwd[top])
    else:
        s = _scores(pairs, score)
        lo = np.minimum(lid, rid)
        hi = np.maximum(lid, rid)
        edges = (pd.DataFrame({"lo": lo, "hi": hi, "s": s})[lid != rid]
                 .groupby(["lo", "hi"], sort=False)["s"].max().reset_index())
        ends = pd.DataFrame({
            "node": np.concatenate([edges["lo"].to_numpy(), edges["hi"].to_numpy()]),
            "edge": np.tile(np.arange(len(edges)), 2),
            "s": np.tile(edges["s"].to_numpy(), 2),
        })
        top = ends.groupby("node")["s"].rank(method="min", ascending=False) <= k
        mutual = top.groupby(ends["edge"]).all().reindex(range(len(edges)), fill_value=False)
        kept = edges[mutual.to_numpy()]
        keep = pd.MultiIndex.from_arrays([lo, hi]).isin(
            pd.MultiIndex.from_arrays([kept["lo"].to_numpy(), kept["hi"].to_numpy()])
        )
    keep &= lid != rid
    return pairs[keep]


def safe_clusters(
    pairs: pd.DataFrame,
    ids: Sequence[Any],
    k: int | None = DEFAULT_MUTUAL_K,
    max_size: int | None = DEFAULT_MAX_SIZE,
    linkage: Literal["single", "average"] = "single",
    min_average: float | None = None,
    missing: float | None = None,
    left: str = "left_id",
    right: str = "right_id",
    score: str = "score",
    rank: str | None = "rank",
) -> pd.DataFrame:
    """Cluster matched pairs with the guards against chaining (what deduplication uses).

    :func:`mutual_edges` with ``k``, then :func:`cluster_pairs` with ``max_size`` and
    ``linkage``. The defaults (mutual top-:data:`DEFAULT_MUTUAL_K`, components split above
    :data:`DEFAULT_MAX_SIZE`, single linkage) are cheap and suit the pairs of
    :meth:`~mmmatch.pipeline.Matcher.dedupe`; ``linkage="average"`` with ``min_average`` a
    little above the decision threshold is stricter still (see :func:`cluster_pairs`).

    Args:
        pairs: matched pairs ``left_id, right_id, score`` (and ``rank``, optional).
        ids: every item id.
        k: mutual neighbourhood size, or ``None`` to link every pair.
        max_size: largest cluster, or ``None`` for no limit.
        linkage: ``"single"`` or ``"average"``.
        min_average: see :func:`cluster_pairs`.
        missing: see :func:`cluster_pairs`.
        left: column of the first id.
        right: column of the second id.
        score: similarity column.
        rank: rank column (see :func:`mutual_edges`).

    Returns:
        DataFrame ``item_id, cluster_id`` in the order of ``ids`` (see :func:`cluster_pairs`).

    Raises:
        KeyError: a pair names an id that is not in ``ids``, or a column is missing.
        ValueError: as :func:`cluster_pairs` and :func:`mutual_edges`.
    """
    _positions(pairs, ids, left, right)  # unknown ids raise even if their pairs are dropped
    linked = pairs if k is None else mutual_edges(pairs, k, left, right, score, rank)
    return cluster_pairs(linked, ids, left, right, score, max_size, linkage, min_average,
                         missing)


def one_to_one(
    pairs: pd.DataFrame,
    method: Literal["greedy", "hungarian"] = "greedy",
    left: str = "left_id",
    right: str = "right_id",
    score: str = "score",
    baseline: float | None = None,
) -> pd.DataFrame:
    """Pick pairs so that every left id and every right id appears at most once.

    The two columns are separate catalogues: a left id equal to a right id is a different
    item. Only given pairs are ever picked. Ids compare as strings.

    * ``"greedy"``: take pairs by descending score (ties: by left id, then right id, then
      row order) whenever both ids are still free. Every pair is worth taking.
    * ``"hungarian"``: a maximum-weight matching, the weight of a pair being
      ``score - baseline``, so pairs scoring ``<= baseline`` are never picked. Solved exactly
      per connected component of the pairs, with :func:`scipy.optimize.linear_sum_assignment`
      on its dense score matrix (absent pairs weigh 0 and assignments to them are dropped,
      which gives the maximum over *all* matchings, not only the largest ones; a large
      negative cost would instead force the most pairs), or sparse (LAPJVsp) when that
      matrix would pass 4M cells. Of repeated pairs the highest-scoring row is used.

    Args:
        pairs: candidate or matched pairs.
        method: ``"greedy"`` or ``"hungarian"``.
        left: column of the left id.
        right: column of the right id.
        score: similarity column (higher = closer).
        baseline: hungarian only. ``None``: 0 when every score is positive (the matching of
            maximum total score), else just below the lowest score, so that every pair (e.g.
            hubness-corrected scores just under 0 that pass the threshold) is worth taking.

    Returns:
        The picked rows of ``pairs`` (all columns, original index and order).

    Raises:
        KeyError: a column is missing.
        ValueError: an unknown method or non-finite scores.
    """
    if method not in ("greedy", "hungarian"):
        raise ValueError(f"method must be 'greedy' or 'hungarian', got {method!r}")
    lid = pairs[left].astype(str).to_numpy()
    rid = pairs[right].astype(str).to_numpy()
    s = _scores(pairs, score)
    if len(s) == 0:
        return pairs.iloc[:0]
    order = np.lexsort((np.arange(len(s)), rid, lid, -s))  # best first, ties by ids then row
    if method == "greedy":
        used_l: set[str] = set()
        used_r: set[str] = set()
        take = np.zeros(len(s), dtype=bool)
        for i in order.tolist():
            if lid[i] not in used_l and rid[i] not in used_r:
                used_l.add(lid[i])
                used_r.add(rid[i])
                take[i] = True
        return pairs[take]
    if baseline is None:
        low = float(s.min())
        baseline = 0.0 if low > 0 else low - 1e-9 * max(1.0, abs(low))
    # one row per (left, right): the best-scoring one; keep only pairs worth taking
    first = pd.MultiIndex.from_arrays([lid[order], rid[order]]).duplicated(keep="first")
    rows = order[~first]
    rows = rows[s[rows] - baseline > 0]
    li, lnames = pd.factorize(lid[rows])
    ri, rnames = pd.factorize(rid[rows])
    nl, nr = len(lnames), len(rnames)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (li, nl + ri)), shape=(nl + nr,) * 2)
    _, comp = connected_components(graph, directed=False)
    take = np.zeros(len(s), dtype=bool)
    edge_comp = comp[li]
    per_comp = np.bincount(edge_comp, minlength=comp.max() + 1 if len(comp) else 0)
    single = per_comp[edge_comp] == 1
    take[rows[single]] = True  # a component of one pair: take it
    multi = np.flatnonzero(~single)
    multi = multi[np.argsort(edge_comp[multi], kind="stable")]
    bounds = np.flatnonzero(np.diff(edge_comp[multi])) + 1
    for group in np.split(multi, bounds) if len(multi) else []:
        picked = _max_weight_matching(li[group], ri[group], s[rows[group]] - baseline)
        take[rows[group[picked]]] = True
    return pairs[take]


# -- helpers ----------------------------------------------------------------------------------

_DENSE_CELLS = 1 << 22
"""Components of :func:`one_to_one` whose dense score matrix has more cells than this (32 MiB
of float64) are solved sparse."""


def _max_weight_matching(li: np.ndarray, ri: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Positions of the edges of a maximum-weight bipartite matching.

    Dense: :func:`~scipy.optimize.linear_sum_assignment` on the ``left x right`` weights,
    absent edges 0 (never better than leaving both ends free), assignments to them dropped.
    Sparse, for big components: :func:`~scipy.sparse.csgraph.min_weight_full_bipartite_matching`
    with a private "unmatched" column per left item, every weight raised by the same ``c > 0``
    (LAPJVsp needs non-zero weights); each left item takes exactly one column, so the total
    is ``n_left * c`` plus the weight of the real edges taken, and the optimum is the same.

    Args:
        li: (e,) left item of every edge (any integers).
        ri: (e,) right item of every edge.
        w: (e,) positive edge weights, one edge per ``(left, right)``.

    Returns:
        (t,) positions into the edges.
    """
    gl, lpos = np.unique(li, return_inverse=True)
    gr, rpos = np.unique(ri, return_inverse=True)
    nl, nr = len(gl), len(gr)
    edge_at = {(int(a), int(b)): e for e, (a, b) in enumerate(zip(lpos, rpos, strict=True))}
    if nl * nr <= _DENSE_CELLS:
        weight = np.zeros((nl, nr))
        weight[lpos, rpos] = w
        rs, cs = linear_sum_assignment(weight, maximize=True)
    else:
        c = float(w.max())
        biadjacency = csr_matrix((
            np.concatenate([w + c, np.full(nl, c)]),
            (np.concatenate([lpos, np.arange(nl)]), np.concatenate([rpos, nr + np.arange(nl)])),
        ), shape=(nl, nr + nl))
        rs, cs = min_weight_full_bipartite_matching(biadjacency, maximize=True)
    chosen = [edge_at.get((int(a), int(b)), -1) for a, b in zip(rs, cs, strict=True)]
    return np.array([e for e in chosen if e >= 0], dtype=np.int64)


def _positions(
    pairs: pd.DataFrame, ids: Sequence[Any], left: str, right: str
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(ids as strings, position of each pair's left id, ... right id)``; (m,) int arrays."""
    names = [str(i) for i in ids]
    position = pd.Index(names)
    if not position.is_unique:
        raise ValueError("ids must be unique")
    a = position.get_indexer(pairs[left].astype(str))
    b = position.get_indexer(pairs[right].astype(str))
    if (a < 0).any() or (b < 0).any():
        bad = pairs[left].astype(str)[a < 0].tolist() + pairs[right].astype(str)[b < 0].tolist()
        raise KeyError(f"pairs name ids that are not among the items: {bad[:5]}")
    return names, a, b


def _scores(pairs: pd.DataFrame, score: str) -> np.ndarray:
    """The (m,) float64 score column; KeyError when absent, ValueError when not finite."""
    if score not in pairs.columns:
        raise KeyError(f"pairs have no {score!r} column; columns: {list(pairs.columns)}")
    s = pairs[score].to_numpy(dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError(f"the {score!r} column has NaN or infinite values")
    return s


def _undirected(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique undirected edges ``(lo, hi, score)``, lo < hi, (e,) each; repeats keep the max."""
    keep = a != b
    lo = np.minimum(a, b)[keep].astype(np.int64)
    hi = np.maximum(a, b)[keep].astype(np.int64)
    s = s[keep]
    key = lo * n + hi
    order = np.lexsort((-s, key))
    _, first = np.unique(key[order], return_index=True)
    pick = order[first]
    return lo[pick], hi[pick], s[pick]


def _split_max_size(
    labels: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: np.ndarray, max_size: int
) -> np.ndarray:
    """Split components larger than ``max_size`` by cutting their weakest edges.

    Cutting edges weakest first until a component falls apart removes exactly the weakest
    edge of its maximum spanning tree (for the total order: score, then positions), so the
    pieces are the largest subtrees of the single-linkage dendrogram with ``<= max_size``
    items. Kruskal's merges over the tree, strongest first, build them: a merge that would
    exceed ``max_size`` closes both sides for good.

    Args:
        labels: (n,) component of every item.
        lo: (e,) first item of every edge.
        hi: (e,) second item.
        w: (e,) edge scores.
        max_size: largest piece.

    Returns:
        (n,) labels, a piece of a split component getting a new one.
    """
    n = len(labels)
    sizes = np.bincount(labels, minlength=labels.max() + 1 if n else 0)
    big = sizes[labels] > max_size
    if not big.any():
        return labels
    inside = big[lo]
    elo, ehi, ew = lo[inside], hi[inside], w[inside]
    order = np.lexsort((ehi, elo, -ew))  # strongest first; ties: earlier positions stronger
    strength = np.empty(len(order), dtype=np.float64)
    strength[order] = np.arange(1, len(order) + 1)
    tree = minimum_spanning_tree(coo_matrix((strength, (elo, ehi)), shape=(n, n))).tocoo()
    by_strength = np.argsort(tree.data)
    nodes = np.flatnonzero(big).tolist()
    forest = hierarchy.DisjointSet(nodes)
    closed: set[int] = set()
    for u, v in zip(tree.row[by_strength].tolist(), tree.col[by_strength].tolist(), strict=True):
        ru, rv = forest[u], forest[v]
        if ru in closed or rv in closed or forest.subset_size(u) + forest.subset_size(v) > max_size:
            closed.update((ru, rv))
        else:
            forest.merge(u, v)
    out = labels.astype(np.int64)
    out[nodes] = labels.max() + 1 + np.array([forest[u] for u in nodes], dtype=np.int64)
    return out


def _average_linkage(
    labels: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: np.ndarray, min_average: float,
    missing: float,
) -> np.ndarray:
    """Average-linkage clustering inside every group of ``labels``.

    Args:
        labels: (n,) group of every item (components, or pieces of them).
        lo: (e,) first item of every edge.
        hi: (e,) second item.
        w: (e,) edge scores; only edges inside a group count.
        min_average: smallest mean similarity of a merge.
        missing: similarity of two items without an edge.

    Returns:
        (n,) labels, the groups that split getting new ones.
    """
    n = len(labels)
    out = labels.astype(np.int64)
    if n == 0:
        return out
    inside = labels[lo] == labels[hi]
    lo, hi, w = lo[inside], hi[inside], w[inside]
    by_group = np.argsort(labels, kind="stable")
    node_bounds = np.flatnonzero(np.diff(labels[by_group])) + 1
    edge_order = np.argsort(labels[lo], kind="stable")
    edge_groups = labels[lo][edge_order]
    next_label = int(labels.max()) + 1
    for members in np.split(by_group, node_bounds):
        if len(members) < 2:
            continue
        g = labels[members[0]]
        edges = edge_order[np.searchsorted(edge_groups, g):np.searchsorted(edge_groups, g, "right")]
        i = np.searchsorted(members, lo[edges])  # members are sorted (stable argsort)
        j = np.searchsorted(members, hi[edges])
        sim = np.full((len(members), len(members)), missing)
        sim[i, j] = sim[j, i] = w[edges]
        top = max(float(sim.max()), min_average)
        dist = top - sim
        np.fill_diagonal(dist, 0.0)
        tree = hierarchy.linkage(squareform(dist, checks=False), method="average")
        cut = top - min_average + 1e-12 * max(1.0, abs(top), abs(min_average))
        sub = hierarchy.fcluster(tree, t=cut, criterion="distance")
        out[members] = next_label + sub - 1
        next_label += int(sub.max())
    return out


def _frame(names: list[str], labels: np.ndarray) -> pd.DataFrame:
    """``item_id, cluster_id`` with clusters renumbered 0.. by their first member."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    renumber = np.empty_like(order)
    renumber[order] = np.arange(len(order))
    return pd.DataFrame({"item_id": names, "cluster_id": renumber[inverse].astype(np.int64)})
