import numpy as np
import pandas as pd
import pytest

from mmmatch.index import EmbeddingIndex
from mmmatch.retrieve import (
    CANDIDATE_COLUMNS,
    candidates_from_search,
    rank_candidates,
    retrieve_candidates,
)


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(queries, qids, items, iids, k, keep=lambda qi, cj: True):
    """Reference: every (query, item) cosine, filtered, best k per query."""
    sims = queries @ items.T
    rows = []
    for qi in range(len(queries)):
        order = np.argsort(-sims[qi], kind="stable")
        kept = [j for j in order if keep(qi, j)][:k]
        rows += [(qids[qi], iids[j], sims[qi, j], r + 1) for r, j in enumerate(kept)]
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


def _check(got, ref):
    assert list(got.columns) == CANDIDATE_COLUMNS
    assert got[["query_id", "cand_id", "rank"]].values.tolist() == \
        ref[["query_id", "cand_id", "rank"]].values.tolist()
    np.testing.assert_allclose(got["score"].to_numpy(), ref["score"].to_numpy(), atol=1e-5)


@pytest.fixture
def items():
    x = _unit(50, 6, 0)
    ids = [f"i{j}" for j in range(50)]
    index = EmbeddingIndex(6, "cosine")
    index.add(x, ids)
    return index, x, ids


def test_candidates_from_search_drops_padding():
    scores = np.array([[0.9, 0.5, -np.inf], [0.8, -np.inf, -np.inf]], np.float32)
    ids = np.array([["a", "b", None], ["c", None, None]], dtype=object)
    out = candidates_from_search(["q1", "q2"], scores, ids)
    assert out.values.tolist() == [["q1", "a", pytest.approx(0.9), 1],
                                   ["q1", "b", pytest.approx(0.5), 2],
                                   ["q2", "c", pytest.approx(0.8), 1]]
    assert out["score"].dtype == np.float32


def test_rank_candidates():
    df = pd.DataFrame({"query_id": ["b", "a", "a", "b", "a"], "cand_id": list("vwxyz"),
                       "score": [0.1, 0.5, 0.9, 0.7, 0.7]})
    out = rank_candidates(df, "cosine")
    assert out[["query_id", "cand_id", "rank"]].values.tolist() == [
        ["a", "x", 1], ["a", "z", 2], ["a", "w", 3], ["b", "y", 1], ["b", "v", 2]]
    out = rank_candidates(df, "l2", k=1)
    assert out[["query_id", "cand_id"]].values.tolist() == [["a", "w"], ["b", "v"]]


def test_plain_retrieval_matches_brute_force(items):
    index, x, ids = items
    q = _unit(9, 6, 1)
    qids = [f"q{i}" for i in range(9)]
    got = retrieve_candidates(index, q, qids, k=4, chunk_size=4)
    _check(got, _brute(q, qids, x, ids, 4))


def test_exclude_self_matches_brute_force(items):
    index, x, ids = items
    got = retrieve_candidates(index, x, ids, k=5, exclude_self=True, chunk_size=16)
    ref = _brute(x, ids, x, ids, 5, keep=lambda qi, j: qi != j)
    _check(got, ref)
    assert not (got["query_id"] == got["cand_id"]).any()
    assert (got.groupby("query_id").size() == 5).all()


def test_cross_source_matches_brute_force(items):
    index, x, ids = items
    # four shops, unevenly sized, so many near neighbours are from the query's own shop
    shops = np.array(["A"] * 30 + ["B"] * 12 + ["C"] * 6 + ["D"] * 2, dtype=object)
    cand_sources = dict(zip(ids, shops, strict=True))
    got = retrieve_candidates(index, x, ids, k=6, exclude_self=True, query_sources=shops,
                              cand_sources=cand_sources, chunk_size=7)
    ref = _brute(x, ids, x, ids, 6, keep=lambda qi, j: shops[qi] != shops[j])
    _check(got, ref)
    assert (got.groupby("query_id").size() == 6).all()
    q_shop = got["query_id"].map(cand_sources)
    c_shop = got["cand_id"].map(cand_sources)
    assert (q_shop != c_shop).all()


def test_cross_source_when_few_other_source_items_exist(items):
    index, x, ids = items
    shops = np.array(["A"] * 48 + ["B"] * 2, dtype=object)
    cand_sources = dict(zip(ids, shops, strict=True))
    got = retrieve_candidates(index, x[:3], ids[:3], k=5, query_sources=shops[:3],
                              cand_sources=cand_sources)
    # only two items come from another shop: the search widens to the whole index
    assert got.groupby("query_id").size().tolist() == [2, 2, 2]
    assert set(got["cand_id"]) == {"i48", "i49"}


def test_k_larger_than_index(items):
    index, x, _ = items
    got = retrieve_candidates(index, x[:2], ["a", "b"], k=80)
    assert got.groupby("query_id").size().tolist() == [50, 50]
    assert got["rank"].max() == 50


def test_retrieve_errors_and_empty_results():
    index = EmbeddingIndex(3)
    with pytest.raises(ValueError, match="2 query vectors but 1 ids"):
        retrieve_candidates(index, np.ones((2, 3)), ["a"])
    with pytest.raises(ValueError, match="query_sources"):
        retrieve_candidates(index, np.ones((2, 3)), ["a", "b"], query_sources=["x"],
                            cand_sources={})
    out = retrieve_candidates(index, np.ones((2, 3), np.float32), ["a", "b"], k=3)
    assert out.empty and list(out.columns) == CANDIDATE_COLUMNS
    out = retrieve_candidates(index, np.ones((0, 3), np.float32), [], k=3)
    assert out.empty and list(out.columns) == CANDIDATE_COLUMNS


def test_l2_index_ranks_by_distance():
    x = np.array([[0, 0], [1, 0], [3, 0], [10, 0]], np.float32)
    index = EmbeddingIndex(2, "l2")
    index.add(x, list("abcd"))
    got = retrieve_candidates(index, np.array([[2.9, 0]], np.float32), ["q"], k=3)
    assert got["cand_id"].tolist() == ["c", "b", "a"]
    assert got["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(got["score"], [0.01, 3.61, 8.41], rtol=1e-4)
