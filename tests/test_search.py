import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import image_bytes

from mmmatch._journal import encode_record
from mmmatch.compare import EVIDENCE_COLUMNS, SIGNALS
from mmmatch.exceptions import (
    ConfigMismatchError,
    DuplicateIdError,
    ItemNotFoundError,
    MmmatchError,
)
from mmmatch.pipeline import Matcher
from mmmatch.search import JOURNAL_FILE, PreparedItems, SearchIndex

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


# -- changing an index: add / remove, the journal, crashes ------------------------------------

PRODUCTS = ["oat milk 1 l", "green tea 20 bags", "sony nnsd797s microwave", "orange juice 1 l",
            "red apple 6 pack", "blue cheese 200 g", "sony nnsd767s microwave", "black coffee"]


@pytest.fixture
def products():
    """Eight products with a photo (bytes), a title and a price."""
    return pd.DataFrame({"id": [f"p{i}" for i in range(8)], "title": PRODUCTS,
                         "image": [image_bytes(i) for i in range(8)],
                         "price": [1.5 + i for i in range(8)]})


@pytest.fixture
def fake_matcher(fake_encoders):
    return Matcher(image_encoder="tiny-image", text_encoder="hash-text", cache_dir=False)


@pytest.fixture
def small(products, fake_matcher, tmp_path):
    """The first four products indexed and saved; returns the folder."""
    return SearchIndex.build(products.iloc[:4], fake_matcher).save(tmp_path / "small")


def _ranking(index, products, rows=range(8)):
    """Ids and scores of photo + title searches of some products."""
    res = index.search_batch(images=products["image"].iloc[list(rows)].tolist(),
                             titles=products["title"].iloc[list(rows)].tolist(), k=5)
    return res[["query", "id", "score", "lexical_sim"]].reset_index(drop=True)


def test_add_and_remove_change_what_search_finds(products, fake_matcher):
    index = SearchIndex.build(products.iloc[:4], fake_matcher)
    assert index.add(products.iloc[4:6]) == ["p4", "p5"]
    assert len(index) == 6 and "p5" in index
    assert index.items["_id"].tolist() == [f"p{i}" for i in range(6)]
    assert index.search(image=products["image"][5], k=1)["id"].tolist() == ["p5"]
    assert index.search(title="blue cheese 200 g", k=1)["price"].tolist() == [6.5]
    assert index.remove(["p5", "p1"]) == 2
    assert len(index) == 4 and "p5" not in index
    assert index.items["_id"].tolist() == ["p0", "p2", "p3", "p4"]
    found = index.search(image=products["image"][5], title="blue cheese 200 g", k=10)
    assert "p5" not in found["id"].tolist() and len(found) == 4
    assert index.get_items(["p4"])[["id", "title", "price"]].values.tolist() == [
        ["p4", "red apple 6 pack", 5.5]]


def test_add_rejects_duplicate_ids_and_remove_unknown_ids(products, fake_matcher):
    index = SearchIndex.build(products.iloc[:4], fake_matcher)
    with pytest.raises(DuplicateIdError, match="already in the index: 'p2', 'p3'") as err:
        index.add(products.iloc[2:6])
    assert err.value.ids == ["p2", "p3"]
    assert len(index) == 4  # nothing added
    with pytest.raises(ItemNotFoundError, match="'nope'") as err:
        index.remove(["p0", "nope"])
    assert err.value.ids == ["nope"] and len(index) == 4  # nothing removed
    with pytest.raises(ItemNotFoundError):
        index.get_items(["nope"])


def test_prepared_items_are_added_without_embedding_again(products, fake_matcher, fake_encoders):
    index = SearchIndex.build(products.iloc[:4], fake_matcher)
    prepared = index.prepare(products.iloc[4:6])
    assert isinstance(prepared, PreparedItems) and len(prepared) == 2
    assert prepared.vectors.shape == (2, index.layout.dim)
    assert prepared.rows[0]["image"].endswith(" bytes>")  # JSON-safe
    calls = fake_encoders["hash-text"].calls
    index.add(prepared)
    assert fake_encoders["hash-text"].calls == calls
    with pytest.raises(DuplicateIdError):  # checked again under the lock
        index.add(prepared)


def test_add_keeps_the_lexical_vocabulary_until_it_is_stale(products, fake_matcher):
    index = SearchIndex.build(products.iloc[:4], fake_matcher)
    index.search(title="tea", k=1)  # fits the lexical models on the four texts
    before = index._lexical["lexical"][0]
    index.add(products.iloc[4:5])  # 1 added >= max(1, 25% of 4 texts): refitted
    assert index._lexical["lexical"][0] is not before
    big = SearchIndex.build(products, fake_matcher)
    big.search(title="tea", k=1)
    model = big._lexical["lexical"][0]
    big.remove(["p7"])
    big.add(products.iloc[7:8])  # 1 added < 25% of 8: transformed with the same vocabulary
    lex_model, items_lex = big._lexical["lexical"]
    assert lex_model is model and items_lex.shape[0] == 8
    new_row = items_lex[big._positions.get_loc("p7")]
    np.testing.assert_allclose(new_row.toarray(), model.transform([PRODUCTS[7]]).toarray())
    assert big.search(title="black coffee", k=1)["id"].tolist() == ["p7"]
    big.add(pd.DataFrame({"id": ["x"], "title": ["white tea"]}))  # 2 >= 25% of 8: refit
    assert big._lexical["lexical"][0] is not model


def test_empty_index_fills_up(products, fake_matcher, tmp_path):
    index = SearchIndex.empty(fake_matcher)
    assert len(index) == 0 and index.layout.image_dim == 192
    assert index.search(title="tea").empty
    index.save(tmp_path / "empty")
    with SearchIndex.open(tmp_path / "empty") as live:
        assert live.search(image=products["image"][0], k=3).empty
        live.add(products.iloc[:3])
        assert live.search(title="green tea 20 bags", k=1)["id"].tolist() == ["p1"]
    loaded = SearchIndex.load(tmp_path / "empty")
    assert loaded.items["_id"].tolist() == ["p0", "p1", "p2"]
    assert loaded.search(image=products["image"][2], k=1)["id"].tolist() == ["p2"]


def test_search_batch_can_skip_bad_queries(products, fake_matcher):
    index = SearchIndex.build(products.iloc[:4], fake_matcher)
    res = index.search_batch(images=[None, b"junk", products["image"][1], None],
                             titles=[None, "tea", None, "orange juice 1 l"], k=2,
                             on_bad_query="skip")
    assert sorted(set(res["query"])) == [2, 3]
    assert res.groupby("query")["id"].first().tolist() == ["p1", "p3"]
    problems = res.attrs["problems"]
    assert [(p["query"], p["field"], p["problem"]) for p in problems] == [
        (0, None, "empty_query"), (1, "image", "unreadable")]
    with pytest.raises(MmmatchError, match="query 1: image unreadable"):
        index.search_batch(images=[None, b"junk"], titles=["tea", None])
    with pytest.raises(ValueError, match="k must be"):
        index.search_batch(titles=["tea"], k=0)


def test_opened_index_journals_each_change_before_returning(products, small):
    with SearchIndex.open(small) as live:
        live.add(products.iloc[4:6])
        live.remove(["p0"])
        assert live.pending_changes == 2
        lines = (small / JOURNAL_FILE).read_bytes().splitlines()
        assert [json.loads(line)["op"] for line in lines] == ["add", "remove"]
        # another reader sees snapshot + journal
        other = SearchIndex.load(small)
        assert other.items["_id"].tolist() == ["p1", "p2", "p3", "p4", "p5"]
        expected = _ranking(live, products)
        pd.testing.assert_frame_equal(_ranking(other, products), expected)
    # closing compacted: a new snapshot and an empty journal
    assert (small / JOURNAL_FILE).read_bytes() == b""
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["count"] == 5 and manifest["journal_seq"] == 2
    pd.testing.assert_frame_equal(_ranking(SearchIndex.load(small), products), expected)


def test_torn_last_record_is_ignored_and_cut_off(products, small):
    live = SearchIndex.open(small)
    live.add(products.iloc[4:5])
    live.add(products.iloc[5:6])
    live.remove(["p1"])
    expected = _ranking(live, products)
    record = encode_record({"seq": 4, "op": "remove", "ids": ["p2"]})
    with open(small / JOURNAL_FILE, "ab") as f:  # the process dies in the middle of a write
        f.write(record[: len(record) // 2])
    live._journal.close()  # ...without closing (no compaction)
    size = (small / JOURNAL_FILE).stat().st_size
    loaded = SearchIndex.load(small)  # every acknowledged change, not the torn one
    assert loaded.items["_id"].tolist() == ["p0", "p2", "p3", "p4", "p5"]
    pd.testing.assert_frame_equal(_ranking(loaded, products), expected)
    assert (small / JOURNAL_FILE).stat().st_size == size  # load only reads
    with SearchIndex.open(small, compact_every=100) as again:
        assert (small / JOURNAL_FILE).stat().st_size == size - len(record) // 2
        again.remove(["p2"])
        assert SearchIndex.load(small).items["_id"].tolist() == ["p0", "p3", "p4", "p5"]
    assert SearchIndex.load(small).items["_id"].tolist() == ["p0", "p3", "p4", "p5"]


def test_damaged_journal_is_refused(products, small):
    with SearchIndex.open(small) as live:
        live.add(products.iloc[4:5])
        live.add(products.iloc[5:6])
        lines = (small / JOURNAL_FILE).read_bytes().splitlines(keepends=True)
        live._journal.detach()
        live._journal = None  # drop it without compacting
    damaged = lines[0][:40] + b"X" + lines[0][41:] + lines[1]
    (small / JOURNAL_FILE).write_bytes(damaged)
    with pytest.raises(ConfigMismatchError, match="corrupt but later ones are intact"):
        SearchIndex.load(small)


def test_changes_replay_to_the_same_results_across_lexical_refits(products, small):
    live = SearchIndex.open(small, compact_every=1000)
    live.search(title="tea", k=1)
    for i in range(4, 8):  # refits of the lexical part on the way
        live.add(products.iloc[i : i + 1])
    live.remove(["p2"])
    live.add(pd.DataFrame({"id": ["q"], "title": ["green tea 40 bags"]}))
    expected = _ranking(live, products)
    live._journal.close()  # a crash: no compaction
    replayed = SearchIndex.load(small)
    pd.testing.assert_frame_equal(_ranking(replayed, products), expected)
    with SearchIndex.open(small) as again:  # compact (vocabulary saved with the snapshot)
        again.remove(["p0"])
        expected = _ranking(again, products)
    assert (small / "lexical").is_dir()
    pd.testing.assert_frame_equal(_ranking(SearchIndex.load(small), products), expected)


def test_compaction_every_n_changes(products, small):
    with SearchIndex.open(small, compact_every=2) as live:
        live.add(products.iloc[4:5])
        assert live.pending_changes == 1
        live.add(products.iloc[5:6])
        assert live.pending_changes == 0
        assert json.loads((small / "manifest.json").read_text())["count"] == 6
        live.remove(["p4"])
        assert live.pending_changes == 1


def test_one_writer_per_folder(small):
    with SearchIndex.open(small), pytest.raises(MmmatchError, match="already open"):
        SearchIndex.open(small)
    SearchIndex.open(small).close()  # released


def test_crash_between_the_renames_of_a_compaction_is_recovered(products, small, tmp_path):
    with SearchIndex.open(small) as live:
        live.add(products.iloc[4:6])
        live._journal.detach()
        live._journal = None
    # atomic_dir had moved the old folder aside and died before moving the new one in
    aside = small.parent / f".{small.name}.old-x1"
    small.rename(aside)
    (small.parent / f".{small.name}.tmp-x2").mkdir()
    with SearchIndex.open(small) as live:
        assert live.items["_id"].tolist() == [f"p{i}" for i in range(6)]
    assert not aside.exists() and not (small.parent / f".{small.name}.tmp-x2").exists()


def test_item_columns_named_like_result_columns_do_not_shadow_them(matcher, demo):
    df = pd.read_csv(demo.left).assign(score=7.5, query="sku-query", rank="gold")
    df["image"] = [str(demo.folder / p) for p in df["image"]]
    index = SearchIndex.build(df, matcher)
    res = index.search_batch(titles=[df["title"].iloc[2], df["title"].iloc[5]], k=3)
    assert res.columns.is_unique
    assert res["query"].tolist() == [0, 0, 0, 1, 1, 1] and res["rank"].tolist() == [1, 2, 3] * 2
    assert (res["score_item"] == 7.5).all() and (res["query_item"] == "sku-query").all()
    assert res["score"].between(-1.001, 1.001).all()  # cosines, not the 7.5 ratings


def test_union_vectors_reuse_found_ones_and_read_the_rest(built):
    n = len(built)
    rng = np.random.default_rng(0)
    uq = np.repeat(np.arange(3), 4)  # three queries, four items each (items repeat across)
    ui = np.concatenate([rng.choice(n, size=4, replace=False) for _ in range(3)])
    truth = built.index.reconstruct(built._ids[ui])
    found = np.arange(0, 12, 2)  # half the pairs come with their vectors (marked by a +1)
    got = built._union_vectors(uq[found], ui[found], truth[found] + 1, uq, ui)
    np.testing.assert_array_equal(got[found], truth[found] + 1)
    rest = np.setdiff1d(np.arange(12), found)
    np.testing.assert_array_equal(got[rest], truth[rest])
    assert built._union_vectors(uq[:0], ui[:0], truth[:0], uq, ui).shape == truth.shape
