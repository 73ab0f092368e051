"""Evaluation metrics.

* Pairs: precision / recall / F1 of predicted pairs (:func:`pair_scores`) or of thresholded
  scores (:func:`pair_scores_at`), the F1-optimal threshold (:func:`best_f1_threshold`).
* Candidates: recall@k of ranked candidate pairs (:func:`recall_at_k`).
* Labelled embeddings (metric-learning style): the labels of each query's nearest references
  (:func:`neighbour_labels`), then :func:`precision_at_k`, :func:`recall_at_k_labels` and
  :func:`map_at_r`.
* Groups: the Shopee competition per-item F1 of a predicted grouping (:func:`group_f1`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "best_f1_threshold",
    "cut_below",
    "group_f1",
    "map_at_r",
    "neighbour_labels",
    "pair_scores",
    "pair_scores_at",
    "pr_curve",
    "precision_at_k",
    "recall_at_k",
    "recall_at_k_labels",
]


def pair_scores(predicted: Iterable[tuple[Any, Any]], truth: Iterable[tuple[Any, Any]]
                ) -> dict[str, float]:
    """Precision, recall and F1 of a set of predicted pairs against the true pairs.

    Returns:
        ``{"precision", "recall", "f1", "tp", "fp", "fn"}``; an empty prediction has
        precision 0.
    """
    pred, true = set(predicted), set(truth)
    tp = len(pred & true)
    precision = tp / len(pred) if pred else 0.0
    recall = tp / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "tp": tp, "fp": len(pred) - tp, "fn": len(true) - tp}


def pr_curve(scores: np.ndarray, labels: np.ndarray, positives: int | None = None
             ) -> pd.DataFrame:
    """Precision and recall of the decision ``score >= t`` at every distinct score ``t``.

    Args:
        scores: (n,) finite pair scores, higher means "match".
        labels: (n,) 0/1 (or bool) true labels.
        positives: the number of true pairs recall is measured against (default: the positive
            labels); true pairs that were never scored count as missed.

    Returns:
        DataFrame ``threshold, precision, recall, f1, tp, fp`` with one row per distinct
        score, by ascending threshold; empty for no scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be (n,)")
    total = int(y.sum()) if positives is None else int(positives)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # the decision "score >= s" at every distinct score: the last of each run of ties
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True] if len(s) else np.zeros(0, bool)
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / total if total else np.zeros(len(tp))
    f1 = 2 * tp / np.maximum(tp + fp + total, 1)
    return pd.DataFrame({
        "threshold": s_sorted[last][::-1], "precision": precision[::-1],
        "recall": recall[::-1], "f1": f1[::-1], "tp": tp[::-1], "fp": fp[::-1],
    })


def cut_below(thresholds: np.ndarray, i: int) -> float:
    """A decision threshold that keeps the ``i``-th of the distinct ``thresholds``
    (descending) and drops the next: midway to it, so it generalises instead of sitting on
    a training example (just below the lowest one)."""
    return float((thresholds[i] + thresholds[i + 1]) / 2 if i + 1 < len(thresholds)
                 else thresholds[i] - 1e-6)


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray, positives: int | None = None
                      ) -> tuple[float, float]:
    """The threshold maximising F1 of ``scores >= threshold`` against binary labels.

    Args:
        scores: (n,) scores, higher means "match".
        labels: (n,) 0/1 labels.
        positives: the number of true pairs there are, when some were never scored (for
            example true pairs retrieval missed); default ``labels.sum()``.

    Returns:
        ``(threshold, f1)``; the threshold is midway between the chosen score and the next
        lower one (:func:`cut_below`); among equal F1 the highest threshold wins.
    """
    labels = np.asarray(labels).astype(bool)
    total = max(int(labels.sum()) if positives is None else int(positives), 1)
    curve = pr_curve(scores, labels, total).iloc[::-1]  # highest threshold first
    best = int(np.argmax(curve["f1"].to_numpy()))
    return cut_below(curve["threshold"].to_numpy(), best), float(curve["f1"].iloc[best])


def recall_at_k(candidates: pd.DataFrame, truth: pd.DataFrame, ks: Iterable[int]
                ) -> dict[int, float]:
    """Fraction of true pairs whose right item is among the left item's top-k candidates.

    Args:
        candidates: ``left_id, right_id, rank`` (rank 1 = best).
        truth: ``left_id, right_id`` true pairs.
        ks: cut-offs.
    """
    merged = truth.merge(candidates[["left_id", "right_id", "rank"]],
                         on=["left_id", "right_id"], how="left")
    ranks = merged["rank"].to_numpy(dtype=np.float64)
    return {k: float(np.mean(np.nan_to_num(ranks, nan=np.inf) <= k)) for k in ks}


def pair_scores_at(scores: np.ndarray, labels: np.ndarray, threshold: float
                   ) -> dict[str, float]:
    """Precision, recall and F1 of the decision ``scores >= threshold`` against 0/1 labels.

    Args:
        scores: (n,) pair scores, higher means "match".
        labels: (n,) 0/1 (or bool) true labels of the same pairs.
        threshold: pairs scoring at least this are predicted matches.

    Returns:
        ``{"precision", "recall", "f1", "tp", "fp", "fn"}`` as :func:`pair_scores`; no
        predicted match gives precision 0, no true match recall 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal (n,)")
    pred = scores >= threshold
    tp = int(np.sum(pred & labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


# -- labelled embeddings ----------------------------------------------------------------------


def neighbour_labels(
    queries: np.ndarray,
    references: np.ndarray,
    query_labels: np.ndarray | None,
    reference_labels: np.ndarray,
    k: int,
    metric: Literal["cosine", "ip", "l2"] = "cosine",
    exclude_self: bool = False,
) -> np.ndarray:
    """Labels of each query's ``k`` nearest references, nearest first (exact FAISS search).

    Args:
        queries: (n, d) query embeddings.
        references: (m, d) reference embeddings.
        query_labels: (n,) labels of the queries; only checked for length (they are what the
            result is compared with, by :func:`precision_at_k` and friends). ``None`` skips
            the check.
        reference_labels: (m,) labels of the references.
        k: neighbours per query; at most ``m`` (``m - 1`` with ``exclude_self``).
        metric: ``"cosine"`` (rows L2-normalised, then inner product), ``"ip"`` (raw inner
            product) or ``"l2"`` (Euclidean distance).
        exclude_self: the queries are the references (same rows, ``n == m``): drop query
            ``i``'s own row ``i`` from its neighbours. Other rows with identical vectors
            are kept.

    Returns:
        (n, k) array of reference labels (the dtype of ``reference_labels``).

    Raises:
        ValueError: shapes disagree, ``k`` is out of range or ``metric`` is unknown.
    """
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    r = np.ascontiguousarray(references, dtype=np.float32)
    ref_labels = np.asarray(reference_labels)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"queries {q.shape} and references {r.shape} must be (n, d), (m, d)")
    if len(ref_labels) != len(r):
        raise ValueError(f"{len(ref_labels)} reference labels for {len(r)} references")
    if query_labels is not None and len(query_labels) != len(q):
        raise ValueError(f"{len(query_labels)} query labels for {len(q)} queries")
    if exclude_self and len(q) != len(r):
        raise ValueError("exclude_self needs the queries to be the references (n == m)")
    available = len(r) - int(exclude_self)
    k = int(k)
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}], got {k}")
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
        index = faiss.IndexFlatIP(r.shape[1])
    elif metric == "ip":
        index = faiss.IndexFlatIP(r.shape[1])
    elif metric == "l2":
        index = faiss.IndexFlatL2(r.shape[1])
    else:
        raise ValueError(f"metric must be 'cosine', 'ip' or 'l2', got {metric!r}")
    index.add(np.ascontiguousarray(r, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(q, dtype=np.float32), k + int(exclude_self))
    if exclude_self:
        own = idx == np.arange(len(q))[:, None]
        # drop the own row where found, else the last (the own row tied further down)
        own[~own.any(axis=1), -1] = True
        idx = idx[~own].reshape(len(q), k)
    return ref_labels[idx]


def _ranked(query_labels: np.ndarray, ranked_labels: np.ndarray, k: int | None = None
            ) -> np.ndarray:
    """(n, k) bool: ranked label equals the query's label."""
    q = np.asarray(query_labels)
    ranked = np.asarray(ranked_labels)
    if ranked.ndim != 2 or len(ranked) != len(q):
        raise ValueError(f"ranked_labels {ranked.shape} must be (n, k) with n = {len(q)}")
    if k is not None:
        if not 1 <= k <= ranked.shape[1]:
            raise ValueError(f"k must be in [1, {ranked.shape[1]}], got {k}")
        ranked = ranked[:, :k]
    return ranked == q[:, None]


def precision_at_k(query_labels: np.ndarray, ranked_labels: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the top ``k`` results that carry the query's label.

    Args:
        query_labels: (n,) labels.
        ranked_labels: (n, >= k) labels of each query's results, best first (e.g. from
            :func:`neighbour_labels`).
        k: cut-off.
    """
    return float(_ranked(query_labels, ranked_labels, k).mean()) if len(query_labels) else 0.0


def recall_at_k_labels(query_labels: np.ndarray, ranked_labels: np.ndarray, k: int) -> float:
    """Fraction of queries with at least one result carrying their label in the top ``k``.

    The metric-learning "Recall@k" (a hit rate). For candidate pairs see :func:`recall_at_k`.

    Args:
        query_labels: (n,) labels.
        ranked_labels: (n, >= k) labels of each query's results, best first.
        k: cut-off.
    """
    if not len(query_labels):
        return 0.0
    return float(_ranked(query_labels, ranked_labels, k).any(axis=1).mean())


def map_at_r(
    query_labels: np.ndarray,
    ranked_labels: np.ndarray,
    reference_counts: Mapping[Any, int] | np.ndarray,
    exclude_self: bool = False,
) -> float:
    """MAP@R of Musgrave, Belongie & Lim, "A Metric Learning Reality Check" (ECCV 2020).

    For a query with ``R`` relevant references (references carrying its label),

        ``MAP@R = (1 / R) * sum_{i=1..R} P(i) * rel(i)``

    where ``rel(i)`` is 1 when the ``i``-th result is relevant and ``P(i)`` is the precision
    of the top ``i``. It is R-precision that also rewards putting the relevant results first.
    Queries with ``R = 0`` have no defined score and are left out of the mean.

    Args:
        query_labels: (n,) labels.
        ranked_labels: (n, c) labels of each query's results, best first; ``c`` must be at
            least the largest ``R`` (ask :func:`neighbour_labels` for ``k = max R``).
        reference_counts: how many references carry each label: a mapping label -> count
            (e.g. ``pd.Series(reference_labels).value_counts()``), or (n,) counts per query.
        exclude_self: the queries are among the references (and were dropped from their own
            results): ``R`` is the count minus one.

    Returns:
        Mean MAP@R over the queries with ``R >= 1``; ``nan`` when there are none.

    Raises:
        ValueError: ``ranked_labels`` has fewer columns than the largest ``R``.
    """
    q = np.asarray(query_labels)
    if isinstance(reference_counts, Mapping | pd.Series):
        counts = pd.Series(reference_counts)
        r = counts.reindex(pd.Index(q)).fillna(0).to_numpy(dtype=np.int64)
    else:
        r = np.asarray(reference_counts, dtype=np.int64)
        if r.shape != q.shape:
            raise ValueError(f"reference_counts {r.shape} must be (n,) with n = {len(q)}")
    r = r - int(exclude_self)
    keep = r >= 1
    if not keep.any():
        return float("nan")
    rel = _ranked(q, ranked_labels)[keep]
    r = r[keep]
    if r.max() > rel.shape[1]:
        raise ValueError(f"ranked_labels has {rel.shape[1]} columns, MAP@R needs R = {r.max()}")
    width = int(r.max())
    rel = rel[:, :width]
    positions = np.arange(1, width + 1)
    precision = np.cumsum(rel, axis=1) / positions
    within_r = positions[None, :] <= r[:, None]
    per_query = (precision * rel * within_r).sum(axis=1) / r
    return float(per_query.mean())


# -- groups -----------------------------------------------------------------------------------


def group_f1(true_groups: Mapping[Any, Any] | pd.Series,
             predicted_groups: Mapping[Any, Any] | pd.Series) -> float:
    """The Shopee "Price Match Guarantee" per-item F1 of a predicted grouping.

    For every item, F1 between the set of items in its predicted group and the set in its
    true group (both include the item itself): ``2 |T ∩ P| / (|T| + |P|)``; the score is the
    mean over items. An item alone in both groupings scores 1.

    Args:
        true_groups: item -> true group id (a dict or a Series indexed by item).
        predicted_groups: item -> predicted group id, over the same items.

    Raises:
        ValueError: the two cover different items, an item appears twice, or a group id is
            missing (NaN / None).
    """
    true = pd.Series(true_groups) if not isinstance(true_groups, pd.Series) else true_groups
    pred = (pd.Series(predicted_groups) if not isinstance(predicted_groups, pd.Series)
            else predicted_groups)
    for name, s in (("true_groups", true), ("predicted_groups", pred)):
        if s.index.has_duplicates:
            raise ValueError(f"{name} lists an item twice: {s.index[s.index.duplicated()][:5]}")
        if s.isna().any():
            raise ValueError(f"{name} has no group for items {list(s.index[s.isna()][:5])}")
    if len(true) == 0 and len(pred) == 0:
        return 0.0
    missing = true.index.difference(pred.index)
    extra = pred.index.difference(true.index)
    if len(missing) or len(extra):
        raise ValueError(f"the groupings cover different items: missing from predicted "
                         f"{list(missing[:5])}, not in true {list(extra[:5])}")
    frame = pd.DataFrame({"t": true, "p": pred.reindex(true.index), "one": 1})
    t_size = frame.groupby("t")["one"].transform("size")
    p_size = frame.groupby("p")["one"].transform("size")
    both = frame.groupby(["t", "p"])["one"].transform("size")
    return float((2 * both / (t_size + p_size)).mean())
