"""Training the late-fusion head (and optionally the top of the image backbone).

:class:`LearnedFusion` is the learned fuse stage. It follows scikit-learn's contract:
``__init__`` stores the settings, :meth:`LearnedFusion.fit` trains on per-row embedding
views (:class:`~mmmatch.fusion.EmbeddingViews`) and labels and returns ``self``, the learned
state ends in ``_``, and :meth:`LearnedFusion.transform` gives the fused vectors.

Training samples P products x K examples per batch (:class:`~mmmatch.sampling.PKSampler`),
each example one of its precomputed views (so a product with one example still has
positives), fuses them with :class:`~mmmatch.fusion.FusionHead` and minimises a weighted sum
of metric-learning and classification losses (:mod:`mmmatch.losses`); the default is
batch-hard triplet + ArcFace. Without labels every row is its own class and the views are
its positives (NT-Xent, SimCLR style). A validation set stops training early and the best
epoch's weights are kept; with ``checkpoint_dir`` every epoch is checkpointed (safetensors)
and an interrupted fit resumes from the last one.

The image side can be fine-tuned too: pass ``image_model`` (a module mapping cached inputs,
e.g. the frozen trunk's feature maps of each view, to image embeddings) and its
``image_inputs``; see :mod:`mmmatch.finetune`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmmatch._io import atomic_dir
from mmmatch._validation import check_is_fitted
from mmmatch.encode import EncodedCatalogue
from mmmatch.encoders.image import _pick_device
from mmmatch.fusion import EmbeddingViews, FusionHead, embed_with_head
from mmmatch.losses import (
    ClassificationLoss,
    PartialFCLoss,
    WeightedLoss,
    build_loss,
    split_sparse_parameters,
)
from mmmatch.metrics import map_at_r, recall_at_k_labels
from mmmatch.sampling import PKSampler

__all__ = [
    "LOSS_TERMS", "LearnedFusion", "build_objective", "embed_image_inputs",
    "split_by_product", "train_model",
]

LOSS_TERMS = ("triplet", "semihard", "ms", "supcon", "ntxent", "softmax", "arcface", "cosface")
"""Names usable in a loss spec such as ``"triplet+arcface"``."""

_CLASSIFIERS = ("softmax", "arcface", "cosface")
PARTIAL_FC_AUTO = 100_000
"""With ``partial_fc="auto"``, class counts above this train a sampled (Partial FC) softmax."""


def build_objective(
    spec: str, dim: int, num_classes: int, *, weights: dict[str, float] | None = None,
    triplet_margin: float = 0.2, class_margin: float = 0.3, scale: float = 30.0,
    temperature: float = 0.1, partial_fc: int | str | None = "auto", seed: int = 0,
) -> WeightedLoss:
    """The training objective from a spec like ``"triplet+arcface"`` with these settings.

    Args:
        spec: loss names joined by ``+`` (see :data:`LOSS_TERMS`; ``semihard`` is the
            triplet loss with semi-hard mining).
        dim: embedding width.
        num_classes: number of labels (for the classification terms).
        weights: term name -> weight (default 1 each).
        triplet_margin: margin of the triplet terms.
        class_margin: margin of ArcFace / CosFace.
        scale: logit scale of the normalised classifiers.
        temperature: of NT-Xent / SupCon.
        partial_fc: classes sampled per step by a Partial FC softmax, ``"auto"`` (10% of
            the classes when there are more than :data:`PARTIAL_FC_AUTO`) or ``None``.
        seed: seed of the Partial FC class sampling.
    """
    names = [t.strip() for t in spec.split("+") if t.strip()]
    unknown = [n for n in names if n not in LOSS_TERMS]
    if not names or unknown:
        raise ValueError(f"bad loss spec {spec!r}: expected terms from {LOSS_TERMS} joined by "
                         "'+', e.g. 'triplet+arcface'")
    sampled = _partial_fc_size(partial_fc, num_classes)
    terms: dict[str, dict[str, Any]] = {}
    for name in names:
        cfg: dict[str, Any] = {"weight": float((weights or {}).get(name, 1.0))}
        if name in ("triplet", "semihard"):
            cfg.update(loss="triplet", margin=triplet_margin,
                       miner="batch_hard" if name == "triplet" else "semi_hard")
        elif name in ("supcon", "ntxent"):
            cfg.update(temperature=temperature)
        elif name in _CLASSIFIERS:
            cfg.update(margin=class_margin, scale=scale)
            if sampled:
                cfg.update(loss="partial_fc", kind=name, num_sampled=sampled, seed=seed)
        terms[name] = cfg
    return build_loss(terms, dim, num_classes)


def _partial_fc_size(partial_fc: int | str | None, num_classes: int) -> int:
    if partial_fc is None:
        return 0
    if partial_fc == "auto":
        return max(1, num_classes // 10) if num_classes > PARTIAL_FC_AUTO else 0
    if isinstance(partial_fc, int) and not isinstance(partial_fc, bool) and partial_fc > 0:
        return partial_fc if partial_fc < num_classes else 0
    raise ValueError(f"partial_fc must be a positive int, 'auto' or None, got {partial_fc!r}")


def _classifier(objective: WeightedLoss) -> torch.nn.Module | None:
    for module in objective.terms.values():
        if isinstance(module, ClassificationLoss | PartialFCLoss):
            return module
    return None


class LearnedFusion:
    """The learned fuse stage: a :class:`~mmmatch.fusion.FusionHead` trained on labels.

    Args:
        dim: fused embedding width.
        hidden: hidden width of each modality projection.
        dropout: dropout inside the projections.
        loss: loss spec (see :func:`build_objective`); ``None`` picks ``"triplet+arcface"``
            with labels and ``"ntxent"`` without.
        loss_weights: term name -> weight.
        triplet_margin: margin of the triplet terms (cosine).
        class_margin: ArcFace / CosFace margin.
        scale: logit scale of the normalised classifiers.
        partial_fc: see :func:`build_objective`.
        p: products per batch.
        k: examples (or views) per product in a batch.
        epochs: maximum number of epochs.
        lr: AdamW learning rate (cosine schedule with one warm-up epoch).
        weight_decay: AdamW weight decay.
        modality_dropout: probability of hiding a row's image (or, as often, its text)
            during training, so the head learns to embed rows with one modality.
        valid_metric: what early stopping watches: ``"map_at_r"``, ``"recall@1"`` or
            ``"accuracy"`` (of the classifier; needs the valid labels among the classes).
        patience: epochs without improvement of the validation metric before stopping.
        seed: seeds the weights, the sampler and the dropout.
        device: torch device; default CUDA when available.
        amp: mixed precision (float16 with loss scaling) on CUDA.
        checkpoint_dir: checkpoint every epoch there and resume from it.
        show_progress: tqdm progress bar over the epochs.

    Example:
        >>> fusion = LearnedFusion(epochs=20).fit(views, labels)  # doctest: +SKIP
        >>> fused = fusion.transform(encoded)  # (n, 256) float32  # doctest: +SKIP
    """

    def __init__(
        self, dim: int = 256, hidden: int = 1024, dropout: float = 0.1, loss: str | None = None,
        loss_weights: dict[str, float] | None = None, triplet_margin: float = 0.2,
        class_margin: float = 0.3, scale: float = 30.0, partial_fc: int | str | None = "auto",
        p: int = 16, k: int = 4, epochs: int = 40, lr: float = 1e-3, weight_decay: float = 1e-4,
        modality_dropout: float = 0.2, valid_metric: str = "map_at_r", patience: int = 6,
        seed: int = 0, device: str | None = None, amp: bool = True,
        checkpoint_dir: str | Path | None = None, show_progress: bool = True,
    ) -> None:
        self.dim = dim
        self.hidden = hidden
        self.dropout = dropout
        self.loss = loss
        self.loss_weights = loss_weights
        self.triplet_margin = triplet_margin
        self.class_margin = class_margin
        self.scale = scale
        self.partial_fc = partial_fc
        self.p = p
        self.k = k
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.modality_dropout = modality_dropout
        self.valid_metric = valid_metric
        self.patience = patience
        self.seed = seed
        self.device = device
        self.amp = amp
        self.checkpoint_dir = checkpoint_dir
        self.show_progress = show_progress

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (JSON-friendly; saved with the model)."""
        params = dict(vars(self))
        params = {k: v for k, v in params.items() if not k.endswith("_")}
        if params["checkpoint_dir"] is not None:
            params["checkpoint_dir"] = str(params["checkpoint_dir"])
        return params

    # -- fitting --------------------------------------------------------------------------
    def fit(
        self,
        views: EmbeddingViews,
        labels: Any = None,
        valid: tuple[EmbeddingViews, Any] | None = None,
        references: tuple[EmbeddingViews, Any] | None = None,
        image_model: torch.nn.Module | None = None,
        image_inputs: np.ndarray | None = None,
        valid_image_inputs: np.ndarray | None = None,
        reference_image_inputs: np.ndarray | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
    ) -> LearnedFusion:
        """Train the head.

        Args:
            views: training rows' embedding views.
            labels: (n,) product label of each row; ``None`` trains without labels (each
                row its own class, its views the positives; needs two or more views).
            valid: ``(views, labels)`` of validation rows for early stopping; ``None``
                trains the full ``epochs``.
            references: ``(views, labels)`` the validation rows are retrieved among
                (default: the training rows, view 0); validation rows are always among the
                references too (never retrieving themselves).
            image_model: a trainable module mapping ``image_inputs`` rows to image
                embeddings (fine-tuning the top of the image backbone); ``None`` uses the
                fixed image embeddings of ``views``.
            image_inputs: (n, V, ...) inputs of ``image_model`` per training row and view.
            valid_image_inputs: (n_valid, ...) view-0 inputs of the validation rows.
            reference_image_inputs: (n_ref, ...) view-0 inputs of the references.
            on_epoch: called with each epoch's log record.

        Returns:
            ``self``.
        """
        device = _pick_device(self.device)
        torch.manual_seed(self.seed)
        if labels is None:
            if views.image_ok.shape[1] < 2 and views.text_ok.shape[1] < 2:
                raise ValueError("training without labels needs two or more views per row "
                                 "(augmented copies) to form positives")
            codes = np.arange(len(views))
            classes = np.arange(len(views))
            loss_spec = self.loss or "ntxent"
        else:
            labels = np.asarray(labels)
            if len(labels) != len(views):
                raise ValueError(f"labels: expected {len(views)} labels, got {len(labels)}")
            if any(lab is None or (isinstance(lab, float) and math.isnan(lab))
                   for lab in labels):
                bad = next(i for i, lab in enumerate(labels) if lab is None or (
                    isinstance(lab, float) and math.isnan(lab)))
                raise ValueError(f"labels: row {bad} has no label")
            classes, codes = np.unique(labels.astype(str), return_inverse=True)
            loss_spec = self.loss or "triplet+arcface"
        if (image_model is None) != (image_inputs is None):
            raise ValueError("image_model and image_inputs go together")
        image_dim = views.image.shape[2] if views.image is not None else 0
        text_dim = views.text.shape[2] if views.text is not None else 0
        head = FusionHead(image_dim, text_dim, self.dim, self.hidden, self.dropout).to(device)
        objective = build_objective(
            loss_spec, self.dim, len(classes), weights=self.loss_weights,
            triplet_margin=self.triplet_margin, class_margin=self.class_margin,
            scale=self.scale, partial_fc=self.partial_fc, seed=self.seed).to(device)
        modules = torch.nn.ModuleDict({"head": head, "objective": objective})
        if image_model is not None:
            modules["image_model"] = image_model.to(device)
        dense, sparse = split_sparse_parameters(modules)
        optimizers: list[torch.optim.Optimizer] = [
            torch.optim.AdamW(dense, lr=self.lr, weight_decay=self.weight_decay)]
        if sparse:
            optimizers.append(torch.optim.SGD(sparse, lr=self.lr * 100))
        sampler = PKSampler(codes, p=self.p, k=self.k, seed=self.seed)
        steps_per_epoch = max(1, len(sampler))
        schedulers = [_cosine_schedule(o, steps_per_epoch, self.epochs) for o in optimizers]
        use_amp = self.amp and device.startswith("cuda")
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        state = _TrainState()
        ckpt = Path(self.checkpoint_dir) if self.checkpoint_dir else None
        if ckpt is not None and (ckpt / "state.json").exists():
            state = _load_checkpoint(ckpt, modules, optimizers, schedulers, loss_spec,
                                     len(classes))
        valid_fn = None
        if valid is not None:
            valid_fn = self._validator(valid, references or (views, labels), classes, device,
                                       valid_image_inputs, reference_image_inputs)

        bar = tqdm(total=self.epochs, initial=state.epoch, desc="training", unit="epoch",
                   disable=not self.show_progress, leave=False)
        start = time.perf_counter()
        while state.epoch < self.epochs and state.stale < self.patience:
            # randomness seeded per epoch, so a resumed fit replays the unbroken one
            rng = np.random.default_rng([self.seed, state.epoch])
            torch.manual_seed(int(rng.integers(2**62)))
            modules.train()
            _freeze_batchnorm(image_model)
            sampler.set_epoch(state.epoch)
            total, batches = 0.0, 0
            for batch in sampler:
                img, img_ok, txt, txt_ok = views.pick(batch.rows, batch.views)
                img_ok, txt_ok = _modality_dropout(img_ok, txt_ok, self.modality_dropout, rng)
                with torch.autocast(device_type=device.split(":")[0], enabled=use_amp):
                    if image_model is not None:
                        vi = batch.views % image_inputs.shape[1]
                        x = torch.from_numpy(np.ascontiguousarray(
                            image_inputs[batch.rows, vi])).to(device).float()
                        img_t = torch.nn.functional.normalize(image_model(x).float(), dim=1)
                    else:
                        img_t = _tensor(img, device)
                    fused = head(img_t, _tensor(img_ok, device), _tensor(txt, device),
                                 _tensor(txt_ok, device))
                    loss = objective(fused.float(), torch.from_numpy(
                        np.array(batch.labels, dtype=np.int64)).to(device))
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                for o in optimizers:
                    scaler.step(o)
                scaler.update()
                for s in schedulers:
                    s.step()
                total += float(loss.detach())
                batches += 1
            state.epoch += 1
            record: dict[str, float] = {"epoch": state.epoch, "loss": total / max(batches, 1),
                                        "seconds": time.perf_counter() - start}
            record.update({f"loss.{k}": v for k, v in objective.last_terms.items()})
            if valid_fn is not None:
                modules.eval()
                record.update(valid_fn(head, objective, image_model))
                score = record[f"valid.{self.valid_metric}"]
                if score > state.best_score:
                    state.best_score, state.best_epoch, state.stale = score, state.epoch, 0
                    state.best = _snapshot(modules)
                else:
                    state.stale += 1
            state.history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            bar.set_postfix({k: round(v, 4) for k, v in record.items()
                             if k == "loss" or k.startswith("valid.")})
            bar.update(1)
            if ckpt is not None:
                _save_checkpoint(ckpt, modules, optimizers, schedulers, state, loss_spec,
                                 len(classes))
        bar.close()
        if state.best is not None:
            modules.load_state_dict(state.best)
        modules.eval()
        self.head_ = head.cpu()
        self.objective_ = objective.cpu()
        self.image_model_ = image_model.cpu() if image_model is not None else None
        self.classes_ = classes
        self.loss_spec_ = loss_spec
        self.history_ = state.history
        self.best_epoch_ = state.best_epoch if state.best is not None else state.epoch
        self.valid_score_ = state.best_score if state.best is not None else float("nan")
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _validator(self, valid: tuple[EmbeddingViews, Any], references: tuple[EmbeddingViews,
                   Any], classes: np.ndarray, device: str, valid_inputs: np.ndarray | None,
                   reference_inputs: np.ndarray | None
                   ) -> Callable[..., dict[str, float]]:
        v_views, v_labels = valid
        r_views, r_labels = references
        if v_labels is None or r_labels is None:
            raise ValueError("validation needs labels for the valid rows and references")
        v_labels = np.asarray(v_labels).astype(str)
        r_labels = np.asarray(r_labels).astype(str)
        all_labels = np.concatenate([r_labels, v_labels])
        counts = {lab: c for lab, c in zip(*np.unique(all_labels, return_counts=True),
                                           strict=True)}
        class_index = {c: i for i, c in enumerate(classes)}

        def run(head: FusionHead, objective: WeightedLoss, image_model: Any) -> dict[str, float]:
            q = self._embed(head, v_views, image_model, valid_inputs, device)
            r = self._embed(head, r_views, image_model, reference_inputs, device)
            refs = np.concatenate([r, q])
            k = int(max(counts.values()))
            ranked = _ranked_labels_without_self(q, refs, all_labels, len(r), k)
            reference_counts = np.array([counts[lab] - 1 for lab in v_labels])
            out = {"valid.map_at_r": float(map_at_r(v_labels, ranked, reference_counts)),
                   "valid.recall@1": float(recall_at_k_labels(v_labels, ranked, 1))}
            clf = _classifier(objective)
            if clf is not None:
                with torch.inference_mode():
                    logits = clf.logits(torch.from_numpy(q).to(device)).cpu().numpy()
                known = np.array([lab in class_index for lab in v_labels])
                pred = classes[logits.argmax(1)]
                out["valid.accuracy"] = float(np.mean(pred[known] == v_labels[known])) if (
                    known.any()) else float("nan")
            return out

        return run

    def _embed(self, head: FusionHead, views: EmbeddingViews, image_model: Any,
               inputs: np.ndarray | None, device: str) -> np.ndarray:
        img, img_ok, txt, txt_ok = views.originals()
        if image_model is not None:
            if inputs is None:
                raise ValueError("a fine-tuned image model needs the view-0 image inputs of "
                                 "the rows it embeds")
            img = embed_image_inputs(image_model, inputs, device)
        return embed_with_head(head, img, img_ok, txt, txt_ok, device=device)

    # -- using ----------------------------------------------------------------------------
    def transform(self, data: EmbeddingViews | EncodedCatalogue,
                  image_inputs: np.ndarray | None = None) -> np.ndarray:
        """Fused embeddings of rows (view 0).

        Args:
            data: the rows' embeddings.
            image_inputs: (n, ...) image-model inputs when the image side was fine-tuned
                (else the image embeddings of ``data`` are used).

        Returns:
            (n, dim) float32, L2-normalised.
        """
        check_is_fitted(self, "head_")
        views = data if isinstance(data, EmbeddingViews) else EmbeddingViews.from_encoded(data)
        self._check_widths(views)
        model = self.image_model_ if image_inputs is not None else None
        return self._embed(self.head_, views, model, image_inputs, "cpu")

    def _check_widths(self, views: EmbeddingViews) -> None:
        for name, arr, want in (("image", views.image, self.head_.image_dim),
                                ("text", views.text, self.head_.text_dim)):
            have = 0 if arr is None else arr.shape[2]
            if have != want and have:
                raise ValueError(f"{name} embeddings are {have}-d but the head was trained "
                                 f"on {want}-d ones (a different encoder?)")

    def predict_proba(self, fused: np.ndarray) -> np.ndarray:
        """Class probabilities of fused vectors from the classification term.

        Args:
            fused: (n, dim) float32 from :meth:`transform`.

        Returns:
            (n, len(classes_)) float32.
        """
        check_is_fitted(self, "head_")
        clf = _classifier(self.objective_)
        if clf is None:
            raise ValueError(f"the loss {self.loss_spec_!r} has no classification term")
        with torch.inference_mode():
            logits = clf.logits(torch.from_numpy(np.ascontiguousarray(fused, np.float32)))
            return torch.softmax(logits.float(), dim=1).numpy()

    def predict(self, fused: np.ndarray) -> np.ndarray:
        """Most likely class label of each fused vector, (n,)."""
        check_is_fitted(self, "head_")
        return self.classes_[self.predict_proba(fused).argmax(1)]

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of the head, the objective (class centres) and a tuned image model."""
        check_is_fitted(self, "head_")
        out = {f"head.{k}": v for k, v in self.head_.state_dict().items()}
        out.update({f"objective.{k}": v for k, v in self.objective_.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def config(self) -> dict[str, Any]:
        """JSON-friendly description: parameters, head shape, classes, training record."""
        check_is_fitted(self, "head_")
        return {"params": self.get_params(), "head": self.head_.config(),
                "loss_spec": self.loss_spec_, "classes": [str(c) for c in self.classes_],
                "best_epoch": self.best_epoch_, "valid_score": _finite(self.valid_score_),
                "fit_seconds": self.fit_seconds_,
                "history": [{k: _finite(v) if isinstance(v, float) else v for k, v in r.items()}
                            for r in self.history_]}  # NaN (no accuracy) -> null: plain JSON

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, torch.Tensor]
                   ) -> LearnedFusion:
        """Rebuild a fitted instance from :meth:`config` and :meth:`state_dict`."""
        self = cls(**config["params"])
        self.head_ = FusionHead(**config["head"])
        self.head_.load_state_dict({k[5:]: v for k, v in state.items()
                                    if k.startswith("head.")})
        self.classes_ = np.asarray(config["classes"], dtype=object)
        self.loss_spec_ = config["loss_spec"]
        self.objective_ = build_objective(
            self.loss_spec_, self.head_.dim, len(self.classes_), weights=self.loss_weights,
            triplet_margin=self.triplet_margin, class_margin=self.class_margin,
            scale=self.scale, partial_fc=self.partial_fc, seed=self.seed)
        self.objective_.load_state_dict({k[10:]: v for k, v in state.items()
                                         if k.startswith("objective.")})
        self.head_.eval()
        self.objective_.eval()
        self.image_model_ = None
        self.history_ = config.get("history", [])
        self.best_epoch_ = config.get("best_epoch", 0)
        score = config.get("valid_score")
        self.valid_score_ = float("nan") if score is None else float(score)  # 0.0 stays 0.0
        self.fit_seconds_ = config.get("fit_seconds", 0.0)
        return self


def embed_image_inputs(model: torch.nn.Module, inputs: np.ndarray, device: str = "cpu",
                       batch_size: int = 256) -> np.ndarray:
    """Image embeddings of cached inputs through a (tuned) image model, L2-normalised.

    Returns:
        (n, d) float32.
    """
    was = model.training
    model.eval()
    outs = []
    try:
        with torch.inference_mode():
            for s in range(0, len(inputs), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(inputs[s:s + batch_size]))
                y = model(x.to(device).float())
                outs.append(torch.nn.functional.normalize(y.float(), dim=1).cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)


# -- helpers ------------------------------------------------------------------------------------


class _TrainState:
    def __init__(self) -> None:
        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.stale = 0
        self.history: list[dict[str, float]] = []
        self.best: dict[str, torch.Tensor] | None = None


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _tensor(a: np.ndarray | None, device: str) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _ranked_labels_without_self(queries: np.ndarray, refs: np.ndarray, ref_labels: np.ndarray,
                                offset: int, k: int) -> np.ndarray:
    """(n, k) labels of each query's nearest references by inner product, skipping the
    query itself (query ``i`` is reference ``offset + i``)."""
    import faiss

    index = faiss.IndexFlatIP(refs.shape[1])
    index.add(np.ascontiguousarray(refs, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    own = idx == (offset + np.arange(len(queries)))[:, None]
    keep = np.where(own.any(axis=1)[:, None], ~own, np.arange(k + 1)[None, :] < k)
    return ref_labels[idx[keep].reshape(len(queries), k)]


def _modality_dropout(img_ok: np.ndarray, txt_ok: np.ndarray, p: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hide the image (or the text) of random rows that have both, so the head learns to
    embed single-modality rows next to complete ones."""
    if p <= 0:
        return img_ok, txt_ok
    both = img_ok & txt_ok
    u = rng.random(len(img_ok))
    hide_img = both & (u < p / 2)
    hide_txt = both & (u >= p / 2) & (u < p)
    return img_ok & ~hide_img, txt_ok & ~hide_txt


def _cosine_schedule(optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
                     ) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = steps_per_epoch
    total = max(steps_per_epoch * epochs, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _freeze_batchnorm(model: torch.nn.Module | None) -> None:
    """Keep batch-norm statistics of a fine-tuned backbone fixed (small batches)."""
    if model is None:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _snapshot(modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in modules.state_dict().items()}


def _save_checkpoint(folder: Path, modules: torch.nn.Module, optimizers: list[Any],
                     schedulers: list[Any], state: _TrainState, loss_spec: str,
                     num_classes: int) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in modules.state_dict().items()}
    if state.best is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous()
                        for k, v in state.best.items()})
    optim_meta = []
    for i, o in enumerate(optimizers):
        sd = o.state_dict()
        scalars: dict[str, dict[str, float]] = {}
        for pid, pstate in sd["state"].items():
            for name, value in pstate.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    tensors[f"optim{i}.{pid}.{name}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[name] = float(value)
        optim_meta.append(scalars)
    meta = {"epoch": state.epoch, "best_score": _finite(state.best_score),
            "best_epoch": state.best_epoch, "stale": state.stale, "history": state.history,
            "optimizers": optim_meta, "schedulers": [s.state_dict()["last_epoch"]
                                                    for s in schedulers],
            "loss_spec": loss_spec, "num_classes": num_classes}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / "checkpoint.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta))


def _load_checkpoint(folder: Path, modules: torch.nn.Module, optimizers: list[Any],
                     schedulers: list[Any], loss_spec: str, num_classes: int) -> _TrainState:
    from safetensors.torch import load_file

    meta = json.loads((folder / "state.json").read_text())
    if meta["loss_spec"] != loss_spec or meta["num_classes"] != num_classes:
        raise ValueError(
            f"checkpoint in {folder} is for loss {meta['loss_spec']!r} over "
            f"{meta['num_classes']} classes, not {loss_spec!r} over {num_classes}; use "
            "another checkpoint_dir or delete it")
    tensors = load_file(str(folder / "checkpoint.safetensors"))
    modules.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, o in enumerate(optimizers):
        sd = o.state_dict()
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(f"optim{i}."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        for pid, scalars in meta["optimizers"][i].items():
            for name, value in scalars.items():
                state.setdefault(int(pid), {})[name] = torch.tensor(value)
        sd["state"] = state
        o.load_state_dict(sd)
    for s, last in zip(schedulers, meta["schedulers"], strict=True):
        # recompute the learning rate of the restored step: step() advances last_epoch to
        # ``last`` and sets the rate the next optimizer step uses, as in the unbroken run
        s.last_epoch = last - 1
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            s.step()
    st = _TrainState()
    st.epoch, st.best_epoch, st.stale = meta["epoch"], meta["best_epoch"], meta["stale"]
    st.best_score = meta["best_score"] if meta["best_score"] is not None else -math.inf
    st.history = meta["history"]
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    st.best = best or None
    return st


# -- training a whole model from a labelled catalogue -----------------------------------------


def split_by_product(labels: np.ndarray | None, valid_fraction: float, seed: int = 0,
                     n_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation row positions, whole products on one side.

    Validation products are drawn among those with two or more rows (so each validation
    row has a positive to retrieve); without labels rows are drawn at random.

    Args:
        labels: (n,) product labels, or ``None`` (unlabelled: everything trains).
        valid_fraction: share of products to hold out.
        seed: seed of the draw.
        n_rows: number of rows when ``labels`` is ``None``.

    Returns:
        ``(train_rows, valid_rows)`` int64 arrays (``valid_rows`` may be empty).
    """
    n = (n_rows or 0) if labels is None else len(labels)
    rng = np.random.default_rng(seed)
    if labels is None or valid_fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)[1]
    counts = np.bincount(codes)
    multi = np.flatnonzero(counts >= 2)
    n_valid = round(valid_fraction * len(counts))
    if len(multi) < 2 or n_valid < 2:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    chosen = rng.choice(multi, size=min(n_valid, len(multi) // 2), replace=False)
    is_valid = np.isin(codes, chosen)
    return np.flatnonzero(~is_valid), np.flatnonzero(is_valid)


def train_model(
    catalogue: Any,
    image_encoder: str | None = "efficientnet-lite0",
    text_encoder: str | None = "minilm-l6",
    *,
    supervised: bool = True,
    valid_fraction: float = 0.15,
    mode: str = "head",
    freeze: str = "last:5",
    n_views: int = 4,
    image_augment: Any = None,
    text_augment: Any = None,
    cache: Any = None,
    device: str | None = None,
    seed: int = 0,
    show_progress: bool = True,
    work_dir: str | Path | None = None,
    tune_text: bool = False,
    **fusion_params: Any,
) -> Any:
    """Train a :class:`~mmmatch.model.MatchModel` on a loaded catalogue.

    Args:
        catalogue: a :class:`~mmmatch.catalogue.Catalogue` (with ``labels`` when
            ``supervised``).
        image_encoder: image encoder name (``None``: no images).
        text_encoder: text encoder name (``None``: no text).
        supervised: use the catalogue's labels; ``False`` trains on augmented views alone.
        valid_fraction: share of products held out for early stopping.
        mode: ``"head"`` (frozen encoders, cached embeddings) or ``"finetune"`` (also the
            top of the image backbone, see :mod:`mmmatch.finetune`).
        freeze: freeze policy of ``"finetune"``.
        n_views: views per training row (1 = no augmentation).
        image_augment: :class:`~mmmatch.augment.ImageAugment` (default ``camera()``).
        text_augment: :class:`~mmmatch.augment.TextAugment` (default ``light()``).
        cache: embedding cache.
        device: torch device.
        seed: seed of the split, the views and the training.
        show_progress: tqdm bars.
        work_dir: where a fine-tuned backbone's weights and text encoder are written
            (default: a temporary folder).
        tune_text: first fine-tune the text encoder on pairs of training rows of one
            product (in-batch negatives, see :func:`mmmatch.tune_text.fine_tune_text`).
        **fusion_params: :class:`LearnedFusion` parameters (``epochs``, ``dim``, ``loss``...).

    Returns:
        ``(model, (train_rows, valid_rows))``: the trained :class:`~mmmatch.model.MatchModel`
        (not yet calibrated or saved) and the row positions of the split.
    """
    import tempfile

    from mmmatch.augment import ImageAugment, TextAugment
    from mmmatch.encoders import get_encoder
    from mmmatch.model import MatchModel
    from mmmatch.views import embed_views

    if mode not in ("head", "finetune"):
        raise ValueError(f"mode must be 'head' or 'finetune', got {mode!r}")
    labels = catalogue.labels if supervised else None
    if supervised and labels is None:
        raise ValueError("supervised training needs a label column (e.g. "
                         "--label-column product_id), or train without labels")
    if not supervised and n_views < 2:
        raise ValueError("training without labels needs n_views >= 2 (augmented copies)")
    has_images = image_encoder is not None and any(im is not None for im in catalogue.images)
    has_text = text_encoder is not None and any(bool(t) for t in catalogue.texts)
    if not (has_images or has_text):
        raise ValueError("nothing to train on: no images or texts the encoders can use")
    image_augment = image_augment or ImageAugment.camera()
    text_augment = text_augment or TextAugment.light()
    train_rows, valid_rows = split_by_product(labels, valid_fraction, seed, len(catalogue))
    folder = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="mmmatch-train-"))
    if tune_text and has_text:
        if labels is None:
            raise ValueError("tune_text needs labels (pairs of rows of one product)")
        anchors, positives = _text_pairs(catalogue.texts[train_rows],
                                         np.asarray(labels)[train_rows])
        if anchors:
            from mmmatch.tune_text import fine_tune_text

            text_encoder = str(fine_tune_text(
                text_encoder, anchors=anchors, positives=positives,
                output_dir=folder / "text_encoder", seed=seed, show_progress=show_progress,
                device=device))
    img_enc = get_encoder(image_encoder, "image", device) if has_images else None
    txt_enc = get_encoder(text_encoder, "text", device) if has_text else None
    images = catalogue.images if has_images else None
    texts = catalogue.texts if has_text else None

    def rows_views(rows: np.ndarray, v: int, image: bool = True) -> EmbeddingViews:
        return embed_views(
            None if images is None or not image else images[rows],
            None if texts is None else texts[rows], img_enc, txt_enc, image_augment,
            text_augment, n_views=v, seed=seed, cache=cache, show_progress=show_progress,
            base_dir=catalogue.base_dir)

    fusion = LearnedFusion(seed=seed, device=device, show_progress=show_progress,
                           **fusion_params)
    lab = None if labels is None else np.asarray(labels)
    valid = None
    image_weights = None
    if mode == "head":
        train_views = rows_views(train_rows, n_views)
        if len(valid_rows):
            valid = (rows_views(valid_rows, 1), lab[valid_rows])
        fusion.fit(train_views, None if lab is None else lab[train_rows], valid=valid)
    else:
        from mmmatch.encoders.image import EfficientNetLiteEncoder
        from mmmatch.finetune import split_backbone, trunk_views

        if img_enc is None or not isinstance(img_enc, EfficientNetLiteEncoder):
            raise ValueError("mode='finetune' needs an EfficientNet-Lite image encoder")
        private = EfficientNetLiteEncoder(img_enc.variant, device=device)  # tuned in place
        trunk, top = split_backbone(private, freeze)

        def trunk_of(rows: np.ndarray, v: int) -> tuple[Any, np.ndarray]:
            if trunk is None:  # end to end: pixels made per batch, nothing cached
                from mmmatch.finetune import PixelViews

                pixels = PixelViews(images[rows], private.preprocess, image_augment, v, seed,
                                    catalogue.base_dir)
                ok = pixels.check()
                return pixels, np.repeat(ok[:, None], v, axis=1)
            return trunk_views(images[rows], trunk, image_augment, v, seed,
                               show_progress=show_progress, base_dir=catalogue.base_dir)

        inputs, ok = trunk_of(train_rows, n_views)
        train_views = rows_views(train_rows, n_views, image=False)
        train_views = EmbeddingViews(np.zeros((len(train_rows), n_views, img_enc.dim),
                                              np.float32), ok, train_views.text,
                                     train_views.text_ok)
        valid_inputs = None
        if len(valid_rows):
            v_inputs, v_ok = trunk_of(valid_rows, 1)
            v_views = rows_views(valid_rows, 1, image=False)
            valid = (EmbeddingViews(np.zeros((len(valid_rows), 1, img_enc.dim), np.float32),
                                    v_ok, v_views.text, v_views.text_ok), lab[valid_rows])
            valid_inputs = _originals(v_inputs)
        fusion.fit(train_views, None if lab is None else lab[train_rows], valid=valid,
                   image_model=top, image_inputs=inputs, valid_image_inputs=valid_inputs,
                   reference_image_inputs=_originals(inputs))
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        image_weights = folder / "image_encoder.safetensors"
        state = {k: v.detach().cpu().contiguous()
                 for k, v in private.model.state_dict().items()}
        save_file(state, str(image_weights))
        fusion.image_model_ = None  # the tuned backbone now lives in image_weights
    info = {"rows": len(catalogue), "train_rows": len(train_rows),
            "valid_rows": len(valid_rows), "mode": mode, "freeze": freeze if mode ==
            "finetune" else "all", "n_views": n_views, "supervised": supervised,
            "image_augment": image_augment.to_dict(), "text_augment": text_augment.to_dict(),
            "tuned_text": bool(tune_text and has_text),
            "valid_score": _finite(fusion.valid_score_), "best_epoch": fusion.best_epoch_,
            "fit_seconds": fusion.fit_seconds_}
    return MatchModel(fusion, image_encoder if has_images else None,
                      text_encoder if has_text else None, image_weights,
                      info=info), (train_rows, valid_rows)


def _originals(inputs: Any) -> Any:
    """View 0 of per-view image-model inputs: an array slice, or a lazy view set's own."""
    return inputs.originals() if hasattr(inputs, "originals") else inputs[:, 0]


def _text_pairs(texts: np.ndarray, labels: np.ndarray) -> tuple[list[str], list[str]]:
    """Anchor / positive texts: each row with the next distinct text of its product."""
    anchors: list[str] = []
    positives: list[str] = []
    groups: dict[str, list[str]] = {}
    for text, label in zip(texts, labels, strict=True):
        if isinstance(text, str) and text.strip():
            groups.setdefault(str(label), []).append(str(text))
    for members in groups.values():
        distinct = list(dict.fromkeys(members))
        for i in range(len(distinct) - 1 if len(distinct) > 2 else len(distinct) // 2):
            anchors.append(distinct[i])
            positives.append(distinct[(i + 1) % len(distinct)])
    return anchors, positives
