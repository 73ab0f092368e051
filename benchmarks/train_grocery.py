"""Grocery Store: learned matching, trained on ``train``, selected on ``val``, reported on ``test``.

Three tasks, each zero-shot, with the head trained on frozen encoders (``head``) and with
the top of the image backbone fine-tuned (``finetune``):

1. photo + typed title (the coarse class name, as a shopper types it) -> catalogue product
   (iconic image + name + description): top-1 / top-5 by the fused embedding of the query
   against the catalogue entries' fused embeddings (``grocery.fused.*``);
2. photo alone -> product top-1 (``grocery.photo.top1``): zero-shot by the nearest labelled
   training photo (1-NN; the nearest catalogue image is reported beside it); trained modes
   by the nearest class centre of the classification term (ArcFace centres, learned from
   the training photos and catalogue images);
3. photo <-> photo within ``test``: MAP@R (and recall@1, inflated by shots of one session).

Training rows are the ``train`` photos (with their typed title) and the 81 catalogue
entries, labelled by product; each has ``--views`` views (the original and camera-style
augmentations). ``val`` photos drive early stopping (the classifier's accuracy); ``test`` is
only used for the reported numbers.

    python benchmarks/train_grocery.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch
from _common import parser, write

from data_prep.grocery import load_grocery
from mmmatch import SearchIndex
from mmmatch._validation import l2_normalize
from mmmatch.augment import ImageAugment
from mmmatch.cache import EmbeddingCache
from mmmatch.encode import encode_images, encode_texts
from mmmatch.encoders import get_encoder
from mmmatch.encoders.image import EfficientNetLiteEncoder
from mmmatch.finetune import split_backbone, trunk_views
from mmmatch.fusion import EmbeddingViews
from mmmatch.metrics import map_at_r, neighbour_labels, recall_at_k_labels
from mmmatch.pipeline import Matcher
from mmmatch.train import LearnedFusion, embed_image_inputs
from mmmatch.views import image_views

SPLITS = ("train", "val", "test")


class Data:
    """Labels, typed titles and catalogue texts of the benchmark, plus an embedding cache."""

    def __init__(self, data_dir: str, cache: EmbeddingCache, limit: int | None = None) -> None:
        self.raw = load_grocery(data_dir)
        if limit:  # a quick check of the script, not a result
            self.raw.photos = {s: df.sample(n=min(limit, len(df)), random_state=0)
                               for s, df in self.raw.photos.items()}
        self.cache = cache
        self.memo: dict[str, dict[str, np.ndarray]] = {}
        self.cat = self.raw.catalogue
        self.refs = {s: self.raw.photos[s]["image"].tolist() for s in SPLITS}
        self.refs["catalogue"] = self.cat["image"].tolist()
        self.labels = {s: self.raw.photos[s]["label"].to_numpy().astype(str) for s in SPLITS}
        self.labels["catalogue"] = self.cat["id"].to_numpy().astype(str)
        text_enc = get_encoder("minilm-l6", "text")
        self.text = {s: encode_texts(self.raw.photos[s]["typed_title"].tolist(), text_enc,
                                     cache) for s in SPLITS}
        self.text["catalogue"] = encode_texts(
            (self.cat["title"] + " | " + self.cat["description"]).tolist(), text_enc, cache)

    def train_labels(self) -> np.ndarray:
        return np.concatenate([self.labels["train"], self.labels["catalogue"]])


def _views(image: np.ndarray | None, text: np.ndarray | None, n: int) -> EmbeddingViews:
    img = None if image is None else (image if image.ndim == 3 else image[:, None])
    txt = None if text is None else (text if text.ndim == 3 else text[:, None])
    return EmbeddingViews(
        img, np.ones((n, 1 if img is None else img.shape[1]), bool),
        txt, np.ones((n, 1), bool) if txt is not None else np.zeros((n, 1), bool))


def _topk(queries: np.ndarray, refs: np.ndarray, ref_labels: np.ndarray, truth: np.ndarray,
          ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    ranked = neighbour_labels(queries, refs, truth, ref_labels, max(ks))
    return {k: recall_at_k_labels(truth, ranked, k) for k in ks}


def _within_test(photo_emb: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MAP@R and recall@1 of test photos retrieving test photos (themselves excluded)."""
    counts = {lab: c for lab, c in zip(*np.unique(labels, return_counts=True), strict=True)}
    r_max = max(counts.values())
    ranked = neighbour_labels(photo_emb, photo_emb, labels, labels, r_max, exclude_self=True)
    return {"map_at_r": map_at_r(labels, ranked, counts, exclude_self=True),
            "recall@1": recall_at_k_labels(labels, ranked, 1)}


def _phash_bits(refs: list[str]) -> np.ndarray:
    """(n, 64) float32 bits of each image's perceptual hash (``imagehash.phash``)."""
    import imagehash
    from PIL import Image

    out = np.zeros((len(refs), 64), dtype=np.float32)
    for i, ref in enumerate(refs):
        with Image.open(ref) as im:
            out[i] = np.asarray(imagehash.phash(im.convert("RGB")).hash, dtype=np.float32).ravel()
    return out


def phash(d: Data) -> dict[str, float]:
    """The non-learned reference: 1-NN and MAP@R by Hamming distance of perceptual hashes."""
    train, test = _phash_bits(d.refs["train"]), _phash_bits(d.refs["test"])
    # Hamming distance as a similarity (64 - distance) through +/-1 codes: dot = 64 - 2 dist
    sim_train = (2 * test - 1) @ (2 * train - 1).T
    truth = d.labels["test"]
    top1 = float(np.mean(d.labels["train"][sim_train.argmax(1)] == truth))
    codes = 2 * test - 1
    counts = {lab: c for lab, c in zip(*np.unique(truth, return_counts=True), strict=True)}
    ranked = neighbour_labels(codes / 8.0, codes / 8.0, truth, truth, max(counts.values()),
                              exclude_self=True)
    return {"photo.top1": top1, "photo.map_at_r": map_at_r(truth, ranked, counts,
                                                           exclude_self=True)}


def zero_shot(d: Data, encoder: str) -> dict[str, float]:
    enc = get_encoder(encoder, "image")
    emb = {s: encode_images(d.refs[s], enc, cache=d.cache)[0] for s in (*SPLITS, "catalogue")}
    out: dict[str, float] = {}
    # photo + typed title: the zero-shot SearchIndex with its default weights
    index = SearchIndex.build(d.cat, Matcher(image_encoder=encoder, cache_dir=d.cache.path),
                              columns={"title": "title", "text": ("description",)})
    res = index.search_batch(images=d.refs["test"], titles=d.raw.photos["test"][
        "typed_title"].tolist(), k=5, cache=d.cache)
    truth = d.labels["test"]
    query = res["query"].to_numpy()
    hit = res["id"].astype(str).to_numpy() == truth[query]
    first = res["rank"].to_numpy() == 1
    n = len(truth)
    out["fused.top1"] = float((np.bincount(query[hit & first], minlength=n) > 0).mean())
    out["fused.top5"] = float((np.bincount(query[hit], minlength=n) > 0).mean())
    # photo alone: nearest labelled training photo (1-NN), and nearest catalogue image
    out["photo.top1"] = _topk(emb["test"], emb["train"], d.labels["train"], truth, (1,))[1]
    out["photo.top1_catalogue"] = _topk(emb["test"], emb["catalogue"], d.labels["catalogue"],
                                        truth, (1,))[1]
    within = _within_test(emb["test"], truth)
    out["photo.map_at_r"], out["photo.recall@1_within_test"] = within["map_at_r"], within[
        "recall@1"]
    return out


def _fit(views: EmbeddingViews, labels: np.ndarray, valid: tuple[EmbeddingViews, np.ndarray],
         refs: tuple[EmbeddingViews, np.ndarray], args, lr: float | None = None, **kw
         ) -> LearnedFusion:
    def log(record: dict[str, float]) -> None:
        print({k: round(v, 3) for k, v in record.items()
               if k in ("epoch", "loss") or k.startswith("valid")}, flush=True)

    return LearnedFusion(epochs=args.epochs, patience=args.patience, valid_metric="accuracy",
                         lr=lr or args.lr, seed=args.seed, show_progress=False).fit(
        views, labels, valid=valid, references=refs, on_epoch=log, **kw)


def _report(prefix: str, photo_head: LearnedFusion, fused_head: LearnedFusion, d: Data,
            image: dict[str, np.ndarray]) -> dict[str, float]:
    """Score the trained heads on test; ``image`` holds each split's image embeddings."""
    out: dict[str, float] = {}
    truth = d.labels["test"]
    q_photo = photo_head.transform(_views(image["test"], None, len(truth)))
    out[f"photo.top1.{prefix}"] = float(np.mean(photo_head.predict(q_photo) == truth))
    cat_photo = photo_head.transform(_views(image["catalogue"], None, 81))
    out[f"photo.top1_catalogue.{prefix}"] = _topk(q_photo, cat_photo, d.labels["catalogue"],
                                                  truth, (1,))[1]
    within = _within_test(q_photo, truth)
    out[f"photo.map_at_r.{prefix}"] = within["map_at_r"]
    out[f"photo.recall@1_within_test.{prefix}"] = within["recall@1"]
    q = fused_head.transform(_views(image["test"], d.text["test"], len(truth)))
    cat = fused_head.transform(_views(image["catalogue"], d.text["catalogue"], 81))
    top = _topk(q, cat, d.labels["catalogue"], truth)
    out[f"fused.top1.{prefix}"], out[f"fused.top5.{prefix}"] = top[1], top[5]
    for k, v in out.items():
        print(f"{k}: {v:.4f}", flush=True)
    return out


def frozen(d: Data, name: str, args) -> dict[str, np.ndarray]:
    """One frozen encoder's embeddings: ``train`` views (n_train + 81, V, dim) of the
    training rows (photos then catalogue entries), and (m, dim) of each other split."""
    key = f"frozen:{name}"
    if key not in d.memo:
        enc = get_encoder(name, "image")
        x, _ = image_views(d.refs["train"] + d.refs["catalogue"], enc, ImageAugment.camera(),
                           args.views, args.seed, d.cache, show_progress=True)
        out = {"train": x}
        for s in ("val", "test", "catalogue"):
            out[s] = encode_images(d.refs[s], enc, cache=d.cache)[0]
        d.memo[key] = out
    return d.memo[key]


def _combine(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate several encoders' embeddings (an ensemble), renormalised."""
    x = np.concatenate([p["train"] for p in parts], axis=2)
    out = {"train": l2_normalize(x.reshape(-1, x.shape[2])).reshape(x.shape)}
    for s in ("val", "test", "catalogue"):
        out[s] = l2_normalize(np.hstack([p[s] for p in parts]))
    return out


def _heads(prefix: str, emb: dict[str, np.ndarray], d: Data, args) -> dict[str, float]:
    """Train the photo-only and the photo + title heads on ``emb``; score them on test."""
    x = emb["train"]
    y = d.train_labels()
    n = len(y)
    nv = len(d.labels["val"])
    photo = _fit(_views(x, None, n), y, (_views(emb["val"], None, nv), d.labels["val"]),
                 (_views(emb["catalogue"], None, 81), d.labels["catalogue"]), args)
    text_train = np.concatenate([d.text["train"], d.text["catalogue"]])
    fused = _fit(_views(x, text_train, n), y,
                 (_views(emb["val"], d.text["val"], nv), d.labels["val"]),
                 (_views(emb["catalogue"], d.text["catalogue"], 81), d.labels["catalogue"]),
                 args)
    image = dict(emb, train=x[: len(d.refs["train"]), 0])
    return _report(prefix, photo, fused, d, image)


def head_mode(d: Data, encoders: list[str], args) -> tuple[dict[str, float], float]:
    """Frozen encoders (an ensemble: embeddings concatenated), only the heads train."""
    start = time.perf_counter()
    emb = _combine([frozen(d, name, args) for name in encoders])
    res = _heads("head", emb, d, args)
    return res, time.perf_counter() - start


def finetune_mode(d: Data, encoder: str, others: list[str], args
                  ) -> tuple[dict[str, float], float]:
    """The last blocks of one EfficientNet-Lite fine-tuned on the photos (its trunk's
    feature maps cached per view), then the heads on the tuned embeddings concatenated
    with the other (frozen) encoders' ones."""
    start = time.perf_counter()
    backbone = EfficientNetLiteEncoder(encoder)
    trunk, top = split_backbone(backbone, args.freeze)
    refs_train = d.refs["train"] + d.refs["catalogue"]
    inputs, _ = trunk_views(refs_train, trunk, ImageAugment.camera(), args.views, args.seed,
                            show_progress=True)
    single = {s: trunk_views(d.refs[s], trunk, None, 1, args.seed, show_progress=True)[0][:, 0]
              for s in ("val", "test", "catalogue")}
    y = d.train_labels()
    n, nv = len(y), len(d.labels["val"])
    tuning = _fit(_views(np.zeros((n, args.views, 1280), np.float32), None, n), y,
                  (_views(np.zeros((nv, 1280), np.float32), None, nv), d.labels["val"]),
                  (_views(np.zeros((81, 1280), np.float32), None, 81), d.labels["catalogue"]),
                  args, lr=args.finetune_lr, image_model=top, image_inputs=inputs,
                  valid_image_inputs=single["val"],
                  reference_image_inputs=single["catalogue"])
    tuned = {s: embed_image_inputs(top, v) for s, v in single.items()}
    flat = inputs.reshape(-1, *inputs.shape[2:])
    tuned["train"] = embed_image_inputs(top, flat).reshape(n, args.views, -1)
    truth = d.labels["test"]
    single_top1 = float(np.mean(tuning.predict(tuning.transform(
        _views(tuned["test"], None, len(truth)))) == truth))
    print(f"photo.top1.finetune_single ({encoder} alone): {single_top1:.4f}", flush=True)
    res = _heads("finetune", _combine([tuned, *[frozen(d, o, args) for o in others]]), d, args)
    res["photo.top1_single.finetune"] = single_top1
    return res, time.perf_counter() - start


def main() -> None:
    p = parser("train_grocery", __doc__.splitlines()[0])
    p.add_argument("--modes", default="phash,zero_shot,head,finetune",
                   help="comma-separated: phash, zero_shot, head, finetune")
    p.add_argument("--encoders", default="efficientnet-lite0,efficientnet-lite2",
                   help="image encoders of the head mode (ensemble, concatenated)")
    p.add_argument("--finetune-encoder", default="efficientnet-lite0",
                   help="the backbone fine-tuned; the other --encoders join it frozen")
    p.add_argument("--finetune-lr", type=float, default=5e-4)
    p.add_argument("--freeze", default="last:5", help="freeze policy of the fine-tuning")
    p.add_argument("--views", type=int, default=6, help="views per training row")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="embedding cache (default: a fresh temporary folder)")
    p.add_argument("--limit", type=int, help="photos per split (a quick check, not a result)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results: dict[str, float] = {"grocery.views": args.views}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        d = Data(args.data_dir, EmbeddingCache(args.cache_dir or tmp), args.limit)
        scored: dict[str, dict[str, float]] = {}
        if "phash" in modes:
            scored["phash"] = phash(d)
            print(scored["phash"], flush=True)
        if "zero_shot" in modes:
            t = time.perf_counter()
            scored["zero_shot"] = zero_shot(d, args.finetune_encoder)
            results["grocery.train_s.zero_shot"] = 0.0
            results["grocery.eval_s.zero_shot"] = time.perf_counter() - t
            print(scored["zero_shot"], flush=True)
        if "head" in modes:
            res, s = head_mode(d, args.encoders.split(","), args)
            scored["head"] = {k.replace(".head", ""): v for k, v in res.items()}
            results["grocery.train_s.head"] = s
        if "finetune" in modes:
            others = [e for e in args.encoders.split(",") if e != args.finetune_encoder]
            res, s = finetune_mode(d, args.finetune_encoder, others, args)
            scored["finetune"] = {k.replace(".finetune", ""): v for k, v in res.items()}
            results["grocery.train_s.finetune"] = s
    for mode, res in scored.items():
        for k, v in res.items():
            results[f"grocery.{k}.{mode}"] = v
    for key in ("photo.top1", "fused.top1", "fused.top5", "photo.map_at_r"):
        best = max(scored, key=lambda m: scored[m].get(key, -1.0))
        if key not in scored[best]:
            continue
        results[f"grocery.{key}"] = scored[best][key]
        print(f"grocery.{key}: {scored[best][key]:.4f} ({best})", flush=True)
    results["grocery.modes"] = len(scored)
    results["total_s"] = time.perf_counter() - start
    write(results, args.out)


if __name__ == "__main__":
    main()
