import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mmmatch.compare import EVIDENCE_COLUMNS, SIGNALS
from mmmatch.exceptions import ConfigMismatchError, MmmatchError
from mmmatch.pipeline import Matcher
from mmmatch.search import SearchIndex

RESULT_COLUMNS = ["rank", "id", "title", "score", *EVIDENCE_COLUMNS]


@pytest.fixture(scope="module")
def built(matcher, demo):
    return SearchIndex.build(demo.left, matcher)


@pytest.fixture(scope="module")
def saved(built, tmp_path_factory):
    return built.save(tmp_path_factory.mktemp("search") / "index")


@pytest.fixture(scope="module")
def hf_matcher(hf_vit_dir, hf_st_dir, embedding_cache_dir):
    return Matcher(image_encoder=str(hf_vit_dir), text_encoder=str(hf_st_dir),
                   cache_dir=embedding_cache_dir)


@pytest.fixture(scope="module")
def hf_built(demo, hf_matcher):
    """The demo catalogue indexed with tiny Hugging Face encoders (local folders)."""
    return SearchIndex.build(demo.left, hf_matcher)


@pytest.fixture(scope="module")
def hf_saved(hf_built, tmp_path_factory):
    return hf_built.save(tmp_path_factory.mktemp("search") / "hf-index")


@pytest.fixture(scope="module")
def hf_loaded(hf_saved, embedding_cache_dir):
    return SearchIndex.load(hf_saved, cache_dir=embedding_cache_dir)


@pytest.fixture(scope="module")
def left(demo):
    df = pd.read_csv(demo.left)
    df["path"] = [str(demo.folder / p) for p in df["image"]]
    return df


def test_build(built, left):
    assert len(built) == 8
    assert built.items["_id"].tolist() == left["id"].tolist()
    assert built.layout.image_dim == 1280 and built.layout.text_dim == 384
    assert built.problems.empty
    meta = built.index.metadata
    assert meta["image_encoder"].startswith("efficientnet-lite0@")
    assert meta["text_encoder"].startswith("minilm-l6")


def test_saved_folder(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["items.parquet", "manifest.json",
                                                       "vectors"]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["kind"] == "mmmatch.SearchIndex" and manifest["count"] == 8
    assert manifest["layout"] == {"image_dim": 1280, "text_dim": 384, "learned_dim": 0}
    assert manifest["model"] is None
    assert manifest["image_encoder"]["preprocess"]["mean"] == [127 / 255] * 3
    assert manifest["text_encoder"]["dim"] == 384


def test_search_by_title(built, left):
    title = left["title"].iloc[3]
    res = built.search(title=title, k=3)
    assert list(res.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert len(res) == 3
    assert res["rank"].tolist() == [1, 2, 3]
    assert res["id"].iloc[0] == left["id"].iloc[3]
    assert res["title"].iloc[0] == title
    assert res["image_sim"].isna().all()
    assert res["text_sim"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert res["lexical_sim"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert res["score"].is_monotonic_decreasing
    assert "brand" in res.columns and "image" in res.columns


def test_search_by_image(built, left):
    res = built.search(image=left["path"].iloc[5], k=4)
    assert res["id"].iloc[0] == left["id"].iloc[5]
    assert res["image_sim"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert res["score"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert res["text_sim"].isna().all() and res["lexical_sim"].isna().all()
    assert (res["image_sim"].iloc[1:] < 0.999).all()


def test_search_by_image_relative_to_base_dir(built, left, demo):
    res = built.search(image=left["image"].iloc[2], base_dir=demo.folder, k=1)
    assert res["id"].tolist() == [left["id"].iloc[2]]


def test_search_by_both(built, left, demo):
    right = pd.read_csv(demo.right)
    truth = demo.truth.iloc[0]
    query = right.set_index("sku").loc[truth["right_id"]]
    res = built.search(image=str(demo.folder / query["image"]), title=query["name"], k=5)
    assert res[["image_sim", "text_sim", "lexical_sim"]].notna().all(axis=None)
    assert res["id"].iloc[0] == truth["left_id"]
    # search scores are raw: the weighted mean of the evidence, with the search weights
    w = built.matcher.search_score_weights.to_dict()
    vals = res[[f"{n}_sim" for n in SIGNALS]].to_numpy(np.float64)
    ws = np.array([w[n] for n in SIGNALS])
    have = ~np.isnan(vals) & (ws > 0)
    expected = (np.where(have, vals, 0) @ ws) / (have @ ws)
    np.testing.assert_allclose(res["score"], expected, atol=1e-5)


def test_search_batch(built, left):
    res = built.search_batch(
        images=[None, left["path"].iloc[1], left["path"].iloc[6]],
        titles=[left["title"].iloc[4], None, left["title"].iloc[6]], k=2,
    )
    assert res.columns[0] == "query"
    assert res.groupby("query").size().tolist() == [2, 2, 2]
    top = res[res["rank"] == 1].set_index("query")["id"]
    assert top.tolist() == left["id"].iloc[[4, 1, 6]].tolist()
    only_titles = built.search_batch(titles=left["title"].iloc[:3].tolist(), k=1)
    assert only_titles["id"].tolist() == left["id"].iloc[:3].tolist()


def test_save_load_with_default_encoders(built, saved, left, embedding_cache_dir):
    loaded = SearchIndex.load(saved, cache_dir=embedding_cache_dir)
    a = built.search(image=left["path"].iloc[0], title="oat drink", k=8)
    b = loaded.search(image=left["path"].iloc[0], title="oat drink", k=8)
    assert a["id"].tolist() == b["id"].tolist()
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-6)


def test_save_load_round_trip(hf_built, hf_loaded, hf_saved, left):
    assert len(hf_loaded) == 8
    assert hf_loaded.layout == hf_built.layout
    assert hf_loaded.matcher.image_encoder == hf_built.matcher.image_encoder
    assert hf_loaded.matcher.score_weights == hf_built.matcher.score_weights
    assert hf_loaded.items["_id"].tolist() == left["id"].tolist()
    for query in ({"title": left["title"].iloc[2]}, {"image": left["path"].iloc[4]},
                  {"image": left["path"].iloc[0], "title": "oat drink"}):
        a = hf_built.search(**query, k=8)
        b = hf_loaded.search(**query, k=8)
        assert a["id"].tolist() == b["id"].tolist()
        np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)
    # an exact catalogue photo or title comes back first even with tiny random encoders
    assert hf_loaded.search(image=left["path"].iloc[4], k=1)["id"].tolist() == \
        [left["id"].iloc[4]]
    assert hf_loaded.search(title=left["title"].iloc[2], k=1)["id"].tolist() == \
        [left["id"].iloc[2]]


def test_k_larger_than_index(built):
    assert len(built.search(title="juice", k=50)) == 8


def test_query_errors(built, tmp_path):
    with pytest.raises(MmmatchError, match="neither"):
        built.search()
    with pytest.raises(MmmatchError, match="query 1"):
        built.search_batch(titles=["tea", "   "])
    with pytest.raises(MmmatchError, match="missing"):
        built.search(image=str(tmp_path / "nope.jpg"))
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        built.search_batch(images=[None, None], titles=["a"])


def test_text_only_index(demo, embedding_cache_dir, left):
    index = SearchIndex.build(demo.left, Matcher(image_encoder=None,
                                                 cache_dir=embedding_cache_dir))
    assert index.layout.image_dim == 0
    assert index.search(title=left["title"].iloc[0], k=1)["id"].tolist() == [left["id"].iloc[0]]
    with pytest.raises(MmmatchError, match="without images"):
        index.search(image=left["path"].iloc[0])


def test_build_records_problems(demo_frames, matcher):
    frame = demo_frames[0].copy()
    frame.loc[2, "image"] = "/nowhere/x.jpg"
    index = SearchIndex.build(frame, matcher)
    assert len(index) == 8
    assert index.problems[["row", "id", "problem"]].values.tolist() == [
        [2, frame.loc[2, "id"], "missing"]]


def test_tampered_encoder_id(hf_saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(hf_saved, copy)
    assert len(SearchIndex.load(copy)) == 8  # the untouched copy loads
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["image_encoder"]["encoder_id"] = "hf-image:somewhere@other-weights"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigMismatchError, match="other-weights"):
        SearchIndex.load(copy)


def test_load_errors(hf_saved, tmp_path):
    with pytest.raises(FileNotFoundError):
        SearchIndex.load(tmp_path / "nothing")
    copy = tmp_path / "copy"
    shutil.copytree(hf_saved, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "kind": "something-else"}))
    with pytest.raises(ConfigMismatchError, match="not an mmmatch search index"):
        SearchIndex.load(copy)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ConfigMismatchError, match="newer"):
        SearchIndex.load(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    items = pd.read_parquet(copy / "items.parquet")
    items.iloc[:5].to_parquet(copy / "items.parquet", index=False)
    with pytest.raises(ConfigMismatchError, match="5 rows"):
        SearchIndex.load(copy)


def test_bytes_images_are_stored_as_placeholders(tmp_path, demo_frames, matcher):
    frame = demo_frames[0].iloc[:3].copy()
    frame["image"] = [open(p, "rb").read() for p in frame["image"]]  # noqa: SIM115
    index = SearchIndex.build(frame, matcher)
    path = index.save(tmp_path / "bytes-index")
    items = pd.read_parquet(path / "items.parquet")
    assert all(v.startswith("<") and v.endswith(" bytes>") for v in items["image"])
    res = index.search(image=frame["image"].iloc[1], k=1)
    assert res["id"].tolist() == [frame["id"].iloc[1]]


def test_title_search_tells_model_numbers_apart(embedding_cache_dir):
    items = pd.DataFrame({"id": ["a", "b", "c", "d"], "title": [
        "Sony NNSD797S microwave", "Sony NNSD767S microwave", "Oatly oat drink 1 l",
        "Green tea 20 bags"]})
    index = SearchIndex.build(items, Matcher(image_encoder=None, cache_dir=embedding_cache_dir))
    res = index.search(title="sony nnsd797s", k=2).set_index("id")
    assert list(res.index) == ["a", "b"]
    assert res.loc["a", "lexical_sim"] > res.loc["b", "lexical_sim"] + 0.1


def test_search_weights_are_saved_with_the_index(tmp_path, left):
    from mmmatch import Matcher, ScoreWeights

    weights = ScoreWeights(image=0.2, text=0.6, lexical=0.1, word=0.1)
    matcher = Matcher(image_encoder=None, cache_dir=False, search_weights=weights)
    SearchIndex.build(left[["id", "title"]], matcher).save(tmp_path / "ix")
    loaded = SearchIndex.load(tmp_path / "ix")
    assert loaded.matcher.search_score_weights == weights
    assert loaded.matcher.score_weights == matcher.score_weights


def test_title_only_queries_use_the_title_search_weights(built, left):
    """With images in the index, a typed title alone is scored by its own weights (default:
    the sentence-embedding cosine alone), while photo queries keep the search weights."""
    res = built.search_batch(titles=[left["title"].iloc[2]], k=4)
    w = built.matcher.title_search_score_weights.to_dict()
    vals = res[[f"{n}_sim" for n in SIGNALS]].to_numpy(np.float64)
    ws = np.array([w[n] for n in SIGNALS])
    have = ~np.isnan(vals) & (ws > 0)
    np.testing.assert_allclose(res["score"], (np.where(have, vals, 0) @ ws) / (have @ ws),
                               atol=1e-5)
    assert w != built.matcher.search_score_weights.to_dict()
