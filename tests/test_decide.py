import pandas as pd
import pytest

from mmmatch.decide import apply_threshold


def test_apply_threshold_cosine_and_l2():
    pairs = pd.DataFrame({"score": [0.2, 0.5, 0.9], "dist": [3.0, 1.0, 0.5]})
    out = apply_threshold(pairs, 0.5)
    assert out["is_match"].tolist() == [False, True, True]
    assert "is_match" not in pairs.columns  # a copy
    out = apply_threshold(pairs, 1.0, metric="l2", score_column="dist")
    assert out["is_match"].tolist() == [False, True, True]


def test_nan_scores_never_match():
    out = apply_threshold(pd.DataFrame({"score": [float("nan"), 0.7]}), 0.5)
    assert out["is_match"].tolist() == [False, True]


def test_missing_score_column():
    with pytest.raises(KeyError, match="similarity"):
        apply_threshold(pd.DataFrame({"score": [1.0]}), 0.5, score_column="similarity")
