"""Reranking benchmark: Abt-Buy and Amazon-Google with the literature's protocol, and end to end.

* Protocol of DeepMatcher / Ditto: the reranker (retrieval evidence + pair features, and with
  ``--cross-encoder`` a fine-tuned MiniLM cross-encoder, gradient-boosted) trains on
  ``train.csv``; the threshold that
  maximises F1 is chosen on ``valid.csv`` (``ThresholdCalibrator``, which refuses training
  pairs); precision / recall / F1 on ``test.csv``.
* End to end: candidates retrieved from the full tables (``Matcher.candidates``), reranked,
  thresholded with the valid threshold, one-to-one (greedy), against the full gold. The
  full tables contain the training products too, so this figure is optimistic;
  ``e2e_unseen`` leaves out every pair labelled in ``train`` / ``valid``, predicted or gold.

* Grocery Store: the ``test`` photos deduplicated into products by a model trained on
  ``train``, threshold and clustering guard chosen on ``val`` (per-item F1, purity).

    python benchmarks/rerank.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import tempfile
import time

import pandas as pd
import torch
from _common import parser, write

from data_prep.entity_matching import load_em_dataset
from mmmatch import Matcher
from mmmatch.cache import EmbeddingCache
from mmmatch.calibrate import ThresholdCalibrator
from mmmatch.catalogue import load_catalogue
from mmmatch.cluster import one_to_one
from mmmatch.metrics import pair_scores
from mmmatch.rerank import CrossEncoderScorer, PairReranker, with_texts


def _with_texts(pairs: pd.DataFrame, left: pd.DataFrame, right: pd.DataFrame,
                columns: dict) -> pd.DataFrame:
    """Add ``left_text, right_text, left_price, right_price`` to pairs of ids."""
    out = with_texts(pairs, load_catalogue(left, columns), load_catalogue(right, columns))
    for side, df in (("left", left), ("right", right)):
        if "price" in df:
            price = pd.to_numeric(df["price"], errors="coerce")
            price.index = df["id"].astype(str)
            out[f"{side}_price"] = price.reindex(out[f"{side}_id"].astype(str)).to_numpy()
    return out


def run(data_dir: str, name: str, cache: EmbeddingCache, args) -> dict[str, float]:
    ds = load_em_dataset(data_dir, name)
    key = name.replace("-", "_")
    matcher = Matcher(image_encoder=None, cache_dir=cache.path, show_progress=True)
    scored = {split: _with_texts(matcher.score_pairs(ds.left, ds.right, pairs, ds.columns,
                                                     ds.columns), ds.left, ds.right,
                                 ds.columns)
              for split, pairs in ds.pairs.items()}
    start = time.perf_counter()
    ce = None if not args.cross_encoder else CrossEncoderScorer(
        epochs=args.epochs, max_length=args.max_length, seed=args.seed)
    reranker = PairReranker(ce, folds=args.folds, seed=args.seed).fit(scored["train"])
    out: dict[str, float] = {f"{key}.train_s": time.perf_counter() - start,
                             f"{key}.train_pairs": float(len(scored["train"]))}
    valid = scored["valid"]
    p_valid = reranker.predict_proba(valid)
    cal = ThresholdCalibrator("f1").fit(p_valid, valid["label"].to_numpy(),
                                        pairs=valid, exclude=reranker)
    out[f"{key}.threshold"] = float(cal.threshold_)
    out[f"{key}.valid.f1"] = float(cal.f1_)
    test = scored["test"]
    p_test = reranker.predict_proba(test)
    predicted = test.loc[p_test >= cal.threshold_, ["left_id", "right_id"]]
    truth = test.loc[test["label"] == 1, ["left_id", "right_id"]]
    s = pair_scores(map(tuple, predicted.to_numpy()), map(tuple, truth.to_numpy()))
    for m in ("precision", "recall", "f1"):
        out[f"{key}.test.{m}"] = s[m]
    print(name, {k: round(v, 4) for k, v in out.items()}, flush=True)

    # end to end over the full tables
    t = time.perf_counter()
    left = load_catalogue(ds.full_left, ds.columns, name=f"{name} A")
    right = load_catalogue(ds.full_right, ds.columns, name=f"{name} B")
    le, re_, layout = matcher._encode_pair(left, right)
    cands = matcher.candidates(le, re_, layout, k=args.k)
    cands = _with_texts(cands, ds.full_left, ds.full_right, ds.columns)
    cands["probability"] = reranker.predict_proba(cands)
    matched = cands[cands["probability"] >= cal.threshold_]
    matched = one_to_one(matched, score="probability")
    gold = set(zip(ds.gold["left_id"].astype(str), ds.gold["right_id"].astype(str),
                   strict=True))
    e2e = pair_scores(zip(matched["left_id"].astype(str), matched["right_id"].astype(str),
                          strict=True), gold)
    for m in ("precision", "recall", "f1"):
        out[f"{key}.e2e.{m}"] = e2e[m]
    # the same, leaving out every pair the reranker trained or was calibrated on (both in
    # what it predicted and in the gold): only pairs it never saw labelled
    seen = {(str(a), str(b)) for split in ("train", "valid")
            for a, b in zip(ds.pairs[split]["left_id"], ds.pairs[split]["right_id"],
                            strict=True)}
    unseen = pair_scores(
        [p for p in zip(matched["left_id"].astype(str), matched["right_id"].astype(str),
                        strict=True) if p not in seen], gold - seen)
    for m in ("precision", "recall", "f1"):
        out[f"{key}.e2e_unseen.{m}"] = unseen[m]
    out[f"{key}.e2e_unseen.gold"] = float(len(gold - seen))
    out[f"{key}.e2e.candidates"] = float(len(cands))
    out[f"{key}.e2e_s"] = time.perf_counter() - t
    print(name, {k: round(v, 4) for k, v in out.items()}, flush=True)
    return out


def purity(true_groups: pd.Series, predicted: pd.Series) -> float:
    """Share of items whose predicted cluster's majority label is their own label."""
    frame = pd.DataFrame({"true": true_groups.to_numpy(), "pred": predicted.to_numpy()})
    majority = frame.groupby("pred")["true"].agg(lambda x: x.value_counts().index[0])
    return float((frame["pred"].map(majority) == frame["true"]).mean())


def grocery_dedupe(data_dir: str, cache: EmbeddingCache, args) -> dict[str, float]:
    """Deduplicate the Grocery Store ``test`` photos into products.

    A model is trained on the ``train`` photos (head mode, Lite0 + MiniLM, typed titles as
    the text). The decision threshold and the clustering guard (mutual top-k, cluster size
    cap, single or average linkage; 0 = off in the JSON) are chosen on the ``val`` photos
    (60 of the 81 products, none of them trained on) by per-item F1; then the ``test``
    photos are deduplicated with that choice and scored by the Shopee per-item F1 and purity.
    """
    import itertools

    from data_prep.grocery import load_grocery
    from mmmatch.metrics import group_f1

    data = load_grocery(data_dir)
    if args.grocery_limit:  # a quick check of the script, not a result
        data.photos = {k: v.sample(n=min(args.grocery_limit, len(v)), random_state=0)
                       for k, v in data.photos.items()}
    split = {name: data.photos[name].assign(id=lambda d, n=name: [f"{n}{i}" for i in
                                                                  range(len(d))])
             for name in ("train", "val", "test")}
    columns = {"id": "id", "title": "typed_title", "image": "image"}
    start = time.perf_counter()
    matcher = Matcher(cache_dir=cache.path, show_progress=True).fit(
        split["train"], label_column="label", columns=columns, n_views=args.grocery_views,
        seed=args.seed)
    out = {"grocery.dedupe.train_s": time.perf_counter() - start}

    def dedupe(df: pd.DataFrame, t: float, guard: tuple) -> pd.Series:
        k, size, avg = guard
        rows = matcher.dedupe(df, threshold=t, columns=columns, mutual_k=k,
                              max_cluster_size=size,
                              linkage="single" if avg is None else "average",
                              min_average=None if avg is None else t + avg)
        return pd.Series(rows["cluster_id"].to_numpy(), index=rows["id"].to_numpy())

    t0 = matcher.decision_threshold
    val = split["val"]
    val_truth = pd.Series(val["label"].to_numpy(), index=val["id"].to_numpy())
    grid = itertools.product((0.0, 0.05, 0.1), (None, 5, 10), (None, 50),
                             (None, 0.05, 0.1, 0.15, 0.2))
    best = None
    for dt, k, size, avg in grid:
        f1 = group_f1(val_truth, dedupe(val, t0 + dt, (k, size, avg)))
        if best is None or f1 > best[0]:
            best = (f1, t0 + dt, (k, size, avg))
    assert best is not None
    f1, t, (k, size, avg) = best
    out |= {"grocery.dedupe.val_item_f1": f1, "grocery.dedupe.threshold": t,
            "grocery.dedupe.model_threshold": t0, "grocery.dedupe.mutual_k": float(k or 0),
            "grocery.dedupe.max_cluster_size": float(size or 0),
            "grocery.dedupe.average_margin": float(-1 if avg is None else avg)}
    test = split["test"]
    truth = pd.Series(test["label"].to_numpy(), index=test["id"].to_numpy())
    t1 = time.perf_counter()
    predicted = dedupe(test, t, (k, size, avg))
    out["grocery.dedupe.test_s"] = time.perf_counter() - t1
    out["grocery.dedupe.item_f1"] = group_f1(truth, predicted)
    out["grocery.dedupe.purity"] = purity(truth, predicted)
    out["grocery.dedupe.clusters"] = float(predicted.nunique())
    out["grocery.dedupe.products"] = float(truth.nunique())
    # the catalogue defaults for comparison (mutual top-5, at most 20, threshold as fitted)
    default = dedupe(test, t0, (5, 20, None))
    out["grocery.dedupe.defaults.item_f1"] = group_f1(truth, default)
    out["grocery.dedupe.defaults.purity"] = purity(truth, default)
    print(out, flush=True)
    return out


def main() -> None:
    p = parser("rerank", __doc__.splitlines()[0])
    p.add_argument("--datasets", default="abt-buy,amazon-google,grocery")
    p.add_argument("--grocery-views", type=int, default=2, help="views per training photo")
    p.add_argument("--grocery-limit", type=int, help="photos per split (a quick check)")
    p.add_argument("--epochs", type=int, default=2, help="cross-encoder epochs")
    p.add_argument("--max-length", type=int, default=64, help="cross-encoder tokens per pair")
    p.add_argument("--folds", type=int, default=2, help="cross-fitting folds")
    p.add_argument("--cross-encoder", action="store_true",
                   help="also fine-tune the MiniLM cross-encoder (about 12-15 min per dataset "
                   "on 2 CPU cores; it added nothing measurable here, see the README)")
    p.add_argument("-k", type=int, default=10, help="candidates per item end to end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="embedding cache (default: a fresh temporary folder)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    results: dict[str, float] = {"rerank.cross_encoder": float(args.cross_encoder),
                                 "rerank.epochs": args.epochs, "rerank.folds": args.folds}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(args.cache_dir or tmp)
        for name in args.datasets.split(","):
            if name.strip() == "grocery":
                results |= grocery_dedupe(args.data_dir, cache, args)
            else:
                results |= run(args.data_dir, name.strip(), cache, args)
    results["total_s"] = time.perf_counter() - start
    write(results, args.out)


if __name__ == "__main__":
    main()
