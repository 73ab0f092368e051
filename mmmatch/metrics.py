"""Evaluation metrics: pair precision / recall / F1 and candidate recall@k."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["best_f1_threshold", "pair_scores", "recall_at_k"]


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


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold maximising F1 of ``scores >= threshold`` against binary labels.

    Args:
        scores: (n,) scores, higher means "match".
        labels: (n,) 0/1 labels.

    Returns:
        ``(threshold, f1)``; the threshold is midway between the chosen score and the next
        lower one, so it generalises instead of sitting on a training example.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    positives = max(int(y.sum()), 1)
    f1 = 2 * tp / (tp + fp + positives)
    # only cut between distinct scores
    last = np.r_[s[1:] != s[:-1], True]
    f1 = np.where(last, f1, -1)
    best = int(np.argmax(f1))
    threshold = (s[best] + s[best + 1]) / 2 if best + 1 < len(s) else s[best] - 1e-6
    return float(threshold), float(f1[best])


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
