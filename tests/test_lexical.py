import numpy as np
import pytest

from mmmatch.exceptions import NotFittedError
from mmmatch.lexical import LexicalModel, fit_lexical_signals, normalize_text

TEXTS = [
    "Sony turntable PS-LX350H", "sony pslx350h record player", "Sony NNSD797S microwave",
    "Sony NNSD767S microwave", "Oat milk 1L", "oatly oat drink 1 l", "Green tea 20 bags",
    "Earl Grey tea 50 bags", "", "USB-C cable 2m",
]


@pytest.fixture
def model():
    # min_df=1: every n-gram kept, so the dense reference below sees the same vocabulary
    return LexicalModel(min_df=1).fit(TEXTS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PS-LX350H", "pslx350h"),
        ("Sony PS-LX350H (black)", "sony pslx350h black"),
        ("AB/12  x\tY", "ab12 x y"),
        ("  Oat   MILK  ", "oat milk"),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_transform_rows_are_unit_or_zero(model):
    x = model.transform(TEXTS)
    assert x.shape[0] == len(TEXTS) and x.dtype == np.float32
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms[[0, 1, 2, 9]], 1, atol=1e-5)
    assert norms[8] == 0  # empty text


def test_codes_split_by_dashes_match(model):
    x = model.transform(["PS-LX350H", "pslx350h"])
    assert (x[0] @ x[1].T).toarray()[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_search_matches_dense_numpy(model):
    items = model.transform(TEXTS)
    queries = model.transform(["sony nnsd797s", "oat drink", "tea bags", "cable usb c"])
    scores, pos = LexicalModel.search(queries, items, k=4, chunk_size=3)
    dense = queries.toarray() @ items.toarray().T
    ref_order = np.argsort(-dense, axis=1, kind="stable")[:, :4]
    ref_scores = np.take_along_axis(dense, ref_order, axis=1)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # positions agree wherever the scores are not tied
    for r in range(len(pos)):
        for c in range(4):
            if np.sum(np.isclose(dense[r], ref_scores[r, c], atol=1e-6)) == 1:
                assert pos[r, c] == ref_order[r, c]
    np.testing.assert_allclose(np.take_along_axis(dense, pos, axis=1), scores, atol=1e-5)
    assert pos[0, 0] == 2  # the model number wins over its near-miss
    assert scores.dtype == np.float32 and pos.dtype == np.int64


def test_search_pads_when_k_exceeds_items(model):
    items = model.transform(TEXTS[:3])
    scores, pos = LexicalModel.search(model.transform(["sony"]), items, k=5)
    assert pos.shape == (1, 5)
    assert sorted(pos[0, :3].tolist()) == [0, 1, 2]
    assert pos[0, 3:].tolist() == [-1, -1]
    assert np.all(np.isneginf(scores[0, 3:]))
    _, p = LexicalModel.search(model.transform(["sony"]), items[:0], k=2)
    assert p.tolist() == [[-1, -1]]


def test_pair_similarity_matches_dense(model):
    left, right = model.transform(TEXTS[:5]), model.transform(TEXTS[5:])
    li, ri = np.array([0, 1, 4, 4]), np.array([0, 1, 0, 4])
    got = LexicalModel.pair_similarity(left, right, li, ri)
    dense = left.toarray() @ right.toarray().T
    np.testing.assert_allclose(got, dense[li, ri], atol=1e-6)
    assert got.dtype == np.float32
    assert LexicalModel.pair_similarity(left, right, np.array([], int), np.array([], int)).size == 0


def test_pair_similarity_of_an_empty_text_is_missing(model):
    left, right = model.transform(["", TEXTS[0]]), model.transform([TEXTS[0]])
    got = LexicalModel.pair_similarity(left, right, np.array([0, 1]), np.array([0, 0]))
    assert np.isnan(got[0]) and got[1] == pytest.approx(1.0, abs=1e-6)


def test_near_miss_model_numbers_are_apart(model):  # (min_df=1)
    x = model.transform(["Sony NNSD797S microwave", "Sony NNSD797S", "Sony NNSD767S"])
    sims = (x @ x.T).toarray()
    assert sims[0, 1] > sims[0, 2]


def test_default_min_df_drops_ngrams_seen_once_and_survives_tiny_corpora():
    lex = LexicalModel().fit(["sony nnsd797s", "sony nnsd767s", "sony nnsd797s oven"])
    vocab = set(lex.vectorizer_.vocabulary_)
    assert any("sony" in v for v in vocab)  # in every text
    assert not any("767" in v for v in vocab)  # in one text only
    assert any("797" in v for v in vocab)
    one = LexicalModel().fit(["only one text"])  # nothing reaches min_df: all kept
    assert one.transform(["only one text"]).nnz > 0
    empty = LexicalModel().fit(["", ""])  # no n-gram at all
    assert empty.transform(["", "abc"]).shape[0] == 2


def test_fit_lexical_signals():
    models = fit_lexical_signals(TEXTS)
    assert list(models) == ["lexical", "word"]
    assert models["lexical"].analyzer == "char_wb"
    assert models["word"].analyzer == "word" and tuple(models["word"].ngram_range) == (1, 2)
    assert list(fit_lexical_signals(TEXTS, word=False)) == ["lexical"]
    x = models["word"].transform(["green tea bags", "earl grey tea"])
    assert (x @ x.T).toarray()[0, 1] > 0  # share the word "tea"


def test_not_fitted():
    with pytest.raises(NotFittedError):
        LexicalModel().transform(["x"])


def test_params_and_determinism():
    lex = LexicalModel(ngram_range=(2, 4), analyzer="char", min_df=1)
    assert lex.get_params() == {"ngram_range": [2, 4], "analyzer": "char",
                                "sublinear_tf": True, "min_df": 1, "max_features": None}
    a = lex.fit(TEXTS).transform(TEXTS).toarray()
    b = LexicalModel(**lex.get_params()).fit(TEXTS).transform(TEXTS).toarray()
    np.testing.assert_array_equal(a, b)


def test_search_with_a_kept_transpose_matches_the_plain_search():
    from mmmatch.lexical import LexicalModel

    texts = [f"item {i} {w}" for i, w in enumerate(["oat milk", "soy milk", "green tea",
                                                    "red tea", "oat drink"] * 6)]
    model = LexicalModel().fit(texts)
    items = model.transform(texts)
    queries = model.transform(["oat milk 1l", "tea", "drink oat"])
    plain = LexicalModel.search(queries, items, 4)
    kept = LexicalModel.search(queries, items, 4, items_t=items.T.tocsr())
    np.testing.assert_allclose(kept[0], plain[0], rtol=1e-6)
    np.testing.assert_array_equal(kept[1], plain[1])


def test_search_split_across_threads_matches_one_thread():
    rng = np.random.default_rng(0)
    words = ["oat", "milk", "soy", "rice", "green", "tea", "apple", "juice", "1l", "500ml"]
    items = [" ".join(rng.choice(words, size=4)) for _ in range(300)]
    queries = [" ".join(rng.choice(words, size=3)) for _ in range(17)]
    model = LexicalModel().fit(items)
    q, x = model.transform(queries), model.transform(items)
    one = LexicalModel.search(q, x, 5, n_threads=1)
    for threads in (2, 3, 40):  # more threads than queries: one query each
        many = LexicalModel.search(q, x, 5, n_threads=threads, chunk_size=7)
        np.testing.assert_array_equal(many[1], one[1])
        np.testing.assert_array_equal(many[0], one[0])
