"""The decide stage: a threshold turns scored candidate pairs into matches."""

from __future__ import annotations

import pandas as pd

from mmmatch.similarity import Metric

__all__ = ["apply_threshold"]


def apply_threshold(
    pairs: pd.DataFrame,
    threshold: float,
    metric: str | Metric = "cosine",
    score_column: str = "score",
) -> pd.DataFrame:
    """Mark the pairs whose score is at least as close as ``threshold``.

    Args:
        pairs: a table with a score column.
        threshold: the decision threshold.
        metric: which direction of the score is closer.
        score_column: the column compared with the threshold.

    Returns:
        A copy with a boolean ``is_match`` column.
    """
    if score_column not in pairs.columns:
        raise KeyError(f"pairs have no {score_column!r} column; columns: {list(pairs.columns)}")
    out = pairs.copy()
    out["is_match"] = Metric.parse(metric).passes(out[score_column].to_numpy(), threshold)
    return out
