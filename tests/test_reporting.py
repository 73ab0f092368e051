"""The HTML report: its pure parts against brute force, the page's content, a real browser."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import image_bytes

from mmmatch.calibrate import ThresholdCalibrator
from mmmatch.catalogue import PROBLEM_COLUMNS
from mmmatch.metrics import pair_scores
from mmmatch.reporting import (
    pair_clusters,
    pair_labels,
    pr_curve,
    render_report,
    report,
    summarize,
    uncertain_first,
)

pytest.importorskip("jinja2")
pytest.importorskip("matplotlib")

EVIDENCE = ["image_sim", "text_sim", "lexical_sim", "word_sim"]


# -- data ---------------------------------------------------------------------------------------


def _catalogues(n: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two small catalogues with photos as bytes; left row 3 has bytes that are no image,
    left row 4 no photo, right row 5 a path to a missing file."""
    left = pd.DataFrame({
        "id": [f"L{i}" for i in range(n)],
        "title": [f"Oat drink {i} 1L" for i in range(n)],
        "image": [image_bytes(i) for i in range(n)],
    })
    left.loc[3, "image"] = b"these bytes are not an image"
    left.loc[4, "image"] = None
    right = pd.DataFrame({
        "sku": [f"R{i}" for i in range(n)],
        "name": [f"oatly oat {i} litre" for i in range(n)],
        "image": [image_bytes(100 + i) for i in range(n)],
    })
    right.loc[5, "image"] = "/nonexistent/folder/photo.jpg"
    return left, right


def _pairs(n: int = 10, k: int = 3, seed: int = 0) -> pd.DataFrame:
    """``k`` candidates per left row, like ``Matcher.match(all_candidates=True)``: the true
    partner (L{i}, R{i}) is among them for most rows and scores higher on average."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        others = [int(j) for j in rng.permutation(n) if j != i]
        cands = others[:k] if i % 4 == 1 else [i, *others[: k - 1]]  # some partners missed
        for j in cands:
            rows.append({"left_id": f"L{i}", "right_id": f"R{j}",
                         "score": float(rng.normal(0.15 if i == j else -0.05, 0.08)),
                         **{c: float(rng.random()) for c in EVIDENCE}})
    pairs = pd.DataFrame(rows).drop_duplicates(["left_id", "right_id"])
    pairs = pairs.sort_values(["left_id", "score"], ascending=[True, False])
    pairs["rank"] = pairs.groupby("left_id").cumcount() + 1
    pairs["is_match"] = pairs["score"] >= 0.05
    pairs.loc[pairs.index[0], "word_sim"] = np.nan
    return pairs.reset_index(drop=True)


def _gold(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"left_id": [f"L{i}" for i in range(n)],
                         "right_id": [f"R{i}" for i in range(n)]})


PROBLEMS = [
    {"catalogue": "left", "row": 3, "id": "L3", "field": "image", "problem": "unreadable",
     "detail": "not an image format PIL can read", "action": "text_only"},
    {"catalogue": "right", "row": 5, "id": "R5", "field": "image", "problem": "missing",
     "detail": "no file at /nonexistent/folder/photo.jpg", "action": "text_only"},
]


class _Elements(html.parser.HTMLParser):
    """Every start tag with its attributes, and the page's visible text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.tags if name in a.get("class", "").split()]

    def by_id(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.tags if a.get("id") == name]


@pytest.fixture(scope="module")
def setting() -> dict:
    left, right = _catalogues()
    pairs = _pairs()
    pairs.attrs["problems"] = PROBLEMS
    return {"left": left, "right": right, "pairs": pairs, "gold": _gold()}


@pytest.fixture(scope="module")
def page(setting, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    path = report(setting["pairs"], setting["left"], setting["right"], output=out,
                  gold=setting["gold"], right_columns={"id": "sku", "title": "name"},
                  calibration={"objective": "f1", "target": None, "threshold": 0.05,
                               "precision": 0.9, "recall": 0.8, "f1": 0.85, "pairs": 120})
    assert path == out
    return path, path.read_text(encoding="utf-8")


def _union_find_components(edges: list[tuple[str, str]]) -> list[set[str]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    groups: dict[str, set[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), set()).add(x)
    return [g for g in groups.values() if len(g) >= 2]


# -- the pure parts -----------------------------------------------------------------------------


def test_summarize_against_brute_force(setting):
    pairs, gold = setting["pairs"], setting["gold"]
    s = summarize(pairs, 0.05, "score", gold, left_ids=setting["left"]["id"],
                  right_ids=setting["right"]["sku"])
    matched = pairs[pairs["is_match"]]
    assert s["n_left"] == 10 and s["n_right"] == 10
    assert s["n_candidates"] == len(pairs)
    assert s["n_matches"] == len(matched)
    assert s["n_left_matched"] == matched["left_id"].nunique()
    assert s["n_left_unmatched"] == 10 - matched["left_id"].nunique()
    assert s["n_right_matched"] == matched["right_id"].nunique()
    expected = pair_scores(zip(matched["left_id"], matched["right_id"], strict=True),
                           zip(gold["left_id"], gold["right_id"], strict=True))
    for key in ("precision", "recall", "f1", "tp", "fp", "fn"):
        assert s[key] == pytest.approx(expected[key]), key
    assert s["labelled"] and s["n_true"] == 10
    components = _union_find_components(
        [("L" + a, "R" + b) for a, b in zip(matched["left_id"], matched["right_id"],
                                            strict=True)])
    assert s["n_clusters"] == len(components)
    assert s["largest_cluster"] == max(map(len, components))


def test_summarize_decides_by_threshold_without_is_match_and_reads_labels(setting):
    pairs = setting["pairs"].drop(columns="is_match")
    keys = set(zip(setting["gold"]["left_id"], setting["gold"]["right_id"], strict=True))
    pairs["label"] = [int((a, b) in keys) for a, b in zip(pairs["left_id"], pairs["right_id"],
                                                          strict=True)]
    pairs.loc[pairs.index[:2], "label"] = np.nan  # unlabelled pairs are left out
    s = summarize(pairs, 0.1, "score")
    known = pairs[pairs["label"].notna()]
    predicted = known[known["score"] >= 0.1]
    truth = known[known["label"] == 1]
    expected = pair_scores(zip(predicted["left_id"], predicted["right_id"], strict=True),
                           zip(truth["left_id"], truth["right_id"], strict=True))
    assert s["n_matches"] == int((pairs["score"] >= 0.1).sum())
    for key in ("precision", "recall", "f1"):
        assert s[key] == pytest.approx(expected[key])
    assert "precision" not in summarize(pairs.drop(columns="label"), 0.1)


def test_summarize_within_one_catalogue_counts_each_pair_once():
    pairs = pd.DataFrame({"left_id": ["a", "b", "a", "c", "e"],
                          "right_id": ["b", "a", "c", "d", "f"],
                          "score": [0.9, 0.8, 0.2, 0.7, -0.5]})
    gold = pd.DataFrame({"left_id": ["b", "d"], "right_id": ["a", "c"], "label": [1, 1]})
    s = summarize(pairs, 0.5, gold=gold, left_ids=list("abcdefg"), symmetric=True)
    assert s["n_candidates"] == 4 and s["n_matches"] == 2  # (a,b) ~ (b,a); (a,c) below
    assert s["n_left_matched"] == 4 and s["n_left_unmatched"] == 3  # e, f, g
    assert (s["precision"], s["recall"], s["n_clusters"]) == (1.0, 1.0, 2)


def test_uncertain_first_orders_by_distance_to_threshold():
    rng = np.random.default_rng(3)
    pairs = pd.DataFrame({"probability": rng.random(50).round(2), "i": np.arange(50)})
    pairs.loc[[4, 9], "probability"] = np.nan
    out = uncertain_first(pairs, 0.6, "probability")
    gap = (out["probability"] - 0.6).abs().to_numpy()
    assert np.all(np.diff(gap[:-2]) >= 0)
    assert list(out["i"].iloc[-2:]) == [4, 9]  # missing values last
    brute = sorted(range(50), key=lambda i: (np.nan_to_num(abs(pairs["probability"][i] - 0.6),
                                                           nan=np.inf), i))
    assert list(out["i"]) == brute  # stable on ties
    with pytest.raises(KeyError, match="probability"):
        uncertain_first(pairs.drop(columns="probability"), 0.5, "probability")


def test_pr_curve_against_brute_force():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 12, 80) / 10
    labels = rng.random(80) < 0.4
    curve = pr_curve(scores, labels, positives=int(labels.sum()) + 3)
    assert list(curve["threshold"]) == sorted(set(scores))
    for row in curve.itertuples():
        pred = scores >= row.threshold
        tp = int((pred & labels).sum())
        assert row.precision == pytest.approx(tp / pred.sum())
        assert row.recall == pytest.approx(tp / (labels.sum() + 3))
    cal = ThresholdCalibrator().fit(scores, labels, positives=int(labels.sum()) + 3)
    np.testing.assert_allclose(curve[["threshold", "precision", "recall", "f1"]],
                               cal.curve_, rtol=1e-12)
    assert pr_curve(np.array([]), np.array([], bool)).empty


def test_pair_clusters_against_union_find():
    rng = np.random.default_rng(5)
    pairs = pd.DataFrame({"left_id": rng.integers(0, 15, 20).astype(str),
                          "right_id": rng.integers(0, 15, 20).astype(str)})
    got = pair_clusters(pairs)  # two catalogues: left "1" is not right "1"
    expected = _union_find_components(
        [("L" + a, "R" + b) for a, b in zip(pairs["left_id"], pairs["right_id"], strict=True)])
    found = [set((("L" if s == "left" else "R") + i) for s, i in zip(g["side"], g["id"],
                                                                     strict=True))
             for _, g in got.groupby("cluster_id")]
    assert sorted(map(sorted, found)) == sorted(map(sorted, expected))
    sizes = got.groupby("cluster_id")["cluster_size"].first().to_numpy()
    assert np.all(np.diff(sizes) <= 0)  # largest first
    same = pair_clusters(pairs, symmetric=True)
    expected = _union_find_components(list(zip(pairs["left_id"], pairs["right_id"],
                                               strict=True)))
    found = [set(g["id"]) for _, g in same.groupby("cluster_id")]
    assert sorted(map(sorted, found)) == sorted(map(sorted, expected))
    assert pair_clusters(pairs.iloc[:0]).empty


def test_pair_labels_from_gold_or_label_column():
    pairs = pd.DataFrame({"left_id": ["a", "b", "c"], "right_id": ["x", "y", "a"],
                          "label": [1, 0, np.nan]})
    gold = pd.DataFrame({"left_id": ["b", "a"], "right_id": ["y", "c"], "label": [1, 1]})
    np.testing.assert_array_equal(pair_labels(pairs, gold), [0, 1, 0])
    np.testing.assert_array_equal(pair_labels(pairs, gold, symmetric=True), [0, 1, 1])
    np.testing.assert_array_equal(pair_labels(pairs), [1, 0, np.nan])
    assert pair_labels(pairs.drop(columns="label")) is None
    with pytest.raises(ValueError, match="right_id"):
        pair_labels(pairs, gold.drop(columns="right_id"))
    with pytest.raises(ValueError, match="0 or 1"):
        pair_labels(pairs.assign(label=[1, 2, 0]))


# -- the page -----------------------------------------------------------------------------------


def test_report_is_self_contained(page):
    _, text = page
    doc = _Elements(text)
    for tag, attrs in doc.tags:
        assert tag != "link" and not (tag == "script" and "src" in attrs)
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs["href"]  # the page's own sections
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
    assert len(doc.by_id("histogram")) == 1 and len(doc.by_id("pr-curve")) == 1
    # thumbnails: one CSS class per distinct picture, its background a JPEG data URI
    urls = re.findall(r"url\(([^)]*)\)", text)
    assert urls and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    assert len(set(urls)) == len(urls)  # each picture embedded once
    classes = set(re.findall(r"\.(im\d+) \{ background-image", text))
    shown = {c for a in doc.with_class("thumb") for c in a["class"].split() if c in classes}
    assert shown == classes
    # without JavaScript every card is visible and the (dead) filter buttons are not
    assert not any("hidden" in a for a in doc.with_class("pair-card"))
    assert all("hidden" in a for a in doc.by_id("filters"))
    assert "http://" not in text and "https://" not in text
    assert "default-src 'none'" in text  # the browser may load nothing either


def test_report_sections_match_pandas(setting, page):
    _, text = page
    doc = _Elements(text)
    pairs = setting["pairs"]
    matched = pairs[pairs["is_match"]]
    cards = doc.with_class("pair-card")
    assert len(cards) == len(pairs)
    assert sum(c["data-match"] == "1" for c in cards) == len(matched)
    # uncertain first: the cards come in the order of |score - threshold|
    expected = uncertain_first(pairs, 0.05, "score")
    assert [(c["data-left"], c["data-right"]) for c in cards] == list(
        zip(expected["left_id"], expected["right_id"], strict=True))
    gaps = [abs(s - 0.05) for s in expected["score"]]
    assert gaps == sorted(gaps)
    # correctness against gold
    truth = set(zip(setting["gold"]["left_id"], setting["gold"]["right_id"], strict=True))
    wrong = sum(((a, b) in truth) != m for a, b, m in zip(pairs["left_id"], pairs["right_id"],
                                                          pairs["is_match"], strict=True))
    assert sum(c["data-correct"] == "0" for c in cards) == wrong
    # clusters and unmatched rows
    components = _union_find_components(
        [("L" + a, "R" + b) for a, b in zip(matched["left_id"], matched["right_id"],
                                            strict=True)])
    strips = doc.with_class("cluster-strip")
    assert len(strips) == len(components)
    assert sorted(int(s["data-size"]) for s in strips) == sorted(map(len, components))
    unmatched = set(setting["left"]["id"]) - set(matched["left_id"])
    assert len(doc.with_class("unmatched-row")) == len(unmatched) > 0
    # the summary's figures
    s = summarize(pairs, 0.05, gold=setting["gold"])
    flat = " ".join(" ".join(doc.text).split())
    assert f"{s['precision']:.3f} precision" in flat and f"{s['f1']:.3f} F1" in flat
    assert "(from the calibration)" in flat and "Chosen on 120 held-out labelled pairs" in flat


def test_report_lists_bad_images_and_shows_placeholders(page):
    _, text = page
    doc = _Elements(text)
    assert len(doc.with_class("problem-row")) == len(PROBLEMS)
    reasons = [a.get("data-reason") for a in doc.with_class("placeholder")]
    assert "unreadable" in reasons  # L3: bytes that are no image
    assert "missing" in reasons  # R5: a path to nowhere
    assert "none" in reasons  # L4: no photo at all
    # every thumbnail of L3 is a placeholder, never an <img>
    block = re.findall(r'<div class="side">(.*?)</div></div>', text, flags=re.S)
    l3 = [b for b in block if b.endswith("left id L3")]
    assert l3 and all('role="img"' not in b and 'data-reason="unreadable"' in b for b in l3)
    flat = " ".join(doc.text)
    assert "not an image format PIL can read" in flat


def test_report_escapes_text(setting, tmp_path):
    evil = '<script>alert("x")</script>'
    left = setting["left"].assign(title=[f"{evil} {i}" for i in range(10)])
    text = render_report(setting["pairs"], left, setting["right"], title=f"Report {evil}",
                         right_columns={"id": "sku", "title": "name"},
                         calibration=f"picked by hand {evil}")
    assert evil not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text
    assert text.count("<script") == 1  # only the report's own filter script


def test_report_caps_cards_and_reads_catalogue_columns_from_pairs(setting):
    left, right = setting["left"], setting["right"]
    pairs = setting["pairs"]
    joined = pd.concat([
        pairs.reset_index(drop=True),
        left.set_index("id").loc[pairs["left_id"]].add_suffix("_left").reset_index(drop=True),
        right.set_index("sku").loc[pairs["right_id"]].add_suffix("_right")
        .reset_index(drop=True)], axis=1)
    text = render_report(joined, max_pairs=5, right_columns={"title": "name"})
    doc = _Elements(text)
    assert len(doc.with_class("pair-card")) == 5
    assert "oatly oat" in text and "Oat drink" in text  # titles from the suffixed columns
    assert "background-image: url(data:image/jpeg;base64," in text
    assert f"5 of {len(pairs)} candidate pairs" in " ".join(" ".join(doc.text).split())


def test_rows_of_a_left_join_count_as_unmatched(setting):
    pairs = setting["pairs"]
    joined = pd.concat([pairs[pairs["is_match"]], pd.DataFrame({"left_id": ["L98", "L99"]})],
                       ignore_index=True)  # like Matcher.match(how="left")
    doc = _Elements(render_report(joined))
    assert len(doc.with_class("pair-card")) == int(pairs["is_match"].sum())
    assert len(doc.with_class("unmatched-row")) == 2
    assert summarize(joined, 0.05)["n_left_unmatched"] == 2


def test_report_from_files_as_mmmatch_match_writes_them(setting, tmp_path):
    left, right = setting["left"], setting["right"]
    pairs = setting["pairs"].assign(title_left=lambda d: "t " + d["left_id"])
    pairs.to_csv(tmp_path / "matches.csv", index=False)
    pd.DataFrame(PROBLEMS).to_csv(tmp_path / "matches.problems.csv", index=False)
    setting["gold"].to_csv(tmp_path / "gold.csv", index=False)
    out = report(tmp_path / "matches.csv", left, right, output=tmp_path / "r.html",
                 gold=tmp_path / "gold.csv", right_columns={"id": "sku", "title": "name"})
    doc = _Elements(out.read_text(encoding="utf-8"))
    cards = doc.with_class("pair-card")
    assert len(cards) == len(pairs)
    assert sum(c["data-match"] == "1" for c in cards) == int(pairs["is_match"].sum())
    assert len(doc.with_class("problem-row")) == len(PROBLEMS)
    expected = summarize(setting["pairs"], 0.05, gold=setting["gold"])
    assert f"{expected['f1']:.3f} F1" in " ".join(" ".join(doc.text).split())


def test_report_of_a_dedupe():
    rows = pd.DataFrame({"id": list("abcdefgh"), "title": [f"item {c}" for c in "abcdefgh"],
                         "image": [image_bytes(i) for i in range(8)],
                         "cluster_id": [0, 0, 0, 1, 1, 2, 3, 4]})
    rows.attrs["problems"] = [dict(zip(PROBLEM_COLUMNS, [6, "g", "image", "truncated", "",
                                                         "text_only"], strict=True))]
    doc = _Elements(render_report(rows))  # rows first, as Matcher.dedupe returns them
    assert len(doc.with_class("cluster-strip")) == 2
    assert sorted(int(a["data-size"]) for a in doc.with_class("cluster-strip")) == [2, 3]
    assert len(doc.with_class("unmatched-row")) == 3  # f, g, h are alone
    assert len(doc.with_class("problem-row")) == 1
    pairs = pd.DataFrame({"left_id": ["a", "b", "d", "c"], "right_id": ["b", "a", "e", "f"],
                          "score": [0.4, 0.4, 0.2, -0.1], "is_match": [True, True, True, False]})
    doc = _Elements(render_report(pairs, clusters=rows, max_clusters=1))
    assert len(doc.with_class("pair-card")) == 3  # (a, b) and (b, a) are one pair
    assert len(doc.with_class("cluster-strip")) == 1


def test_threshold_sources(setting):
    pairs = setting["pairs"]

    def threshold_line(**kw) -> str:
        doc = _Elements(render_report(pairs, max_pairs=0, **kw))
        return " ".join(" ".join(doc.text).split())

    assert "≥ 0.0700 (given)" in threshold_line(threshold=0.07)
    lowest = pairs.loc[pairs["is_match"], "score"].min()
    assert f"≥ {lowest:.4f} (inferred" in threshold_line()
    assert "(the default of mmmatch.Matcher)" in render_report(
        pairs.drop(columns="is_match"), max_pairs=0)
    cal = ThresholdCalibrator("precision_at", target=0.5).fit(
        pairs["score"].to_numpy(), pairs["right_id"].str[1:] == pairs["left_id"].str[1:])
    text = render_report(pairs.drop(columns="is_match"), calibration=cal, max_pairs=0)
    assert f"{cal.threshold_:.4f}" in text and "precision at least 0.50" in text
    assert len(_Elements(text).by_id("pr-curve")) == 1  # the calibration's curve, no labels


def test_bad_arguments(setting, tmp_path):
    with pytest.raises(ValueError, match="left_id"):
        render_report(pd.DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match="decision column 'probability'"):
        render_report(setting["pairs"], decision_column="probability")
    with pytest.raises(ValueError, match="max_pairs"):
        render_report(setting["pairs"], max_pairs=-1)
    with pytest.raises(TypeError, match="calibration"):
        render_report(setting["pairs"], calibration=3.5)
    out = tmp_path / "r.html"
    with pytest.raises(ValueError):
        report(setting["pairs"], output=out, max_rows=-1)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_missing_extra_says_what_to_install(setting, monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ImportError, match=re.escape('pip install "mmmatch[report]"')):
        render_report(setting["pairs"])


# -- in a real browser --------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _chromium(url: str, profile: Path, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    done = subprocess.run([CHROMIUM, *flags, *args, url], capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (/usr/bin/chromium)")
def test_report_renders_in_headless_chromium(setting, page, tmp_path):
    from PIL import Image

    path, _ = page
    url = path.resolve().as_uri()
    png = tmp_path / "shot.png"
    _chromium(url, tmp_path / "p1", f"--screenshot={png}", "--window-size=1280,2000")
    with Image.open(png) as im:
        assert im.size == (1280, 2000)
        assert np.asarray(im.convert("L"), dtype=np.float64).var() > 0

    n_pairs = len(setting["pairs"])
    dom = _Elements(_chromium(url, tmp_path / "p2", "--dump-dom"))
    cards = dom.with_class("pair-card")
    assert len(cards) == n_pairs and not any("hidden" in c for c in cards)
    assert not any("hidden" in a for a in dom.by_id("filters"))  # the script ran
    assert f"{n_pairs} of {n_pairs} pairs shown" in "".join(dom.text)

    # a filter chosen in the address: only the wrong decisions stay visible
    dom = _Elements(_chromium(url + "#filter=wrong", tmp_path / "p3", "--dump-dom"))
    shown = [c for c in dom.with_class("pair-card") if "hidden" not in c]
    assert shown and all(c["data-correct"] == "0" for c in shown)
    assert len(shown) == sum(c["data-correct"] == "0" for c in cards)
    assert len(dom.with_class("cluster-strip")) > 0 and len(dom.by_id("summary")) == 1


def test_the_synthetic_data_covers_the_cases(setting):
    """What the assertions above rely on: both decisions, no repeated pair, and the rows
    with bad images among the candidates."""
    pairs = setting["pairs"]
    assert pairs["is_match"].any() and (~pairs["is_match"]).any()
    assert not pairs[["left_id", "right_id"]].duplicated().any()
    assert {"L3", "L4"} <= set(pairs["left_id"]) and "R5" in set(pairs["right_id"])
