import pandas as pd
import pytest

from mmmatch.cluster import cluster_pairs


def test_hand_computed_clusters():
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    pairs = pd.DataFrame({"query_id": ["c", "f", "b", "g"], "cand_id": ["b", "e", "a", "g"]})
    out = cluster_pairs(pairs, ids)
    assert out["item_id"].tolist() == ids
    # {a, b, c} first (0), d alone (1), {e, f} (2), g with itself (3)
    assert out["cluster_id"].tolist() == [0, 0, 0, 1, 2, 2, 3]
    assert out["cluster_id"].dtype == "int64"


def test_chains_and_custom_columns():
    ids = [5, 4, 3, 2, 1]
    pairs = pd.DataFrame({"l": [1, 3, 4], "r": [2, 2, 5]})
    out = cluster_pairs(pairs, ids, left="l", right="r")
    assert out["item_id"].tolist() == ["5", "4", "3", "2", "1"]
    assert out["cluster_id"].tolist() == [0, 0, 1, 1, 1]


def test_no_pairs_every_item_alone():
    out = cluster_pairs(pd.DataFrame({"query_id": [], "cand_id": []}), ["x", "y", "z"])
    assert out["cluster_id"].tolist() == [0, 1, 2]


def test_errors():
    with pytest.raises(KeyError, match="zz"):
        cluster_pairs(pd.DataFrame({"query_id": ["a"], "cand_id": ["zz"]}), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        cluster_pairs(pd.DataFrame({"query_id": [], "cand_id": []}), ["a", "a"])
