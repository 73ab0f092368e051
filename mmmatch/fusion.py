"""The fuse stage: per-modality embeddings in, one vector per row out.

The zero-shot fusion is a weighted concatenation: with weights ``w`` the fused vector is
``[sqrt(w_image) * image, sqrt(w_text) * text]`` renormalised, so the inner product of two
complete rows is exactly ``w_image * cos_image + w_text * cos_text`` (for weights summing to
one). A row missing a modality keeps its other part, renormalised, so it still retrieves by
the modality it has; a query with only a title (or only a photo) ranks by that modality.

A learned fusion (a trained head) plugs in through the same :class:`Fuser` protocol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from mmmatch._validation import l2_normalize
from mmmatch.encode import EncodedCatalogue

__all__ = ["ConcatFusion", "Fuser", "FusionWeights", "fuse"]


@dataclass(frozen=True)
class FusionWeights:
    """Relative weight of each modality (normalised to sum to one when used).

    Attributes:
        image: weight of the image cosine.
        text: weight of the text-embedding cosine.
    """

    image: float = 0.5
    text: float = 0.5

    def __post_init__(self) -> None:
        if self.image < 0 or self.text < 0 or self.image + self.text <= 0:
            raise ValueError(f"fusion weights must be >= 0 and not all zero, got {self}")

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly form."""
        return asdict(self)


class Fuser(Protocol):
    """What a fusion stage provides: ``transform(encoded) -> (n, dim) float32``."""

    def transform(self, encoded: EncodedCatalogue) -> np.ndarray:
        """Fused, L2-normalised vectors of every row."""
        ...


def fuse(
    image: np.ndarray | None,
    image_ok: np.ndarray,
    text: np.ndarray | None,
    text_ok: np.ndarray,
    weights: FusionWeights = FusionWeights(),
) -> np.ndarray:
    """Weighted concatenation of the modalities, renormalised.

    Args:
        image: (n, d_i) float32 L2-normalised or ``None`` (no image encoder).
        image_ok: (n,) bool, rows whose image embedding is valid.
        text: (n, d_t) float32 L2-normalised or ``None`` (no text encoder).
        text_ok: (n,) bool, rows whose text embedding is valid.
        weights: the modality weights.

    Returns:
        (n, d_i + d_t) float32, L2-normalised (all-zero only for rows with neither modality).
    """
    total = weights.image + weights.text
    parts = []
    if image is not None:
        parts.append(image * (np.sqrt(weights.image / total) * image_ok[:, None]))
    if text is not None:
        parts.append(text * (np.sqrt(weights.text / total) * text_ok[:, None]))
    if not parts:
        raise ValueError("nothing to fuse: no image and no text embeddings")
    return l2_normalize(np.hstack(parts).astype(np.float32, copy=False))


class ConcatFusion:
    """Zero-shot fusion: :func:`fuse` with fixed weights. Nothing to learn.

    Args:
        weights: the modality weights.
    """

    def __init__(self, weights: FusionWeights | None = None) -> None:
        self.weights = weights

    def fit(self, encoded: Any = None) -> ConcatFusion:
        """No-op (kept for the estimator contract); returns ``self``."""
        return self

    def transform(self, encoded: EncodedCatalogue) -> np.ndarray:
        """Fused vectors, (n, d_i + d_t) float32."""
        return fuse(
            encoded.image, encoded.image_ok, encoded.text, encoded.text_ok,
            self.weights or FusionWeights(),
        )
