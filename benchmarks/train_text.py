"""Fine-tune MiniLM on Abt-Buy / Amazon-Google train pairs; candidate recall before and after.

For each dataset:

1. Training pairs: the positives of ``train.csv`` as (table A text, table B text), the texts
   built as the Matcher builds them (``load_catalogue`` with the dataset's columns: the title,
   plus `` | manufacturer`` for Amazon-Google). Hard negative per pair: of the labelled
   negatives of ``train.csv`` with the same left item, the one the zero-shot MiniLM finds most
   similar to the anchor; for left items without one, the nearest table-B item (zero-shot
   MiniLM) that is neither a train positive of that item nor the same text as its positive.
2. :func:`mmmatch.tune_text.fine_tune_text` from ``minilm-l6`` (fixed settings, see the
   ``train.*`` keys; nothing is chosen on test), into a temporary folder outside the repo.
3. Candidate recall@1/10/50 of ``Matcher.candidates(k=50)`` over the FULL gold tables, as
   ``zero_shot.py`` measures it (images off, default lexical evidence and hubness), with the
   zero-shot MiniLM (``.before``) and the fine-tuned folder (``text_encoder=``); also with the
   text embedding alone (``lexical=False``: keys ``<key>.dense*``), where fine-tuning is not
   diluted by the TF-IDF evidence (the default score weights give the embedding 0.05 of
   0.5). These datasets have no images, so the ``full`` keys already are the text-only
   Matcher (image encoder off, default lexical evidence).

Train pairs are a subset of the full gold, but the ids differ (``tableA/B`` are the
DeepMatcher tables, lower-cased and re-tokenised). Each ``tableA/B`` item is mapped to the
full-gold item(s) with the same title reduced to its lower-case letters and digits
(``"Sony Turntable - PSLX350H"`` -> ``"sonyturntablepslx350h"``; all duplicates of that title),
and otherwise to its nearest full-gold title by TF-IDF character 3-5-gram cosine when that is
>= 0.6 (counts in ``<key>.map.*``). Then:

* ``<key>.full_heldout.*``: gold pairs that are not a mapped train positive.
* ``<key>.full_unseen.*``: gold pairs neither of whose items is in any mapped train positive
  (stricter: the model never saw either product as a positive).

    python benchmarks/train_text.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import parser, write

from data_prep.entity_matching import EMDataset, load_em_dataset
from mmmatch import Matcher
from mmmatch.catalogue import load_catalogue
from mmmatch.encoders import get_encoder
from mmmatch.metrics import recall_at_k
from mmmatch.tune_text import fine_tune_text

KS = (1, 10, 50)
FUZZY_MIN_COS = 0.6


def squash(text: str) -> str:
    """Lower-case letters and digits only: ``"Sony Turntable - PSLX350H"`` ->
    ``"sonyturntablepslx350h"``."""
    return "".join(re.findall(r"[a-z0-9]+", str(text).lower()))


def map_items(small: pd.DataFrame, full: pd.DataFrame, title: str
              ) -> tuple[dict[str, set[str]], dict[str, int]]:
    """DeepMatcher table ids -> full-gold ids of the same product (see the module doc)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    full_keys = full[title].map(squash)
    by_key: dict[str, set[str]] = {}
    for key, fid in zip(full_keys, full["id"], strict=True):
        by_key.setdefault(key, set()).add(fid)
    small_keys = small[title].map(squash)
    out = {sid: by_key[k] for sid, k in zip(small["id"], small_keys, strict=True) if k in by_key}
    exact = len(out)
    rest = small.loc[~small["id"].isin(list(out)), ["id", title]]
    fuzzy = 0
    if len(rest):
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        vec.fit(pd.concat([full[title], small[title]]).str.lower())
        sims = (vec.transform(rest[title].str.lower()) @ vec.transform(full[title].str.lower()).T)
        sims = sims.toarray()
        best = sims.argmax(axis=1)
        for sid, j, s in zip(rest["id"], best, sims[np.arange(len(rest)), best], strict=True):
            if s >= FUZZY_MIN_COS:
                out[sid] = {full["id"].iloc[j]}
                fuzzy += 1
    counts = {"exact": exact, "fuzzy": fuzzy, "unmapped": len(small) - exact - fuzzy}
    return out, counts


def training_triplets(ds: EMDataset, text_encoder: object
                      ) -> tuple[list[str], list[str], list[str], dict[str, float]]:
    """Anchors, positives and hard negatives from ``train.csv`` (see the module doc)."""
    a_texts = pd.Series(load_catalogue(ds.left, ds.columns).texts, index=ds.left["id"])
    b_texts = pd.Series(load_catalogue(ds.right, ds.columns).texts, index=ds.right["id"])
    ea = text_encoder.encode(a_texts.tolist())
    eb = text_encoder.encode(b_texts.tolist())
    a_pos = pd.Series(np.arange(len(a_texts)), index=a_texts.index)
    b_pos = pd.Series(np.arange(len(b_texts)), index=b_texts.index)
    train = ds.pairs["train"]
    pos = train[train["label"] == 1]
    labelled_neg = train[train["label"] == 0].groupby("left_id")["right_id"].apply(list)
    pos_of = pos.groupby("left_id")["right_id"].apply(set)
    nearest = np.argsort(-(ea @ eb.T), axis=1)[:, :50]
    anchors, positives, negatives = [], [], []
    n_labelled = n_mined = 0
    for left_id, right_id in zip(pos["left_id"], pos["right_id"], strict=True):
        query = ea[a_pos[left_id]]
        candidates = labelled_neg.get(left_id, [])
        if candidates:
            sims = eb[b_pos[candidates].to_numpy()] @ query
            negative = candidates[int(np.argmax(sims))]
            n_labelled += 1
        else:
            banned = pos_of[left_id]
            positive_key = squash(b_texts[right_id])
            negative = next(b_texts.index[j] for j in nearest[a_pos[left_id]]
                            if b_texts.index[j] not in banned
                            and squash(b_texts.iloc[j]) != positive_key)
            n_mined += 1
        anchors.append(a_texts[left_id])
        positives.append(b_texts[right_id])
        negatives.append(b_texts[negative])
    stats = {"train_pairs": float(len(anchors)), "train_negatives_labelled": float(n_labelled),
             "train_negatives_mined": float(n_mined)}
    return anchors, positives, negatives, stats


def gold_subsets(ds: EMDataset) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """The full gold, its pairs unseen as train positives, and its pairs of unseen items."""
    title = ds.columns["title"]
    map_a, ca = map_items(ds.left, ds.full_left, title)
    map_b, cb = map_items(ds.right, ds.full_right, title)
    train = ds.pairs["train"]
    pos = train[train["label"] == 1]
    seen: set[tuple[str, str]] = set()
    seen_left: set[str] = set()
    seen_right: set[str] = set()
    for a, b in zip(pos["left_id"], pos["right_id"], strict=True):
        fa, fb = map_a.get(a, set()), map_b.get(b, set())
        seen_left |= fa
        seen_right |= fb
        seen |= {(x, y) for x in fa for y in fb}
    gold = ds.gold
    pair_seen = np.array([(x, y) in seen for x, y in zip(gold["left_id"], gold["right_id"],
                                                         strict=True)])
    item_seen = gold["left_id"].isin(seen_left) | gold["right_id"].isin(seen_right)
    subsets = {"full": gold, "full_heldout": gold[~pair_seen],
               "full_unseen": gold[~item_seen.to_numpy()]}
    stats = {f"map.left_{k}": float(v) for k, v in ca.items()}
    stats |= {f"map.right_{k}": float(v) for k, v in cb.items()}
    stats |= {"gold_pairs": float(len(gold)), "gold_seen_in_train": float(pair_seen.sum()),
              "full_heldout.pairs": float((~pair_seen).sum()),
              "full_unseen.pairs": float((~item_seen).sum())}
    return subsets, stats


def candidate_recall(ds: EMDataset, text_encoder: str, lexical: bool, cache_dir: str,
                     hubness_k: int, subsets: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Recall@k of ``Matcher.candidates(k=50)`` over the full tables, per gold subset."""
    matcher = Matcher(image_encoder=None, text_encoder=text_encoder, lexical=lexical,
                      cache_dir=cache_dir, hubness_k=hubness_k)
    left = load_catalogue(ds.full_left, ds.columns, name=f"{ds.name} A")
    right = load_catalogue(ds.full_right, ds.columns, name=f"{ds.name} B")
    le, re_, layout = matcher._encode_pair(left, right)
    cands = matcher.candidates(le, re_, layout, k=max(KS))
    return {name: recall_at_k(cands, truth, KS) for name, truth in subsets.items()}


def run_dataset(data_dir: str, name: str, model_dir: Path, cache_dir: str, args: object
                ) -> dict[str, float]:
    key = name.replace("-", "_")
    ds = load_em_dataset(data_dir, name)
    zero_shot = get_encoder("minilm-l6", "text")
    anchors, positives, negatives, stats = training_triplets(ds, zero_shot)
    subsets, gold_stats = gold_subsets(ds)
    out = {f"{key}.{k}": v for k, v in (stats | gold_stats).items()}

    start = time.perf_counter()
    folder = fine_tune_text(
        "minilm-l6", anchors=anchors, positives=positives, negatives=negatives,
        output_dir=model_dir / f"{key}-minilm", epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, triplet_weight=args.triplet_weight, seed=0, show_progress=True,
    )
    out[f"{key}.train_s"] = time.perf_counter() - start
    print(name, "trained in", round(out[f"{key}.train_s"], 1), "s", flush=True)

    for lexical, prefix in ((True, ""), (False, "dense_")):
        for encoder, when in (("minilm-l6", ".before"), (str(folder), "")):
            recall = candidate_recall(ds, encoder, lexical, cache_dir, args.hubness_k, subsets)
            for subset, values in recall.items():
                label = subset.replace("full", prefix + "full") if prefix else subset
                for k, v in values.items():
                    out[f"{key}.{label}{when}.recall@{k}"] = v
        print(name, {k: round(v, 4) for k, v in out.items() if "recall@" in k}, flush=True)
    return out


def main() -> None:
    p = parser("train_text", __doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--triplet-weight", type=float, default=1.0)
    p.add_argument("--hubness-k", type=int, default=Matcher().hubness_k)
    p.add_argument("--only", choices=["abt-buy", "amazon-google"], action="append")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, float] = {
        "train.epochs": float(args.epochs), "train.batch_size": float(args.batch_size),
        "train.lr": args.lr, "train.triplet_weight": args.triplet_weight,
        "hubness_k": float(args.hubness_k),
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmmatch-train-text-") as tmp:
        for name in args.only or ["abt-buy", "amazon-google"]:
            results |= run_dataset(args.data_dir, name, Path(tmp) / "models",
                                   str(Path(tmp) / "cache"), args)
    results["total_s"] = time.perf_counter() - start
    write(results, args.out)


if __name__ == "__main__":
    main()
