import numpy as np
import pandas as pd
import pytest

import mmmatch.pipeline as pipeline
from mmmatch.compare import EVIDENCE_COLUMNS, SIGNALS, ScoreWeights
from mmmatch.exceptions import CatalogueError
from mmmatch.fusion import FusionWeights
from mmmatch.metrics import pair_scores
from mmmatch.pipeline import DEFAULT_THRESHOLD, Matcher

PAIR_COLUMNS = ["left_id", "right_id", "score", *EVIDENCE_COLUMNS, "rank", "is_match"]
RIGHT = {"id": "sku", "title": "name"}


def _weighted_mean(df: pd.DataFrame, weights: ScoreWeights) -> np.ndarray:
    w = weights.to_dict()
    vals = df[[f"{n}_sim" for n in SIGNALS]].to_numpy(np.float64)
    ws = np.array([w[n] for n in SIGNALS])
    have = ~np.isnan(vals) & (ws > 0)
    return (np.where(have, vals, 0) @ ws) / (have @ ws)


@pytest.fixture(scope="module")
def all_candidates(matcher, demo):
    """Every retrieved candidate of the demo with the default matcher (hubness on)."""
    return matcher.match(demo.left, demo.right, right_columns=RIGHT, all_candidates=True)


@pytest.fixture(scope="module")
def middle_threshold(all_candidates):
    """Halfway between the 4th and 5th best left rows' top scores, whatever the score scale:
    four left rows have a match above it and four do not."""
    best = np.sort(all_candidates.groupby("left_id")["score"].max().to_numpy())[::-1]
    assert len(best) == 8 and best[3] > best[4]
    return float((best[3] + best[4]) / 2)


@pytest.fixture(scope="module")
def left_join(matcher, demo, middle_threshold):
    return matcher.match(demo.left, demo.right, right_columns=RIGHT, how="left",
                         threshold=middle_threshold)


@pytest.fixture(scope="module")
def raw_matcher(embedding_cache_dir):
    """Scores without the hubness correction: plain weighted means of the evidence."""
    return Matcher(cache_dir=embedding_cache_dir, hubness=False)


def test_match_columns(left_join):
    assert list(left_join.columns) == [
        *PAIR_COLUMNS, "id_left", "title_left", "brand_left", "image_left",
        "sku_right", "name_right", "image_right",
    ]
    assert left_join.attrs["problems"] == []


def test_left_join_keeps_every_left_row_in_order(left_join, demo, middle_threshold):
    left_ids = pd.read_csv(demo.left)["id"].tolist()
    assert set(left_join["left_id"]) == set(left_ids)
    order = [left_ids.index(i) for i in left_join["left_id"]]
    assert order == sorted(order)
    unmatched = left_join[left_join["right_id"].isna()]
    assert len(unmatched) == 4
    assert unmatched["score"].isna().all()
    assert (unmatched["id_left"] == unmatched["left_id"]).all()
    matched = left_join[left_join["right_id"].notna()]
    assert matched["left_id"].nunique() == 4
    assert (matched["score"] >= middle_threshold).all()
    assert (matched["sku_right"] == matched["right_id"]).all()
    assert (matched["id_left"] == matched["left_id"]).all()


def test_threshold_selects_exactly_the_candidates_above_it(matcher, demo, all_candidates,
                                                           middle_threshold):
    inner = matcher.match(demo.left, demo.right, right_columns=RIGHT,
                          threshold=middle_threshold)
    expected = all_candidates[all_candidates["score"] >= middle_threshold]
    assert sorted(zip(inner["left_id"], inner["right_id"], strict=True)) == \
        sorted(zip(expected["left_id"], expected["right_id"], strict=True))
    assert inner["is_match"].all()
    np.testing.assert_array_equal(
        all_candidates["is_match"], all_candidates["score"] >= matcher.decision_threshold)
    none = matcher.match(demo.left, demo.right, right_columns=RIGHT, threshold=10.0)
    assert len(none) == 0 and "score" in none.columns
    unmatched = matcher.match(demo.left, demo.right, right_columns=RIGHT, threshold=10.0,
                              how="left")
    assert len(unmatched) == 8 and unmatched["right_id"].isna().all()
    everything = matcher.match(demo.left, demo.right, right_columns=RIGHT, threshold=-10.0)
    assert len(everything) == 8 * 8  # k=10 >= 8 candidates per left row


def test_true_pairs_rank_first(all_candidates, demo):
    best = all_candidates[all_candidates["rank"] == 1]
    found = set(zip(best["left_id"], best["right_id"], strict=True))
    truth = set(zip(demo.truth["left_id"], demo.truth["right_id"], strict=True))
    assert len(found & truth) >= 5  # 6 true pairs among 8 x 8 products
    is_true = [p in truth for p in zip(all_candidates["left_id"], all_candidates["right_id"],
                                       strict=True)]
    scores = all_candidates["score"].to_numpy()
    assert np.median(scores[is_true]) > np.quantile(scores[~np.array(is_true)], 0.95)
    sims = all_candidates[EVIDENCE_COLUMNS].to_numpy()
    assert np.nanmin(sims) >= -1 - 1e-6 and np.nanmax(sims) <= 1 + 1e-6


def test_default_matcher_matches_the_demo_at_its_default_threshold(matcher, demo):
    pairs = matcher.match(demo.left, demo.right, right_columns=RIGHT)
    assert matcher.decision_threshold == DEFAULT_THRESHOLD
    assert pairs["is_match"].all() and (pairs["score"] >= DEFAULT_THRESHOLD).all()
    scores = pair_scores(zip(pairs["left_id"], pairs["right_id"], strict=True),
                         zip(demo.truth["left_id"], demo.truth["right_id"], strict=True))
    assert scores["tp"] >= 5  # of the 6 true pairs
    assert scores["precision"] >= 0.8


def test_all_candidates_ranks(all_candidates, matcher):
    assert all_candidates["is_match"].dtype == bool
    for _, group in all_candidates.groupby("left_id"):
        assert group["rank"].tolist() == list(range(1, len(group) + 1))
        assert group["score"].is_monotonic_decreasing
        assert len(group) <= matcher.k
        assert group["right_id"].is_unique


def test_raw_score_is_the_weighted_mean_of_the_evidence(raw_matcher, demo):
    out = raw_matcher.match(demo.left, demo.right, right_columns=RIGHT, all_candidates=True)
    zero_shot = [c for c in EVIDENCE_COLUMNS if c != "fused_sim"]
    assert out[zero_shot].notna().all(axis=None)
    assert out["fused_sim"].isna().all()  # no trained model, no learned signal
    np.testing.assert_allclose(out["score"], _weighted_mean(out, raw_matcher.score_weights),
                               atol=1e-5)


def test_hubness_changes_scores_not_evidence(raw_matcher, demo, all_candidates):
    raw = raw_matcher.match(demo.left, demo.right, right_columns=RIGHT, all_candidates=True)
    merged = raw.merge(all_candidates, on=["left_id", "right_id"], suffixes=("_raw", ""))
    assert len(merged) >= 40
    for col in EVIDENCE_COLUMNS:
        np.testing.assert_allclose(merged[col], merged[f"{col}_raw"], atol=1e-5)
    assert (merged["score"] < merged["score_raw"]).mean() > 0.9  # CSLS subtracts neighbourhoods


def test_score_pairs_agrees_with_match(matcher, demo, all_candidates):
    pairs = demo.truth.assign(label=1)
    scored = matcher.score_pairs(demo.left, demo.right, pairs, right_columns=RIGHT)
    assert list(scored.columns) == ["left_id", "right_id", "label", "score", *EVIDENCE_COLUMNS]
    merged = scored.merge(all_candidates, on=["left_id", "right_id"], suffixes=("", "_m"))
    assert len(merged) >= 5
    for col in ("score", *EVIDENCE_COLUMNS):
        np.testing.assert_allclose(merged[col], merged[f"{col}_m"], atol=1e-5)
    with pytest.raises(KeyError, match="nope"):
        matcher.score_pairs(demo.left, demo.right,
                            pd.DataFrame({"left_id": ["nope"], "right_id": ["B-1001"]}),
                            right_columns=RIGHT)


@pytest.fixture(scope="module")
def with_duplicate(demo_frames):
    left, right = demo_frames
    dup = left.iloc[[2]].assign(id="A-dup")  # the same title and photo under another id
    return pd.concat([left, right, dup], ignore_index=True)[["id", "title", "image"]]


def test_dedupe_links_identical_rows(raw_matcher, with_duplicate):
    # raw scores: identical rows score 1.0, every other pair of the demo <= 0.86
    rows, pairs = raw_matcher.dedupe(with_duplicate, threshold=0.95, return_pairs=True)
    n = len(with_duplicate)
    assert len(rows) == n and rows["id"].tolist() == with_duplicate["id"].tolist()
    assert rows["cluster_id"].notna().all()
    by_id = rows.set_index("id")["cluster_id"]
    original = with_duplicate["id"].iloc[2]
    assert by_id["A-dup"] == by_id[original]
    assert rows["cluster_id"].nunique() == n - 1
    assert sorted(rows["cluster_size"].tolist()) == [1] * (n - 2) + [2, 2]
    firsts = rows.drop_duplicates("cluster_id")["cluster_id"].tolist()
    assert firsts == list(range(len(firsts)))  # numbered by first appearance
    assert rows.attrs["problems"] == []
    assert sorted(map(sorted, pairs[["left_id", "right_id"]].values.tolist())) == \
        [sorted(["A-dup", original])] * 2
    np.testing.assert_allclose(pairs["score"], 1.0, atol=1e-4)


def test_default_dedupe_links_identical_rows(matcher, with_duplicate):
    rows = matcher.dedupe(with_duplicate)
    by_id = rows.set_index("id")["cluster_id"]
    assert by_id["A-dup"] == by_id[with_duplicate["id"].iloc[2]]


def test_dedupe_clusters_are_the_components_of_the_matched_pairs(matcher, with_duplicate):
    _, candidates = matcher.dedupe(with_duplicate, threshold=-10.0, return_pairs=True)
    threshold = float(np.quantile(candidates["score"], 0.8))
    rows, pairs = matcher.dedupe(with_duplicate, threshold=threshold, return_pairs=True)
    assert len(pairs) > 0
    assert (pairs["left_id"] != pairs["right_id"]).all()
    assert (pairs["score"] >= threshold).all()
    parent = {i: i for i in with_duplicate["id"]}

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in pairs[["left_id", "right_id"]].itertuples(index=False):
        parent[find(a)] = find(b)
    by_id = rows.set_index("id")["cluster_id"]
    ids = with_duplicate["id"].tolist()
    for a in ids:
        for b in ids:
            assert (find(a) == find(b)) == (by_id[a] == by_id[b])
    sizes = rows.groupby("cluster_id").size()
    assert (rows["cluster_size"] == rows["cluster_id"].map(sizes)).all()
    assert 1 < rows["cluster_id"].nunique() < len(ids)


def test_dedupe_cross_source(matcher, demo_frames):
    left, right = demo_frames
    dup = left.iloc[[0]].assign(id="A-dup")  # identical, but in the same shop
    both = pd.concat([left.assign(shop="a"), dup.assign(shop="a"), right.assign(shop="b")],
                     ignore_index=True)[["id", "title", "image", "shop"]]
    rows, pairs = matcher.dedupe(both, columns={"source": "shop"}, cross_source=True,
                                 threshold=-10.0, return_pairs=True)
    shop = rows.set_index("id")["shop"]
    assert len(pairs) > 0
    assert (pairs["left_id"].map(shop) != pairs["right_id"].map(shop)).all()
    assert not ((pairs["left_id"] == "A-dup") & (pairs["right_id"] == left["id"].iloc[0])).any()
    with pytest.raises(ValueError, match="source"):
        matcher.dedupe(both, cross_source=True)


def test_bad_image_is_listed_in_problems(matcher, demo_frames):
    left, right = demo_frames
    broken = left.copy()
    broken.loc[3, "image"] = "/definitely/not/here.jpg"
    out = matcher.match(broken, right, all_candidates=True)
    problems = out.attrs["problems"]
    assert len(problems) == 1
    p = problems[0]
    assert (p["catalogue"], p["row"], p["id"]) == ("left", 3, broken.loc[3, "id"])
    assert (p["problem"], p["action"], p["field"]) == ("missing", "text_only", "image")
    rows = out[out["left_id"] == broken.loc[3, "id"]]
    assert len(rows) > 0  # still matched on its text
    assert rows["image_sim"].isna().all() and rows["text_sim"].notna().all()
    assert list(pd.DataFrame(problems).columns[:2]) == ["catalogue", "row"]


def test_bad_image_skip_and_raise(embedding_cache_dir, demo_frames):
    left, right = demo_frames
    broken = left.copy()
    broken.loc[1, "image"] = "/definitely/not/here.jpg"
    skip = Matcher(cache_dir=embedding_cache_dir, on_bad_image="skip")
    out = skip.match(broken, right, how="left", all_candidates=True)
    assert broken.loc[1, "id"] not in set(out["left_id"])
    assert out.attrs["problems"][0]["action"] == "skipped"
    strict = Matcher(cache_dir=embedding_cache_dir, on_bad_image="raise")
    with pytest.raises(CatalogueError, match=rf"left row 1 \(id '{broken.loc[1, 'id']}'\)"):
        strict.match(broken, right)


def test_module_level_match_and_dedupe(embedding_cache_dir, demo, matcher, left_join,
                                       middle_threshold):
    out = pipeline.match(demo.left, demo.right, cache_dir=embedding_cache_dir,
                         right_columns=RIGHT, how="left", threshold=middle_threshold)
    pd.testing.assert_frame_equal(out, left_join)
    inner = pipeline.match(demo.left, demo.right, matcher=matcher, right_columns=RIGHT,
                           all_candidates=True)
    assert len(inner) == 8 * 8
    with pytest.raises(TypeError, match="'k'"):
        pipeline.match(demo.left, demo.right, matcher=matcher, k=3)
    rows = pipeline.dedupe(demo.left, cache_dir=embedding_cache_dir)
    assert len(rows) == 8 and "cluster_id" in rows.columns
    with pytest.raises(TypeError):
        pipeline.dedupe(demo.left, matcher=matcher, k=3)


def test_module_level_match_threshold_override_with_a_matcher(demo, matcher,
                                                              middle_threshold):
    out = pipeline.match(demo.left, demo.right, matcher=matcher, right_columns=RIGHT,
                         threshold=middle_threshold)
    assert len(out) > 0 and (out["score"] >= middle_threshold).all()


def test_text_only_matching(demo, embedding_cache_dir):
    m = Matcher(image_encoder=None, cache_dir=embedding_cache_dir, hubness=False)
    out = m.match(demo.left, demo.right, right_columns=RIGHT, all_candidates=True)
    assert out["image_sim"].isna().all()
    assert out["text_sim"].notna().all()
    np.testing.assert_allclose(out["score"], _weighted_mean(out, m.score_weights), atol=1e-5)


def test_no_lexical(demo, embedding_cache_dir):
    m = Matcher(lexical=False, cache_dir=embedding_cache_dir, k=3)
    out = m.match(demo.left, demo.right, right_columns=RIGHT, all_candidates=True)
    assert out["lexical_sim"].isna().all() and out["word_sim"].isna().all()
    assert out.groupby("left_id").size().max() <= 3


def test_matcher_settings_and_errors(tmp_path):
    w = ScoreWeights(image=0.6, text=0.2, lexical=0.15, word=0.05)
    assert Matcher(weights=w).fusion_weights == FusionWeights(0.6, 0.4)
    assert Matcher(weights=w, lexical=False).fusion_weights == FusionWeights(0.6, 0.2)
    zero = ScoreWeights(image=0, text=0, lexical=0, word=0)
    assert Matcher(weights=zero).fusion_weights == FusionWeights()
    assert Matcher().score_weights == ScoreWeights()
    assert Matcher(cache_dir=False)._cache() is None
    cache = Matcher(cache_dir=tmp_path / "c")._cache()
    assert cache.path.parent == tmp_path / "c"
    cache.close()
    with pytest.raises(ValueError, match="how"):
        Matcher(cache_dir=False).match(pd.DataFrame({"title": ["a"]}),
                                       pd.DataFrame({"title": ["b"]}), how="outer")
    photos_only = pd.DataFrame({"id": ["a"], "image": ["a.jpg"]})
    with pytest.raises(ValueError, match="nothing to compare"):
        Matcher(image_encoder=None, cache_dir=False).match(photos_only, photos_only)


def test_matcher_with_hugging_face_folders(hf_vit_dir, hf_st_dir, tmp_path, make_jpeg):
    for i in range(3):
        make_jpeg(f"img{i}.jpg", seed=10 + i)
    titles = ["oat milk 1 l", "green tea", "sony turntable"]
    left = pd.DataFrame({"id": ["l0", "l1", "l2"], "title": titles,
                         "image": [str(tmp_path / f"img{i}.jpg") for i in range(3)]})
    right = pd.DataFrame({"id": ["r2", "r0", "r1"], "title": [titles[2], titles[0], titles[1]],
                          "image": [str(tmp_path / f"img{i}.jpg") for i in (2, 0, 1)]})
    m = Matcher(image_encoder=str(hf_vit_dir), text_encoder=str(hf_st_dir),
                cache_dir=tmp_path / "cache", k=3)
    out = m.match(left, right, all_candidates=True)
    assert list(out.columns[:len(PAIR_COLUMNS)]) == PAIR_COLUMNS
    best = out[out["rank"] == 1].set_index("left_id")["right_id"].to_dict()
    assert best == {"l0": "r0", "l1": "r1", "l2": "r2"}
    top = out[out["rank"] == 1]
    np.testing.assert_allclose(top[["image_sim", "text_sim", "lexical_sim"]], 1, atol=1e-4)
    enc = m.encode(m.load(left))
    assert enc.image.shape == (3, 32) and enc.text.shape == (3, 32)


@pytest.mark.parametrize("method", [True, "hungarian"])
def test_one_to_one_match_keeps_each_row_once(matcher, demo, method):
    loose = matcher.match(demo.left, demo.right, right_columns=RIGHT, threshold=-0.2)
    strict = matcher.match(demo.left, demo.right, right_columns=RIGHT, threshold=-0.2,
                           one_to_one=method)
    assert strict["left_id"].is_unique and strict["right_id"].is_unique
    assert len(strict) < len(loose)  # the loose threshold let rows match several others
    loose_pairs = set(zip(loose["left_id"], loose["right_id"], strict=True))
    assert set(zip(strict["left_id"], strict["right_id"], strict=True)) <= loose_pairs
    if method is True:  # greedy: every left row's best match survives unless taken
        best = loose.sort_values("score", ascending=False).iloc[0]
        assert (best["left_id"], best["right_id"]) in set(
            zip(strict["left_id"], strict["right_id"], strict=True))


def _labelled_demo_pairs(demo, n_neg=120, seed=0):
    left, right = pd.read_csv(demo.left), pd.read_csv(demo.right)
    rng = np.random.default_rng(seed)
    neg = pd.DataFrame({"left_id": rng.choice(left["id"], n_neg),
                        "right_id": rng.choice(right["sku"], n_neg)})
    truth = set(zip(demo.truth["left_id"], demo.truth["right_id"], strict=True))
    neg = neg[[p not in truth for p in zip(neg["left_id"], neg["right_id"], strict=True)]]
    pos = demo.truth[["left_id", "right_id"]]
    return pd.concat([pos.assign(label=1), neg.assign(label=0)], ignore_index=True)


def test_fit_reranker_decides_by_calibrated_probability(matcher, demo, tmp_path):
    from mmmatch.pipeline import Matcher

    pairs = _labelled_demo_pairs(demo)
    m = Matcher(cache_dir=matcher.cache_dir)
    m.fit_reranker(demo.left, demo.right, pairs, right_columns=RIGHT,
                   output=tmp_path / "rr", max_iter=50)
    rr = m.reranker_
    assert rr.threshold_ is not None
    train_lefts = {a for a, _ in rr.training_pairs_}
    held = pairs[~pairs["left_id"].isin(train_lefts)]  # calibrated on held-out left items
    assert rr.calibration_["pairs"] == len(held) > 0
    out = m.match(demo.left, demo.right, right_columns=RIGHT, one_to_one=True)
    assert "probability" in out and out["probability"].between(0, 1).all()
    assert (out["probability"] >= rr.threshold_).all()
    assert out["left_id"].is_unique and out["right_id"].is_unique
    s = pair_scores(zip(out["left_id"], out["right_id"], strict=True),
                    zip(demo.truth["left_id"], demo.truth["right_id"], strict=True))
    assert s["f1"] >= 0.9
    loaded = Matcher(cache_dir=matcher.cache_dir, reranker=tmp_path / "rr")
    again = loaded.match(demo.left, demo.right, right_columns=RIGHT, one_to_one=True)
    pd.testing.assert_frame_equal(again[["left_id", "right_id", "probability"]],
                                  out[["left_id", "right_id", "probability"]])


def test_fit_reranker_rejects_bad_labels(matcher, demo):
    from mmmatch.pipeline import Matcher

    pairs = _labelled_demo_pairs(demo).astype({"label": object})
    pairs.loc[4, "label"] = "yes"
    with pytest.raises(ValueError, match="row 4 has label 'yes'"):
        Matcher(cache_dir=matcher.cache_dir).fit_reranker(demo.left, demo.right, pairs,
                                                          right_columns=RIGHT)


def test_match_rows_carry_the_decisive_features(matcher, demo):
    from mmmatch.pipeline import Matcher

    m = Matcher(cache_dir=matcher.cache_dir)
    m.fit_reranker(demo.left, demo.right, _labelled_demo_pairs(demo), right_columns=RIGHT,
                   max_iter=30)
    out = m.match(demo.left, demo.right, right_columns=RIGHT, all_candidates=True)
    assert out["decisive"].map(lambda s: len(s.split("; "))).eq(3).all()
    # the first feature named is the one with the largest absolute contribution
    frame = out.assign(left_text=out["title_left"].fillna(""),
                       right_text=out["name_right"].fillna(""))
    contrib = m.reranker_.contributions(frame)[m.reranker_.feature_names_]
    first = contrib.abs().idxmax(axis=1)
    assert (out["decisive"].str.split("=").str[0] == first).mean() > 0.95


def test_dedupe_average_linkage_never_merges_below_min_average(matcher, demo):
    cat = pd.concat([pd.read_csv(demo.left),
                     pd.read_csv(demo.right).rename(columns={"sku": "id", "name": "title"})],
                    ignore_index=True)
    cat["image"] = [str(demo.folder / p) for p in cat["image"]]
    cat["id"] = [f"x{i}" for i in range(len(cat))]
    rows, pairs = matcher.dedupe(cat, threshold=-0.2, return_pairs=True, mutual_k=None,
                                 max_cluster_size=None, linkage="average", min_average=0.05)
    single = matcher.dedupe(cat, threshold=-0.2, mutual_k=None, max_cluster_size=None)
    assert rows["cluster_id"].nunique() >= single["cluster_id"].nunique()
    # average linkage refines single linkage: never joins what single linkage kept apart
    joint = pd.DataFrame({"a": rows["cluster_id"], "s": single["cluster_id"]})
    assert (joint.groupby("a")["s"].nunique() == 1).all()
    # each cluster's mean over its matched pairs (the rest counting as the lowest match
    # score) is at least min_average
    low = pairs["score"].min()
    for _, group in rows[rows["cluster_size"] > 1].groupby("cluster_id"):
        ids = set(group["id"])
        inside = pairs[pairs["left_id"].isin(ids) & pairs["right_id"].isin(ids)]
        inside = inside.assign(a=inside[["left_id", "right_id"]].min(axis=1),
                               b=inside[["left_id", "right_id"]].max(axis=1))
        edges = inside.drop_duplicates(["a", "b"])["score"]
        n_pairs = len(ids) * (len(ids) - 1) // 2
        mean = (edges.sum() + (n_pairs - len(edges)) * low) / n_pairs
        assert mean >= 0.05 - 1e-6
    with pytest.raises(ValueError, match="min_average"):
        matcher.dedupe(cat, linkage="average")
