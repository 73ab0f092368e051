import numpy as np
import pandas as pd
import pytest

from mmmatch.exceptions import NotFittedError
from mmmatch.rerank import CrossEncoderScorer, PairReranker

WORDS = ["oat", "milk", "drink", "tea", "green", "sony", "turntable", "red", "blue", "juice",
         "orange", "500", "ml"]


@pytest.fixture(scope="module")
def tiny_bert(hf_st_dir):
    return str(hf_st_dir.parent / "tiny-bert")


def _toy_pairs(n=48, seed=0):
    """Matches share their words (reordered); non-matches share none."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = list(rng.choice(WORDS, size=3, replace=False))
        if i % 2 == 0:
            other = list(rng.permutation(words))
            label = 1
        else:
            rest = [w for w in WORDS if w not in words]
            other = list(rng.choice(rest, size=3, replace=False))
            label = 0
        rows.append({"left_id": f"a{i}", "right_id": f"b{i}", "left_text": " ".join(words),
                     "right_text": " ".join(other), "label": label,
                     "score": 0.8 if label else 0.2 + 0.3 * rng.random()})
    return pd.DataFrame(rows)


def test_cross_encoder_learns_and_round_trips(tiny_bert, tmp_path):
    pairs = _toy_pairs()
    ce = CrossEncoderScorer(tiny_bert, max_length=16, epochs=30, batch_size=16, lr=3e-3,
                            show_progress=False)
    with pytest.raises(NotFittedError):
        ce.predict(["a"], ["b"])
    ce.fit(pairs["left_text"], pairs["right_text"], pairs["label"])
    s = ce.predict(pairs["left_text"].tolist(), pairs["right_text"].tolist())
    assert s.shape == (len(pairs),) and s.dtype == np.float32
    pos, neg = s[pairs["label"] == 1], s[pairs["label"] == 0]
    assert pos.mean() > neg.mean() + 1.0  # it learned word overlap, in both orders
    # symmetric by construction
    swapped = ce.predict(pairs["right_text"].tolist(), pairs["left_text"].tolist())
    np.testing.assert_allclose(s, swapped, atol=1e-5)
    ce.save(tmp_path / "ce")
    again = CrossEncoderScorer.load(tmp_path / "ce")
    np.testing.assert_allclose(again.predict(pairs["left_text"].tolist(),
                                             pairs["right_text"].tolist()), s, atol=1e-5)


def test_cross_encoder_validates_input(tiny_bert):
    ce = CrossEncoderScorer(tiny_bert, show_progress=False)
    with pytest.raises(ValueError, match="equal"):
        ce.fit(["a", "b"], ["c"], [1, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        ce.fit(["a"], ["b"], [2])
    with pytest.raises(ValueError, match="row 1"):
        ce.fit(["a", 3], ["b", "c"], [1, 0])


def test_reranker_without_cross_encoder_uses_evidence_and_features(tmp_path):
    pairs = _toy_pairs(80)
    rr = PairReranker(None, max_iter=50)
    with pytest.raises(NotFittedError):
        rr.predict_proba(pairs)
    rr.fit(pairs)
    assert "score" in rr.feature_names_ and "cross_encoder" not in rr.feature_names_
    assert any(name.startswith("token_jaccard") for name in rr.feature_names_)
    p = rr.predict_proba(_toy_pairs(40, seed=1))
    y = _toy_pairs(40, seed=1)["label"].to_numpy()
    assert ((p >= 0.5) == y).mean() >= 0.95  # the score separates the toy classes
    assert ("a0", "b0") in rr.training_pairs_
    rr.save(tmp_path / "rr")
    again = PairReranker.load(tmp_path / "rr")
    np.testing.assert_allclose(again.predict_proba(_toy_pairs(40, seed=1)), p, atol=1e-6)
    assert again.training_pairs_ == rr.training_pairs_


def _marked_pairs(n, seed):
    """Matches carry the word "milk" on both sides, non-matches "tea": a rule a tiny model
    learns from a few pairs and applies to new ones (unlike word overlap)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(i % 2 == 0)
        mark = "milk" if label else "tea"
        a = " ".join([*rng.choice(WORDS[4:], size=2), mark])
        b = " ".join([mark, *rng.choice(WORDS[4:], size=2)])
        rows.append({"left_id": f"a{i}", "right_id": f"b{i}", "left_text": a,
                     "right_text": b, "label": label})
    return pd.DataFrame(rows)


def test_reranker_with_cross_fitted_cross_encoder(tiny_bert):
    pairs = _marked_pairs(64, 0)  # text only: the cross-encoder must carry it
    ce = CrossEncoderScorer(tiny_bert, max_length=16, epochs=20, batch_size=16, lr=3e-3,
                            show_progress=False)
    rr = PairReranker(ce, folds=2, max_iter=50, features=False).fit(pairs)
    assert rr.feature_names_ == ["cross_encoder"]
    test = _marked_pairs(40, 3)
    p = rr.predict_proba(test)
    auc_pairs = [(a, b) for a in p[test["label"] == 1] for b in p[test["label"] == 0]]
    assert np.mean([a > b for a, b in auc_pairs]) > 0.8
    explained = rr.explain(test.head(3))
    assert list(explained.columns) == ["cross_encoder", "probability"]


def test_reranker_checks_columns_and_labels():
    pairs = _toy_pairs(10)
    with pytest.raises(ValueError, match="missing column"):
        PairReranker(None).fit(pairs.drop(columns="right_text"))
    bad = pairs.copy()
    bad.loc[3, "label"] = 5
    with pytest.raises(ValueError, match="row 3"):
        PairReranker(None).fit(bad)
    rr = PairReranker(None, max_iter=20).fit(pairs)
    with pytest.raises(ValueError, match="features"):
        rr.predict_proba(pairs.drop(columns="score"))


def test_contributions_sum_to_the_log_odds_and_name_the_decisive_features():
    pairs = _toy_pairs(80)
    rr = PairReranker(None, max_iter=40).fit(pairs)
    test = _toy_pairs(30, seed=2)
    p = rr.predict_proba(test).astype(np.float64)
    c = rr.contributions(test)
    assert list(c.columns) == [*rr.feature_names_, "bias"]
    np.testing.assert_allclose(c.sum(axis=1), np.log(p / (1 - p)), atol=1e-4)
    reasons = rr.decisive(test, top=2)
    assert len(reasons) == len(test)
    for i, text in enumerate(reasons):
        parts = text.split("; ")
        assert len(parts) == 2
        # the named features are the two with the largest absolute contributions
        feats = c.iloc[i][rr.feature_names_].abs().sort_values(ascending=False, kind="stable")
        assert [part.split("=")[0] for part in parts] == list(feats.index[:2])


def test_reranker_load_refuses_other_formats(tmp_path):
    import json

    from mmmatch.exceptions import ConfigMismatchError

    rr = PairReranker(None, max_iter=10).fit(_toy_pairs(60))
    folder = rr.save(tmp_path / "rr")
    assert (folder / "booster.txt").read_text().startswith("tree")  # a text model, no pickle
    meta = json.loads((folder / "reranker.json").read_text())
    meta["format_version"] = 1
    (folder / "reranker.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigMismatchError, match="retrain"):
        PairReranker.load(folder)
    with pytest.raises(FileNotFoundError, match=r"reranker\.json"):
        PairReranker.load(tmp_path / "nothing")


def test_with_texts_brings_prices_and_brands_of_catalogues_that_have_them():
    from mmmatch.catalogue import load_catalogue
    from mmmatch.rerank import with_texts

    left = load_catalogue(pd.DataFrame({"id": ["a", "b"], "title": ["tv 55in", "radio"],
                                        "price": [499.0, None], "manufacturer": ["LG", "Sony"]}))
    right = load_catalogue(pd.DataFrame({"id": ["x"], "name": ["LG 55 inch tv"],
                                         "price": ["489.99"]}))
    assert (left.columns.price, left.columns.brand) == ("price", "manufacturer")
    pairs = pd.DataFrame({"left_id": ["a", "b", "zz"], "right_id": ["x", "x", "x"]})
    out = with_texts(pairs, left, right)
    assert out["left_text"].tolist() == ["tv 55in", "radio", ""]
    assert out["left_price"].tolist()[0] == 499.0 and pd.isna(out["left_price"].iloc[1])
    assert out["right_price"].tolist() == ["489.99"] * 3
    assert out["left_brand"].tolist()[:2] == ["LG", "Sony"] and "right_brand" not in out
    rr = PairReranker(None, max_iter=5).fit(_toy_pairs(60))
    x = rr._features(out.assign(score=0.5), None)  # the price reaches the features
    assert x["price_ratio"].iloc[0] == pytest.approx(489.99 / 499.0)


def test_predict_explained_is_predict_proba_and_decisive_in_one_pass():
    rr = PairReranker(None, max_iter=30).fit(_toy_pairs(80))
    test = _toy_pairs(20, seed=4)
    got = rr.predict_explained(test, top=2)
    np.testing.assert_array_equal(got["probability"].to_numpy(), rr.predict_proba(test))
    assert got["decisive"].tolist() == rr.decisive(test, top=2).tolist()
    calls = []
    features = rr._features
    rr._features = lambda pairs, ce: (calls.append(1), features(pairs, ce))[1]
    rr.predict_explained(test)
    assert len(calls) == 1  # pair features (and cross-encoder scores) computed once
