import numpy as np
import pytest

from mmmatch.hubness import dense_neighbourhood, sparse_neighbourhood
from mmmatch.lexical import LexicalModel


def _unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _mean_top(sims, k, drop_first=False):
    top = -np.sort(-sims, axis=1)
    top = top[:, 1:k + 1] if drop_first else top[:, :k]
    return top.mean(axis=1)


def test_dense_neighbourhood_matches_numpy():
    q, items = _unit(9, 6, 0), _unit(20, 6, 1) * 3.0  # unnormalised items are normalised
    q_ok = np.ones(9, bool)
    q_ok[4] = False
    items_ok = np.ones(20, bool)
    items_ok[[0, 7]] = False
    out = dense_neighbourhood(q, q_ok, items, items_ok, k=5)
    assert out.dtype == np.float32 and out.shape == (9,)
    base = items[items_ok] / 3.0
    ref = _mean_top(q @ base.T, 5)
    assert np.isnan(out[4])
    np.testing.assert_allclose(out[q_ok], ref[q_ok], atol=1e-5)


def test_dense_neighbourhood_same_catalogue_drops_self():
    x = _unit(12, 5, 2)
    ok = np.ones(12, bool)
    out = dense_neighbourhood(x, ok, x, ok, k=3, same=True)
    np.testing.assert_allclose(out, _mean_top(x @ x.T, 3, drop_first=True), atol=1e-5)


def test_dense_neighbourhood_small_and_empty():
    q, items = _unit(3, 4, 3), _unit(2, 4, 4)
    out = dense_neighbourhood(q, np.ones(3, bool), items, np.ones(2, bool), k=10)
    np.testing.assert_allclose(out, (q @ items.T).mean(axis=1), atol=1e-5)  # k > items
    none = dense_neighbourhood(q, np.ones(3, bool), items, np.zeros(2, bool), k=10)
    assert np.isnan(none).all()


def test_sparse_neighbourhood_matches_numpy():
    texts = ["oat milk 1 l", "oat drink 1 l", "green tea", "earl grey tea", "sony turntable",
             "sony pslx350h", "", "oat milk vanilla"]
    lex = LexicalModel(min_df=1).fit(texts)
    x = lex.transform(texts)
    out = sparse_neighbourhood(x, x, k=3, same=True)
    dense = x.toarray() @ x.toarray().T
    ref = _mean_top(dense, 3, drop_first=True)
    assert np.isnan(out[6])  # empty text
    keep = np.arange(len(texts)) != 6
    np.testing.assert_allclose(out[keep], ref[keep], atol=1e-5)
    other = sparse_neighbourhood(x[:3], x[3:], k=2)
    np.testing.assert_allclose(other, _mean_top(dense[:3, 3:], 2), atol=1e-5)


@pytest.mark.parametrize("same", [False, True])
def test_sparse_neighbourhood_empty_inputs(same):
    x = LexicalModel(min_df=1).fit(["a b c"]).transform(["a b c"])
    assert sparse_neighbourhood(x[:0], x, k=3, same=same).shape == (0,)
    assert np.isnan(sparse_neighbourhood(x, x[:0], k=3, same=same)).all()
