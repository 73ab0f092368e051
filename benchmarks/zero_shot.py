"""Zero-shot benchmark: no training, default encoders, on the shared real datasets.

* Grocery Store: test photos -> the 81 catalogue products (iconic image + name +
  description), searched through ``SearchIndex`` with the photo alone, the typed title alone
  (the coarse class name) and both: top-1 / top-5.
* Abt-Buy, Amazon-Google: literature protocol (threshold chosen on ``valid``, precision /
  recall / F1 on ``test``) with ``Matcher.score_pairs``; candidate recall@1/10/50 of
  ``Matcher.candidates`` over the full gold tables.
* Throughput on this machine: images/s end to end (read + decode + preprocess + model) and
  model only, titles/s, FAISS queries/s for 10k queries against 100k x 384.

    python benchmarks/zero_shot.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pandas as pd
from _common import parser, write

from data_prep.entity_matching import load_em_dataset
from data_prep.grocery import load_grocery
from mmmatch import Matcher, SearchIndex
from mmmatch.cache import EmbeddingCache
from mmmatch.catalogue import load_catalogue
from mmmatch.encode import encode_images, encode_texts
from mmmatch.encoders import get_encoder
from mmmatch.index import EmbeddingIndex
from mmmatch.metrics import best_f1_threshold, pair_scores, recall_at_k


def grocery(data_dir: str, cache: EmbeddingCache, limit: int | None) -> dict[str, float]:
    data = load_grocery(data_dir)
    photos = data.photos["test"]
    if limit:
        photos = photos.sample(n=min(limit, len(photos)), random_state=0)
    matcher = Matcher(cache_dir=cache.path, show_progress=True)
    index = SearchIndex.build(data.catalogue, matcher,
                              columns={"title": "title", "text": ("description",)})
    out: dict[str, float] = {"grocery.test_photos": float(len(photos))}
    queries = {
        "image": (photos["image"].tolist(), None),
        "title": (None, photos["typed_title"].tolist()),
        "fused": (photos["image"].tolist(), photos["typed_title"].tolist()),
    }
    for mode, (images, titles) in queries.items():
        res = index.search_batch(images=images, titles=titles, k=5, cache=cache)
        truth = photos["label"].to_numpy()
        hit = res["id"].to_numpy() == truth[res["query"].to_numpy()]
        ranks = res["rank"].to_numpy()
        per_query = pd.DataFrame({"q": res["query"], "top1": hit & (ranks == 1), "top5": hit})
        agg = per_query.groupby("q")[["top1", "top5"]].any()
        out[f"grocery.{mode}.top1"] = float(agg["top1"].sum() / len(photos))
        out[f"grocery.{mode}.top5"] = float(agg["top5"].sum() / len(photos))
        print(mode, out[f"grocery.{mode}.top1"], out[f"grocery.{mode}.top5"], flush=True)
    return out


def entity_matching(data_dir: str, name: str, cache: EmbeddingCache, hubness_k: int
                    ) -> dict[str, float]:
    ds = load_em_dataset(data_dir, name)
    key = name.replace("-", "_")
    matcher = Matcher(image_encoder=None, cache_dir=cache.path, show_progress=True,
                      hubness_k=hubness_k)
    scored = {
        split: matcher.score_pairs(ds.left, ds.right, pairs, ds.columns, ds.columns)
        for split, pairs in ds.pairs.items() if split in ("valid", "test")
    }
    threshold, valid_f1 = best_f1_threshold(scored["valid"]["score"], scored["valid"]["label"])
    test = scored["test"]
    predicted = test.loc[test["score"] >= threshold, ["left_id", "right_id"]]
    truth = test.loc[test["label"] == 1, ["left_id", "right_id"]]
    s = pair_scores(map(tuple, predicted.to_numpy()), map(tuple, truth.to_numpy()))
    out = {f"{key}.test.{m}": s[m] for m in ("precision", "recall", "f1")}
    out[f"{key}.valid.f1"] = valid_f1
    out[f"{key}.threshold"] = threshold

    start = time.perf_counter()
    left = load_catalogue(ds.full_left, ds.columns, name=f"{name} A")
    right = load_catalogue(ds.full_right, ds.columns, name=f"{name} B")
    le, re_, layout = matcher._encode_pair(left, right)
    cands = matcher.candidates(le, re_, layout, k=50)
    out[f"{key}.full.candidates_s"] = time.perf_counter() - start
    recall = recall_at_k(cands, ds.gold, (1, 10, 50))
    for k, v in recall.items():
        out[f"{key}.full.recall@{k}"] = v
    print(name, out, flush=True)
    return out


def throughput(data_dir: str, n_images: int = 512, n_titles: int = 4000) -> dict[str, float]:
    import torch

    out: dict[str, float] = {}
    image_enc = get_encoder("efficientnet-lite0", "image")
    paths = load_grocery(data_dir).photos["train"]["image"].sample(
        n=n_images, random_state=0).tolist()
    h, w = image_enc.preprocess.size
    pixels = np.random.default_rng(0).normal(size=(n_images, 3, h, w)).astype(np.float32)
    image_enc.encode_pixels(pixels[:32])  # warm-up
    start = time.perf_counter()
    for i in range(0, n_images, image_enc.batch_size):
        image_enc.encode_pixels(pixels[i : i + image_enc.batch_size])
    out["throughput.image_model_only_per_s"] = n_images / (time.perf_counter() - start)
    start = time.perf_counter()
    _, ok, _ = encode_images(paths, image_enc)  # no cache: really read, decode, embed
    out["throughput.image_per_s"] = int(ok.sum()) / (time.perf_counter() - start)
    out["throughput.image_end_to_end_ratio"] = (
        out["throughput.image_per_s"] / out["throughput.image_model_only_per_s"])

    text_enc = get_encoder("minilm-l6", "text")
    ds = load_em_dataset(data_dir, "amazon-google")
    titles = pd.concat([ds.left["title"], ds.right["title"]]).drop_duplicates().tolist()
    titles = titles[:n_titles]
    encode_texts(titles[:64], text_enc)  # warm-up
    start = time.perf_counter()
    encode_texts(titles, text_enc)
    out["throughput.title_per_s"] = len(titles) / (time.perf_counter() - start)
    out["throughput.title_tokens_mean"] = float(np.mean([
        len(ids) for ids in text_enc.model.tokenizer(titles[:500])["input_ids"]]))

    rng = np.random.default_rng(0)
    base = rng.normal(size=(100_000, 384)).astype(np.float32)
    queries = rng.normal(size=(10_000, 384)).astype(np.float32)
    index = EmbeddingIndex(384, "cosine")
    index.add(base, np.arange(len(base)))
    index.search(queries[:100], 10)
    start = time.perf_counter()
    index.search(queries, 10)
    out["throughput.search_qps"] = len(queries) / (time.perf_counter() - start)
    out["throughput.torch_threads"] = float(torch.get_num_threads())
    print(out, flush=True)
    return out


def main() -> None:
    p = parser("zero_shot", __doc__.splitlines()[0])
    p.add_argument("--only", choices=["grocery", "text", "throughput"], action="append",
                   help="run only these parts (repeatable)")
    p.add_argument("--grocery-limit", type=int, help="use a sample of the test photos")
    p.add_argument("--cache-dir", help="embedding cache (default: a fresh temporary folder)")
    p.add_argument("--hubness-k", type=int, default=Matcher().hubness_k,
                   help="CSLS neighbourhood of the text benchmarks (default: the library's)")
    args = p.parse_args()
    parts = args.only or ["grocery", "text", "throughput"]
    results: dict[str, float] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(args.cache_dir or tmp)
        if "throughput" in parts:  # first, on an idle machine with cold caches
            results |= throughput(args.data_dir)
        if "grocery" in parts:
            results |= grocery(args.data_dir, cache, args.grocery_limit)
        if "text" in parts:
            for name in ("abt-buy", "amazon-google"):
                results |= entity_matching(args.data_dir, name, cache, args.hubness_k)
    results["total_s"] = time.perf_counter() - start
    write(results, args.out)


if __name__ == "__main__":
    main()
