"""Embedding views: each row as it is (view 0) and as augmented copies (views 1..V-1).

The learned head trains on several views per row so a product photographed once still has
positives, and so it learns what a camera shot does to a catalogue image. View ``v`` of a
row is deterministic (seeded by the row's content and ``v``, see
:func:`mmmatch.augment.view_rng`), so its embedding is cached like any other: the cache key
is the encoder's id plus the augmentation, seed and view, and the content hash.

Augmented images go through :func:`mmmatch.encode.encode_images` unchanged (threaded
decoding, caching, bad images reported and skipped) by wrapping the encoder in
:class:`AugmentedView`, whose preprocessing augments before the usual geometry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmmatch.augment import ImageAugment, TextAugment, view_rng
from mmmatch.cache import EmbeddingCache
from mmmatch.encode import encode_images, encode_texts
from mmmatch.fusion import EmbeddingViews
from mmmatch.images import ImageLimits

__all__ = ["AugmentedView", "embed_views", "image_views", "text_views"]


def _fingerprint(obj: Any) -> str:
    blob = json.dumps(obj.to_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


class _AugmentedPreprocess:
    """An encoder's preprocessing with an augmentation in front of its geometry."""

    def __init__(self, base: Any, augment: ImageAugment, seed: int, view: int) -> None:
        self.base, self.augment, self.seed, self.view = base, augment, seed, view
        self.size = base.size
        self.mean, self.std = base.mean, base.std

    @property
    def draft_size(self) -> int:
        # decode larger: a random crop of a quarter of the image still has full resolution
        return 2 * self.base.draft_size

    def geometry(self, img: Image.Image) -> np.ndarray:
        key = hashlib.blake2b(img.tobytes(), digest_size=8).hexdigest()
        return self.base.geometry(self.augment(img, view_rng(self.seed, key, self.view)))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        return self.base.normalize(pixels)

    def fingerprint(self) -> str:
        return f"{self.base.fingerprint()}+aug{_fingerprint(self.augment)}s{self.seed}v{self.view}"


class AugmentedView:
    """An image encoder that embeds view ``view`` of each image (``augment`` applied with an
    RNG seeded by ``seed``, the image content and ``view``) instead of the image itself.

    It has what :func:`~mmmatch.encode.encode_images` needs (``preprocess``,
    ``encode_uint8`` / ``encode_pixels``, ``dim``, ``batch_size``, ``encoder_id``).

    Args:
        encoder: the image encoder.
        augment: the augmentation.
        seed: base seed.
        view: view number (>= 1; view 0 is the plain encoder).
    """

    modality = "image"

    def __init__(self, encoder: Any, augment: ImageAugment, seed: int, view: int) -> None:
        self.encoder = encoder
        self.preprocess = _AugmentedPreprocess(encoder.preprocess, augment, seed, view)
        self.dim = encoder.dim
        self.batch_size = encoder.batch_size
        self.encoder_id = f"{encoder.encoder_id}|{self.preprocess.fingerprint()}"

    def encode_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """See :meth:`~mmmatch.encoders.ImageEncoderBase.encode_uint8`."""
        if hasattr(self.encoder, "encode_uint8"):
            return self.encoder.encode_uint8(pixels)
        return self.encoder.encode_pixels(self.encoder.preprocess.normalize(pixels))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """See :meth:`~mmmatch.encoders.ImageEncoderBase.encode_pixels`."""
        return self.encoder.encode_pixels(pixels)


def image_views(
    refs: Sequence[Any], encoder: Any, augment: ImageAugment | None, n_views: int,
    seed: int = 0, cache: EmbeddingCache | None = None, limits: ImageLimits | None = None,
    show_progress: bool = False, base_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``n_views`` views of each image (view 0 unaugmented).

    Args:
        refs: n image references (``None`` = no image).
        encoder: image encoder.
        augment: augmentation of views 1..; ``None`` with ``n_views == 1`` only.
        n_views: views per image, >= 1.
        seed: augmentation seed.
        cache: embedding cache.
        limits: image limits.
        show_progress: tqdm bars.
        base_dir: folder relative image paths are resolved against.

    Returns:
        ``(embeddings (n, V, d) float32, ok (n, V) bool)``; a bad image is not ok in any
        view.
    """
    if n_views < 1 or (n_views > 1 and augment is None):
        raise ValueError(f"n_views must be >= 1 (and > 1 needs an augment), got {n_views}")
    out = np.zeros((len(refs), n_views, encoder.dim), dtype=np.float32)
    ok = np.zeros((len(refs), n_views), dtype=bool)
    for v in range(n_views):
        enc = encoder if v == 0 else AugmentedView(encoder, augment, seed, v)
        x, good, _ = encode_images(refs, enc, base_dir, cache=cache, limits=limits,
                                   show_progress=show_progress)
        out[:, v], ok[:, v] = x, good
    ok &= ok[:, :1]
    return out, ok


def text_views(
    texts: Sequence[str], encoder: Any, augment: TextAugment | None, n_views: int,
    seed: int = 0, cache: EmbeddingCache | None = None, show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``n_views`` views of each text (view 0 as it is).

    Returns:
        ``(embeddings (n, W, d) float32, ok (n, W) bool)``; empty texts are not ok.
    """
    if n_views < 1 or (n_views > 1 and augment is None):
        raise ValueError(f"n_views must be >= 1 (and > 1 needs an augment), got {n_views}")
    texts = [t if isinstance(t, str) else "" for t in texts]
    variants = [texts] + [
        [augment(t, view_rng(seed, t, v)) if t else "" for t in texts]  # type: ignore[misc]
        for v in range(1, n_views)]
    flat = [t for variant in variants for t in variant]
    emb = encode_texts(flat, encoder, cache, show_progress)
    n = len(texts)
    out = np.ascontiguousarray(emb.reshape(n_views, n, -1).transpose(1, 0, 2))
    ok = np.array([[bool(t.strip()) for t in variant] for variant in variants]).T.reshape(n, -1)
    ok &= ok[:, :1]
    out[~ok] = 0
    return out, ok


def embed_views(
    images: Sequence[Any] | None, texts: Sequence[str] | None, image_encoder: Any,
    text_encoder: Any, image_augment: ImageAugment | None = None,
    text_augment: TextAugment | None = None, n_views: int = 1, text_views_n: int | None = None,
    seed: int = 0, cache: EmbeddingCache | None = None, limits: ImageLimits | None = None,
    show_progress: bool = False, base_dir: str | Path | None = None,
) -> EmbeddingViews:
    """Embedding views of rows with an image and / or a text each.

    Args:
        images: n image references or ``None`` (no image side).
        texts: n texts or ``None`` (no text side).
        image_encoder: image encoder (ignored without images).
        text_encoder: text encoder (ignored without texts).
        image_augment: augmentation of image views 1..
        text_augment: augmentation of text views 1..
        n_views: image views per row.
        text_views_n: text views per row (default ``n_views``).
        seed: augmentation seed.
        cache: embedding cache.
        limits: image limits.
        show_progress: tqdm bars.
        base_dir: folder relative image paths are resolved against.
    """
    n = len(images) if images is not None else 0 if texts is None else len(texts)
    img = txt = None
    img_ok = np.zeros((n, 1), dtype=bool)
    txt_ok = np.zeros((n, 1), dtype=bool)
    if images is not None and image_encoder is not None:
        img, img_ok = image_views(images, image_encoder, image_augment, n_views, seed, cache,
                                  limits, show_progress, base_dir)
    if texts is not None and text_encoder is not None:
        w = text_views_n or n_views
        txt, txt_ok = text_views(texts, text_encoder, text_augment if w > 1 else None, w,
                                 seed, cache, show_progress)
    return EmbeddingViews(img, img_ok, txt, txt_ok)
