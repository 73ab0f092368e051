"""Fine-tune the text encoder on matched title pairs (contrastive, in-batch negatives).

Training pairs are (anchor, positive) texts of the same product, e.g. a left-catalogue title
and its matching right-catalogue title, optionally with a hard negative per pair (a similar
but different product). The loss is sentence-transformers' ``MultipleNegativesRankingLoss``
(InfoNCE: each anchor must pick its positive among every positive, and hard negative, in the
batch; by default averaged with the reverse direction, each positive picking its anchor) plus,
when hard negatives are given, ``triplet_weight`` times a cosine ``TripletLoss`` on
(anchor, positive, negative). The result is a plain sentence-transformers
folder that :func:`mmmatch.encoders.get_encoder` and ``Matcher(text_encoder=folder)`` load
offline.

A plain PyTorch loop drives the two losses (one padded forward pass per batch for all the
columns), so training needs neither ``datasets`` nor ``accelerate``.

Example:
    >>> from mmmatch.tune_text import fine_tune_text
    >>> folder = fine_tune_text(  # doctest: +SKIP
    ...     "minilm-l6", anchors=["sony pslx350h turntable"], positives=["Sony PS-LX350H"],
    ...     output_dir="models/minilm-products")
    >>> Matcher(text_encoder=str(folder))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmmatch._io import atomic_dir

__all__ = ["TRAINING_LOG", "fine_tune_text", "resolve_text_model"]

TRAINING_LOG = "mmmatch_training.json"
"""File written next to the weights: the training settings and the loss per step."""


def resolve_text_model(model: str | Path) -> str:
    """What ``SentenceTransformer(...)`` should load for ``model``.

    Args:
        model: a text preset of :mod:`mmmatch.encoders` (``"minilm-l6"``), a local folder or a
            sentence-transformers / Hugging Face hub id.

    Returns:
        The preset's packaged folder, or ``model`` itself (``~`` expanded).

    Raises:
        ValueError: ``model`` is an image preset.
    """
    from mmmatch.encoders import PRESETS
    from mmmatch.encoders.text import minilm_path

    name = str(model)
    if name in PRESETS:
        if PRESETS[name]["modality"] != "text":
            raise ValueError(f"{name!r} is an image encoder; fine_tune_text needs a text model")
        return str(minilm_path())
    return str(Path(name).expanduser()) if name.startswith("~") else name


def _check_texts(name: str, texts: Sequence[str], n: int | None) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of strings, not one string")
    out = list(texts)
    if n is not None and len(out) != n:
        raise ValueError(f"{name} has {len(out)} rows, anchors have {n}")
    for i, t in enumerate(out):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{name}[{i}] must be a non-empty string, got {t!r}")
    return out


def _batches(
    columns: list[list[str]], batch_size: int, rng: random.Random
) -> Iterator[list[int]]:
    """Shuffled batches of row indices where no text appears twice.

    A repeated text (two anchors sharing a positive, a hard negative that is another row's
    positive) would be a false in-batch negative; such rows wait for a later batch.
    """
    remaining = list(range(len(columns[0])))
    rng.shuffle(remaining)
    while remaining:
        batch: list[int] = []
        seen: set[str] = set()
        deferred: list[int] = []
        for j, i in enumerate(remaining):
            texts = {col[i] for col in columns}
            if texts & seen:
                deferred.append(i)
                continue
            batch.append(i)
            seen |= texts
            if len(batch) == batch_size:
                deferred.extend(remaining[j + 1 :])
                break
        yield batch
        remaining = deferred


def _embed(model: Any, texts: list[str], device: str) -> Any:
    """Sentence embeddings with gradients: (len(texts), dim) tensor."""
    import torch

    prep = getattr(model, "preprocess", None) or model.tokenize
    features = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                for k, v in prep(texts).items()}
    return model(features)["sentence_embedding"]


def fine_tune_text(
    model: str | Path = "minilm-l6",
    *,
    anchors: Sequence[str],
    positives: Sequence[str],
    negatives: Sequence[str] | None = None,
    output_dir: str | Path,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 2e-5,
    triplet_weight: float = 1.0,
    triplet_margin: float = 0.2,
    scale: float = 20.0,
    symmetric: bool = True,
    warmup_ratio: float = 0.1,
    max_seq_length: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    device: str | None = None,
) -> Path:
    """Fine-tune a sentence-transformer on matching pairs and save it as a folder.

    Args:
        model: text preset (``"minilm-l6"``), local sentence-transformers / transformers
            folder, or hub id (hub ids need the weights in the local Hugging Face cache when
            offline). The source is never modified.
        anchors: n texts.
        positives: n texts; ``positives[i]`` is the same product as ``anchors[i]``.
        negatives: n texts or ``None``; ``negatives[i]`` is a hard negative of ``anchors[i]``
            (similar, but a different product). They join the in-batch candidates of the
            ranking loss and drive the triplet term.
        output_dir: folder to write; replaced atomically (a temporary sibling folder is
            written, then renamed), so a failed run leaves any previous model in place.
        epochs: passes over the pairs.
        batch_size: pairs per step; the ranking loss sees ``batch_size - 1`` in-batch
            negatives per anchor. Rows whose texts already occur in the batch are deferred,
            so some batches are smaller.
        lr: AdamW learning rate (linear warm-up over ``warmup_ratio`` of the steps, then
            linear decay to 0).
        triplet_weight: weight of the triplet term (only with ``negatives``); 0 disables it.
        triplet_margin: margin of the triplet term in cosine distance (``1 - cos``).
        scale: inverse temperature of the ranking loss (cosine similarities times ``scale``).
        symmetric: also rank anchors for each positive (among the batch's anchors, no hard
            negatives) and average the two directions, as matching is symmetric.
        warmup_ratio: fraction of the steps with a rising learning rate.
        max_seq_length: truncate texts to this many tokens (saved with the model); ``None``
            keeps the model's own.
        seed: seeds shuffling, dropout and initialisation of new layers.
        show_progress: show a tqdm bar with the running loss.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.

    Returns:
        ``output_dir`` as a Path. It also holds :data:`TRAINING_LOG` (settings, number of
        pairs, seconds, loss per step).

    Raises:
        ValueError: lengths differ, a text is empty or not a string (the message names the
            column and row), or a setting is out of range.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    try:
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
            TripletDistanceMetric,
            TripletLoss,
        )
    except ImportError:  # pragma: no cover - sentence-transformers < 6
        from sentence_transformers.losses import (
            MultipleNegativesRankingLoss,
            TripletDistanceMetric,
            TripletLoss,
        )

    from mmmatch.encoders.image import _pick_device, quiet_loading

    a = _check_texts("anchors", anchors, None)
    if not a:
        raise ValueError("no training pairs: anchors is empty")
    columns = [a, _check_texts("positives", positives, len(a))]
    if negatives is not None:
        columns.append(_check_texts("negatives", negatives, len(a)))
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if lr <= 0 or triplet_weight < 0 or not 0 <= warmup_ratio < 1:
        raise ValueError("lr must be > 0, triplet_weight >= 0 and warmup_ratio in [0, 1)")

    source = resolve_text_model(model)
    device = _pick_device(device)
    random.seed(seed)
    torch.manual_seed(seed)
    with quiet_loading():
        st = SentenceTransformer(source, device=device)
    if max_seq_length is not None:
        st.max_seq_length = max_seq_length
    ranking = MultipleNegativesRankingLoss(st, scale=scale)
    triplet = TripletLoss(st, TripletDistanceMetric.COSINE, triplet_margin)
    if not hasattr(ranking, "compute_loss_from_embeddings"):  # pragma: no cover - old releases
        raise ImportError("fine_tune_text needs a sentence-transformers release whose losses "
                          "have compute_loss_from_embeddings (6.x has)")
    use_triplet = negatives is not None and triplet_weight > 0

    rng = random.Random(seed)
    plan = [list(_batches(columns, batch_size, rng)) for _ in range(epochs)]
    total = sum(len(p) for p in plan)
    warmup = math.ceil(total * warmup_ratio)
    optimizer = torch.optim.AdamW(st.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / (warmup + 1) if step < warmup
        else max(0.0, (total - step) / max(1, total - warmup)),
    )

    losses: list[float] = []
    start = time.perf_counter()
    st.train()
    bar = tqdm(total=total, desc="fine-tune text", disable=not show_progress)
    for epoch_batches in plan:
        for batch in epoch_batches:
            texts = [col[i] for col in columns for i in batch]
            emb = _embed(st, texts, device)
            parts = list(emb.split(len(batch)))  # anchors, positives[, negatives]
            loss = ranking.compute_loss_from_embeddings(parts, None)
            if symmetric:  # each positive must pick its anchor among the batch's anchors
                backward = ranking.compute_loss_from_embeddings([parts[1], parts[0]], None)
                loss = (loss + backward) / 2
            if use_triplet:
                loss = loss + triplet_weight * triplet.compute_loss_from_embeddings(parts, None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    st.eval()
    seconds = time.perf_counter() - start

    log = {
        "base_model": str(model), "source": source, "pairs": len(a),
        "hard_negatives": negatives is not None, "epochs": epochs, "batch_size": batch_size,
        "steps": total, "lr": lr, "triplet_weight": triplet_weight if use_triplet else 0.0,
        "triplet_margin": triplet_margin, "scale": scale, "symmetric": symmetric,
        "warmup_ratio": warmup_ratio, "max_seq_length": st.max_seq_length, "seed": seed,
        "device": device, "train_s": seconds, "loss": losses,
    }
    output_dir = Path(output_dir).expanduser()
    with atomic_dir(output_dir) as tmp:
        with quiet_loading():
            st.save(str(tmp))
        (tmp / TRAINING_LOG).write_text(json.dumps(log, indent=1) + "\n")
    return output_dir
