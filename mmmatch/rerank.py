"""The rerank stage: a probability that a candidate pair is the same product.

Two parts, both following scikit-learn's contract:

* :class:`CrossEncoderScorer` reads the two items' texts together (a cross-encoder built on
  the packaged MiniLM backbone, or any Hugging Face encoder) and is fine-tuned on labelled
  pairs with binary cross-entropy; inference goes through ``sentence_transformers``'
  ``CrossEncoder``.
* :class:`PairReranker` feeds its score, the retrieval evidence (image / text / n-gram /
  fused cosines) and hand-made pair features (:mod:`mmmatch.pair_features`: codes that agree
  or clash, numbers and units, brand, price ratio) to LightGBM, which outputs the
  probability. The cross-encoder scores the gradient-boosted model learns from are
  out-of-fold (cross-fitting), so it does not learn to trust scores the cross-encoder gives
  its own training pairs. LightGBM's exact per-pair feature contributions (TreeSHAP, in
  log-odds) name the features that decided each pair (:meth:`PairReranker.decisive`), and
  its model is saved as text, so loading a reranker runs no pickled code.

The reranker remembers its training pairs (``training_pairs_``) so a threshold is never
calibrated on them (:class:`mmmatch.calibrate.ThresholdCalibrator` refuses).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mmmatch._io import atomic_dir
from mmmatch._validation import check_is_fitted

__all__ = ["EVIDENCE_FEATURES", "CrossEncoderScorer", "PairReranker", "with_texts"]

FORMAT_VERSION = 2
"""Version of the reranker folder layout (2: LightGBM text model)."""

EVIDENCE_FEATURES = ("score", "image_sim", "text_sim", "lexical_sim", "word_sim", "fused_sim")
"""Retrieval evidence columns the reranker uses when the pairs carry them."""


def _texts(values: Sequence[Any], name: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            v = ""
        if not isinstance(v, str):
            raise ValueError(f"{name}: row {i} is {type(v).__name__}, expected a string")
        out.append(v)
    return out


class CrossEncoderScorer:
    """A fine-tunable cross-encoder over two texts.

    Args:
        model: ``"minilm-l6"`` (the packaged all-MiniLM-L6-v2 backbone with a new
            classification layer), a Hugging Face id or a local folder.
        max_length: tokens of the pair (both texts) the model reads.
        epochs: training passes.
        batch_size: pairs per step.
        lr: AdamW learning rate (linear warm-up over 10% of the steps, then decay).
        seed: seeds shuffling and the new layer.
        device: torch device (default CUDA when available).
        show_progress: tqdm bar.
    """

    def __init__(self, model: str = "minilm-l6", max_length: int = 96, epochs: int = 3,
                 batch_size: int = 32, lr: float = 5e-5, seed: int = 0,
                 device: str | None = None, show_progress: bool = True) -> None:
        self.model = model
        self.max_length = max_length
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.show_progress = show_progress

    def _source(self) -> str:
        from mmmatch.tune_text import resolve_text_model

        return resolve_text_model(self.model)

    def fit(self, left: Sequence[str], right: Sequence[str], labels: Sequence[int]
            ) -> CrossEncoderScorer:
        """Fine-tune on labelled pairs (1 = same product).

        Args:
            left: n texts.
            right: n texts.
            labels: n labels in {0, 1}.

        Returns:
            ``self``.
        """
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from mmmatch.encoders.image import _pick_device

        left, right = _texts(left, "left"), _texts(right, "right")
        y = np.asarray(labels, dtype=np.float32)
        if not (len(left) == len(right) == len(y)) or not len(y):
            raise ValueError(f"expected equal, non-zero lengths, got {len(left)}, "
                             f"{len(right)}, {len(y)}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        device = _pick_device(self.device)
        torch.manual_seed(self.seed)
        tokenizer = AutoTokenizer.from_pretrained(self._source())
        model = AutoModelForSequenceClassification.from_pretrained(
            self._source(), num_labels=1).to(device)
        rng = np.random.default_rng(self.seed)
        steps = self.epochs * math.ceil(len(y) / self.batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=0.01)
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        bar = tqdm(total=steps, desc="cross-encoder", disable=not self.show_progress,
                   leave=False)
        start = time.perf_counter()
        model.train()
        for _ in range(self.epochs):
            order = rng.permutation(len(y))
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                # both orders are the same pair: show each in a random one
                swap = rng.random(len(idx)) < 0.5
                a = [right[i] if w else left[i] for i, w in zip(idx, swap, strict=True)]
                b = [left[i] if w else right[i] for i, w in zip(idx, swap, strict=True)]
                enc = tokenizer(a, b, truncation=True, max_length=self.max_length,
                                padding=True, return_tensors="pt").to(device)
                logits = model(**enc).logits.squeeze(-1)
                loss = loss_fn(logits, torch.from_numpy(y[idx]).to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=round(float(loss.detach()), 4))
        bar.close()
        model.eval()
        self.model_ = model
        self.tokenizer_ = tokenizer
        self.fit_seconds_ = time.perf_counter() - start
        self._ce = None
        return self

    def predict(self, left: Sequence[str], right: Sequence[str], batch_size: int = 128
                ) -> np.ndarray:
        """Logits of the pairs (higher = more likely the same product), (n,) float32.

        The pair is scored in both orders and averaged (matching is symmetric).
        """
        import torch

        check_is_fitted(self, "model_")
        left, right = _texts(left, "left"), _texts(right, "right")
        if len(left) != len(right):
            raise ValueError(f"got {len(left)} left and {len(right)} right texts")
        out = np.zeros(len(left), dtype=np.float32)
        device = next(self.model_.parameters()).device
        with torch.inference_mode():
            for s in range(0, len(left), batch_size):
                a, b = left[s:s + batch_size], right[s:s + batch_size]
                total = 0.0
                for x, z in ((a, b), (b, a)):
                    enc = self.tokenizer_(x, z, truncation=True, max_length=self.max_length,
                                          padding=True, return_tensors="pt").to(device)
                    total = total + self.model_(**enc).logits.squeeze(-1).float().cpu()
                out[s:s + len(a)] = (total / 2).numpy()
        return out

    def save(self, folder: str | Path) -> Path:
        """Write the fine-tuned model and tokenizer (safetensors) atomically."""
        check_is_fitted(self, "model_")
        with atomic_dir(folder) as tmp:
            self.model_.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer_.save_pretrained(tmp)
            (tmp / "mmmatch_cross_encoder.json").write_text(json.dumps(
                {"max_length": self.max_length, "base": str(self.model)}))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None) -> CrossEncoderScorer:
        """Read a folder written by :meth:`save`."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from mmmatch.encoders.image import _pick_device

        folder = Path(folder)
        meta = json.loads((folder / "mmmatch_cross_encoder.json").read_text())
        self = cls(model=meta["base"], max_length=meta["max_length"], device=device)
        self.tokenizer_ = AutoTokenizer.from_pretrained(folder)
        self.model_ = AutoModelForSequenceClassification.from_pretrained(folder).to(
            _pick_device(device)).eval()
        self.fit_seconds_ = 0.0
        return self


class PairReranker:
    """Probability that a pair is the same product, from a cross-encoder score, the
    retrieval evidence and pair features, by gradient boosting.

    Args:
        cross_encoder: a :class:`CrossEncoderScorer` (unfitted: it is trained here) or
            ``None`` to use the evidence and pair features only.
        folds: cross-fitting folds for the cross-encoder scores the booster learns from
            (the final cross-encoder is trained on all pairs); 1 uses in-sample scores.
        features: add :func:`mmmatch.pair_features.pair_features`.
        max_iter: boosting rounds.
        learning_rate: boosting learning rate.
        num_leaves: leaves per tree.
        seed: seeds the folds and the booster (training is deterministic).

    Example:
        >>> rr = PairReranker().fit(train_pairs)  # doctest: +SKIP
        >>> p = rr.predict_proba(test_pairs)  # (n,) float  # doctest: +SKIP
    """

    def __init__(self, cross_encoder: CrossEncoderScorer | None = None, folds: int = 2,
                 features: bool = True, max_iter: int = 300, learning_rate: float = 0.05,
                 num_leaves: int = 31, seed: int = 0) -> None:
        self.cross_encoder = cross_encoder
        self.folds = folds
        self.features = features
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.seed = seed

    def _booster_params(self, n_rows: int) -> dict[str, Any]:
        # labelled pair sets are small: one thread trains them in about a second, while
        # OpenMP threads on a busy machine spin and can take a hundred times longer
        return {"objective": "binary", "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_data_in_leaf": 20, "seed": self.seed,
                "deterministic": True, "force_row_wise": True, "verbose": -1,
                "num_threads": _threads(n_rows)}

    def _features(self, pairs: pd.DataFrame, ce: np.ndarray | None) -> pd.DataFrame:
        cols = {}
        for name in EVIDENCE_FEATURES:
            if name in pairs:
                cols[name] = pairs[name].to_numpy(dtype=np.float32)
        x = pd.DataFrame(cols, index=pairs.index)
        if ce is not None:
            x["cross_encoder"] = ce
        if self.features:
            from mmmatch.pair_features import pair_features

            extra = pair_features(
                _texts(pairs["left_text"].tolist(), "left_text"),
                _texts(pairs["right_text"].tolist(), "right_text"),
                left_prices=pairs["left_price"].to_numpy() if "left_price" in pairs else None,
                right_prices=pairs["right_price"].to_numpy() if "right_price" in pairs
                else None,
                left_brands=pairs["left_brand"].tolist() if "left_brand" in pairs else None,
                right_brands=pairs["right_brand"].tolist() if "right_brand" in pairs
                else None)
            extra.index = pairs.index
            x = pd.concat([x, extra], axis=1)
        return x

    def fit(self, pairs: pd.DataFrame) -> PairReranker:
        """Train on labelled pairs.

        Args:
            pairs: ``left_id, right_id, left_text, right_text, label`` and optionally the
                evidence columns (:data:`EVIDENCE_FEATURES`), ``left_price``,
                ``right_price``, ``left_brand``, ``right_brand``.

        Returns:
            ``self``.
        """
        lgb = _lightgbm()
        _check_pairs(pairs, need_label=True)
        y = pairs["label"].to_numpy(dtype=np.int64)
        start = time.perf_counter()
        ce_scores = None
        if self.cross_encoder is not None:
            left, right = pairs["left_text"].tolist(), pairs["right_text"].tolist()
            if self.folds > 1:
                ce_scores = np.zeros(len(pairs), dtype=np.float32)
                fold = np.random.default_rng(self.seed).integers(0, self.folds, len(pairs))
                for f in range(self.folds):
                    tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
                    part = _clone_scorer(self.cross_encoder).fit(
                        [left[i] for i in tr], [right[i] for i in tr], y[tr])
                    ce_scores[te] = part.predict([left[i] for i in te],
                                                 [right[i] for i in te])
            self.cross_encoder_ = _clone_scorer(self.cross_encoder).fit(left, right, y)
            if ce_scores is None:
                ce_scores = self.cross_encoder_.predict(left, right)
        else:
            self.cross_encoder_ = None
        x = self._features(pairs, ce_scores)
        # a feature no training pair has (e.g. prices absent) carries nothing to learn
        x = x.loc[:, x.notna().any(axis=0)]
        self.feature_names_ = list(x.columns)
        data = lgb.Dataset(x.to_numpy(dtype=np.float32), label=y,
                           feature_name=self.feature_names_, free_raw_data=True)
        self.booster_ = lgb.train(self._booster_params(len(y)), data,
                                  num_boost_round=self.max_iter)
        self.training_pairs_ = set(zip(pairs["left_id"].astype(str),
                                       pairs["right_id"].astype(str), strict=True))
        self.threshold_: float | None = None
        self.calibration_: dict[str, Any] | None = None
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def calibrate(self, pairs: pd.DataFrame, objective: str = "f1",
                  target: float | None = None) -> PairReranker:
        """Choose the probability threshold on labelled pairs it did not train on.

        Args:
            pairs: held-out labelled pairs (as for :meth:`fit`).
            objective: ``"f1"``, ``"precision_at"`` or ``"recall_at"``.
            target: the precision / recall floor of the last two.

        Returns:
            ``self``, with ``threshold_`` and ``calibration_`` (the operating point).
        """
        from mmmatch.calibrate import ThresholdCalibrator

        check_is_fitted(self, "booster_")
        _check_pairs(pairs, need_label=True)
        cal = ThresholdCalibrator(objective, target).fit(
            self.predict_proba(pairs), pairs["label"].to_numpy(), pairs=pairs, exclude=self)
        self.threshold_ = float(cal.threshold_)
        self.calibration_ = {**cal.operating_point(), "pairs": len(pairs)}
        return self

    def _matrix(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """The features of ``pairs`` in training order, (n, f)."""
        check_is_fitted(self, "booster_")
        _check_pairs(pairs, need_label=False)
        ce = None
        if self.cross_encoder_ is not None:
            ce = self.cross_encoder_.predict(pairs["left_text"].tolist(),
                                             pairs["right_text"].tolist())
        x = self._features(pairs, ce)
        missing = [c for c in self.feature_names_ if c not in x]
        if missing:
            raise ValueError(f"pairs lack the features the reranker was trained with: "
                             f"{missing}")
        return x[self.feature_names_]

    def _proba(self, x: pd.DataFrame) -> np.ndarray:
        if x.empty:
            return np.zeros(0, dtype=np.float32)
        return self.booster_.predict(x.to_numpy(dtype=np.float32),
                                     num_threads=_threads(len(x))).astype(np.float32)

    def _contributions(self, x: pd.DataFrame) -> pd.DataFrame:
        cols = [*self.feature_names_, "bias"]
        if x.empty:
            return pd.DataFrame(columns=cols, dtype=np.float64)
        c = self.booster_.predict(x.to_numpy(dtype=np.float32), pred_contrib=True,
                                  num_threads=_threads(len(x)))
        return pd.DataFrame(c, columns=cols, index=x.index)

    def _reasons(self, x: pd.DataFrame, contrib: pd.DataFrame, top: int) -> pd.Series:
        c = contrib[self.feature_names_].to_numpy()
        values = x.to_numpy(dtype=np.float64)
        order = np.argsort(-np.abs(c), axis=1, kind="stable")[:, :top]
        names = self.feature_names_
        out = ["; ".join(f"{names[j]}={_short(values[row, j])} ({c[row, j]:+.2f})"
                         for j in cols) for row, cols in enumerate(order)]
        return pd.Series(out, index=x.index, dtype=object)

    def predict_proba(self, pairs: pd.DataFrame) -> np.ndarray:
        """Probability of "same product" for each pair, (n,) float32."""
        return self._proba(self._matrix(pairs))

    def contributions(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Each feature's exact contribution to each pair's log-odds (TreeSHAP).

        Returns:
            (n, f + 1) float DataFrame: one column per feature plus ``bias``; a row sums
            to the pair's log-odds, ``log(p / (1 - p))``.
        """
        return self._contributions(self._matrix(pairs))

    def explain(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """The features of each pair as the booster sees them, plus its probability."""
        x = self._matrix(pairs)
        return x.assign(probability=self._proba(x))

    def decisive(self, pairs: pd.DataFrame, top: int = 3) -> pd.Series:
        """The features that moved each pair's probability most, as readable text.

        Args:
            pairs: as for :meth:`predict_proba`.
            top: features named per pair.

        Returns:
            (n,) strings such as ``"code_clash=1 (-2.31); text_sim=0.93 (+0.85)"``:
            feature, its value, and its contribution to the log-odds (positive: towards
            "same product").
        """
        x = self._matrix(pairs)
        return self._reasons(x, self._contributions(x), top)

    def predict_explained(self, pairs: pd.DataFrame, top: int = 3) -> pd.DataFrame:
        """:meth:`predict_proba` and :meth:`decisive` together, the features (and the
        cross-encoder's scores) computed once.

        Returns:
            DataFrame ``probability, decisive`` with the index of ``pairs``.
        """
        x = self._matrix(pairs)
        return pd.DataFrame({"probability": self._proba(x),
                             "decisive": self._reasons(x, self._contributions(x), top)},
                            index=x.index)

    def save(self, folder: str | Path) -> Path:
        """Write the reranker folder atomically: ``reranker.json`` (format, features,
        settings, threshold, training pairs), ``booster.txt`` (LightGBM's text model: no
        pickle, so loading runs no code) and the cross-encoder (safetensors)."""
        check_is_fitted(self, "booster_")
        with atomic_dir(folder) as tmp:
            self.save_into(tmp)
        return Path(folder)

    def save_into(self, tmp: Path) -> None:
        """Write the reranker's files into an existing (temporary) folder."""
        import lightgbm

        check_is_fitted(self, "booster_")
        self.booster_.save_model(str(tmp / "booster.txt"))
        if self.cross_encoder_ is not None:
            self.cross_encoder_.save(tmp / "cross_encoder")
        (tmp / "reranker.json").write_text(json.dumps({
                "kind": "mmmatch.PairReranker", "format_version": FORMAT_VERSION,
                "versions": {"lightgbm": lightgbm.__version__},
                "feature_names": self.feature_names_, "features": self.features,
                "folds": self.folds, "max_iter": self.max_iter,
                "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "seed": self.seed,
                "threshold": self.threshold_, "calibration": self.calibration_,
                "fit_seconds": self.fit_seconds_,
                "training_pairs": sorted(self.training_pairs_)}))

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None) -> PairReranker:
        """Read a folder written by :meth:`save`, or a model folder that holds one.

        Raises:
            FileNotFoundError: no reranker at ``folder``.
            ConfigMismatchError: written by another mmmatch format, or files are missing.
        """
        from mmmatch.exceptions import ConfigMismatchError

        lgb = _lightgbm()
        folder = Path(folder)
        if (folder / "reranker" / "reranker.json").exists():  # a model folder with one
            folder = folder / "reranker"
        if not (folder / "reranker.json").exists():
            raise FileNotFoundError(f"no mmmatch reranker at {folder} (missing reranker.json)")
        meta = json.loads((folder / "reranker.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConfigMismatchError(
                f"{folder}: reranker format {meta.get('format_version', 1)}, this mmmatch "
                f"reads {FORMAT_VERSION}; retrain it (mmmatch train-reranker)")
        if not (folder / "booster.txt").exists():
            raise ConfigMismatchError(f"{folder}: booster.txt is missing")
        self = cls(folds=meta["folds"], features=meta["features"], max_iter=meta["max_iter"],
                   learning_rate=meta["learning_rate"], num_leaves=meta["num_leaves"],
                   seed=meta["seed"])
        self.booster_ = lgb.Booster(model_file=str(folder / "booster.txt"))
        self.fit_seconds_ = float(meta.get("fit_seconds", 0.0))
        self.feature_names_ = meta["feature_names"]
        self.training_pairs_ = {tuple(p) for p in meta["training_pairs"]}
        self.threshold_ = meta.get("threshold")
        self.calibration_ = meta.get("calibration")
        ce = folder / "cross_encoder"
        self.cross_encoder_ = CrossEncoderScorer.load(ce, device) if ce.exists() else None
        return self


def with_texts(pairs: pd.DataFrame, left: Any, right: Any) -> pd.DataFrame:
    """``pairs`` with what the reranker reads of both items: ``left_text`` and
    ``right_text`` (empty when unknown), and ``left_price`` / ``right_price`` /
    ``left_brand`` / ``right_brand`` where the catalogue has a price / brand column.

    Args:
        pairs: ``left_id, right_id`` (other columns are kept).
        left: the left :class:`~mmmatch.catalogue.Catalogue`.
        right: the right one.
    """
    lid, rid = pairs["left_id"].astype(str), pairs["right_id"].astype(str)
    out = pairs.assign(
        left_text=pd.Series(left.texts, index=left.ids).reindex(lid).fillna("").to_numpy(),
        right_text=pd.Series(right.texts, index=right.ids).reindex(rid).fillna("").to_numpy())
    for role in ("price", "brand"):
        for side, cat, ids in (("left", left, lid), ("right", right, rid)):
            column = getattr(cat.columns, role, None)
            if column is not None:
                values = pd.Series(cat.data[column].to_numpy(), index=cat.ids)
                out[f"{side}_{role}"] = values.reindex(ids).to_numpy()
    return out


def _threads(n_rows: int) -> int:
    """LightGBM threads for ``n_rows`` rows: one below 200,000, else its default."""
    return 1 if n_rows < 200_000 else 0


def _lightgbm() -> Any:
    import lightgbm

    return lightgbm


def _short(value: float) -> str:
    """A feature value in a few characters (``nan`` for missing)."""
    if math.isnan(value):
        return "nan"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _clone_scorer(scorer: CrossEncoderScorer) -> CrossEncoderScorer:
    return CrossEncoderScorer(scorer.model, scorer.max_length, scorer.epochs,
                              scorer.batch_size, scorer.lr, scorer.seed, scorer.device,
                              scorer.show_progress)


def _check_pairs(pairs: pd.DataFrame, need_label: bool) -> None:
    need = ["left_id", "right_id", "left_text", "right_text"] + (["label"] if need_label
                                                                   else [])
    missing = [c for c in need if c not in pairs]
    if missing:
        raise ValueError(f"pairs: missing column(s) {missing}; expected {need}")
    if need_label:
        bad = ~pairs["label"].isin([0, 1])
        if bad.any():
            raise ValueError(f"pairs: row {int(np.flatnonzero(bad.to_numpy())[0])} has label "
                             f"{pairs['label'][bad].iloc[0]!r}, expected 0 or 1")
