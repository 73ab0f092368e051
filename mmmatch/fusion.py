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
import torch

from mmmatch._validation import l2_normalize
from mmmatch.encode import EncodedCatalogue

__all__ = [
    "ConcatFusion", "EmbeddingViews", "Fuser", "FusionHead", "FusionWeights", "embed_with_head",
    "fuse",
]


@dataclass(frozen=True)
class FusionWeights:
    """Relative weight of each modality (normalised to sum to one when used).

    Attributes:
        image: weight of the image cosine.
        text: weight of the text-embedding cosine.
        learned: weight of the learned fused embedding's cosine (a trained model only).
    """

    image: float = 0.5
    text: float = 0.5
    learned: float = 0.0

    def __post_init__(self) -> None:
        if min(self.image, self.text, self.learned) < 0 or (
                self.image + self.text + self.learned <= 0):
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
    learned: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted concatenation of the modalities (and a learned embedding), renormalised.

    Args:
        image: (n, d_i) float32 L2-normalised or ``None`` (no image encoder).
        image_ok: (n,) bool, rows whose image embedding is valid.
        text: (n, d_t) float32 L2-normalised or ``None`` (no text encoder).
        text_ok: (n,) bool, rows whose text embedding is valid.
        weights: the modality weights.
        learned: (n, d_l) float32 L2-normalised learned fused embeddings, appended with
            weight ``weights.learned``; ``None`` without a trained model.

    Returns:
        (n, d_i + d_t [+ d_l]) float32, L2-normalised (all-zero only for rows with neither
        modality).
    """
    total = weights.image + weights.text + (weights.learned if learned is not None else 0.0)
    parts = []
    if image is not None:
        parts.append(image * (np.sqrt(weights.image / total) * image_ok[:, None]))
    if text is not None:
        parts.append(text * (np.sqrt(weights.text / total) * text_ok[:, None]))
    if learned is not None:
        parts.append(learned * np.sqrt(weights.learned / total))
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


# -- learned fusion ---------------------------------------------------------------------------


@dataclass
class EmbeddingViews:
    """Per-row embeddings of one or more views of each row (the original and augmentations).

    The learned head trains on these: view 0 is the row as it is, views 1.. are augmented
    copies (see :mod:`mmmatch.augment`), so a product with one example still has positives.

    Attributes:
        image: (n, V, d_i) float32 L2-normalised, or ``None`` without an image encoder.
        image_ok: (n, V) bool.
        text: (n, W, d_t) float32 L2-normalised, or ``None`` without a text encoder.
        text_ok: (n, W) bool.
    """

    image: np.ndarray | None
    image_ok: np.ndarray
    text: np.ndarray | None
    text_ok: np.ndarray

    def __post_init__(self) -> None:
        if self.image is None and self.text is None:
            raise ValueError("EmbeddingViews needs image or text embeddings")
        for name, arr, ok in (("image", self.image, self.image_ok),
                              ("text", self.text, self.text_ok)):
            if ok.ndim != 2 or ok.shape[1] < 1:
                raise ValueError(f"{name}_ok: expected (n, V) with V >= 1, got {ok.shape}")
            if arr is not None and (arr.ndim != 3 or ok.shape != arr.shape[:2]):
                raise ValueError(f"{name}: expected (n, V, d) with ok (n, V), got "
                                 f"{arr.shape} and {ok.shape}")
        if len(self.image_ok) != len(self.text_ok):
            raise ValueError(f"image and text views cover {len(self.image_ok)} and "
                             f"{len(self.text_ok)} rows")

    def __len__(self) -> int:
        return len(self.image_ok)

    @classmethod
    def from_encoded(cls, encoded: EncodedCatalogue) -> EmbeddingViews:
        """One view per row: the encoded catalogue as it is."""
        n = len(encoded)
        return cls(
            None if encoded.image is None else encoded.image[:, None, :],
            (encoded.image_ok if encoded.image is not None else np.zeros(n, bool))[:, None],
            None if encoded.text is None else encoded.text[:, None, :],
            (encoded.text_ok if encoded.text is not None else np.zeros(n, bool))[:, None],
        )

    @classmethod
    def concat(cls, parts: list[EmbeddingViews]) -> EmbeddingViews:
        """Rows of several view sets stacked (same view counts and widths)."""
        def cat(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if arrays[0] is None else np.concatenate(arrays)
        return cls(cat("image"), cat("image_ok"), cat("text"), cat("text_ok"))

    def subset(self, rows: np.ndarray) -> EmbeddingViews:
        """The given rows, all their views."""
        return EmbeddingViews(
            None if self.image is None else self.image[rows], self.image_ok[rows],
            None if self.text is None else self.text[rows], self.text_ok[rows])

    def pick(self, rows: np.ndarray, views: np.ndarray
             ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None, np.ndarray]:
        """One view of each row: view ``v`` of row ``r`` (``v`` modulo the views there are).

        Returns:
            ``(image (b, d_i) | None, image_ok (b,), text (b, d_t) | None, text_ok (b,))``.
        """
        vi = views % self.image_ok.shape[1]
        vt = views % self.text_ok.shape[1]
        return (None if self.image is None else self.image[rows, vi], self.image_ok[rows, vi],
                None if self.text is None else self.text[rows, vt], self.text_ok[rows, vt])

    def originals(self) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None, np.ndarray]:
        """View 0 of every row (see :meth:`pick`)."""
        rows = np.arange(len(self))
        return self.pick(rows, np.zeros(len(self), dtype=np.int64))


class FusionHead(torch.nn.Module):
    """Image and text embeddings -> one fused, L2-normalised embedding.

    Each modality goes through its own projection (``Linear -> GELU -> Dropout -> Linear``
    to ``dim``); a row missing a modality gets that modality's learned placeholder vector
    instead (not zeros, which would pull every text-only row to the same point). The two
    projections are concatenated, mixed by a linear layer and L2-normalised.

    Args:
        image_dim: width of the image embeddings (0: no image side).
        text_dim: width of the text embeddings (0: no text side).
        dim: width of the fused embedding.
        hidden: width of each projection's hidden layer.
        dropout: dropout inside the projections.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, hidden: int = 1024,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if image_dim <= 0 and text_dim <= 0:
            raise ValueError("FusionHead needs image_dim > 0 or text_dim > 0")
        if dim <= 0 or hidden <= 0 or not 0 <= dropout < 1:
            raise ValueError(f"expected dim > 0, hidden > 0, 0 <= dropout < 1; got {dim}, "
                             f"{hidden}, {dropout}")
        self.image_dim, self.text_dim, self.dim = image_dim, text_dim, dim
        self.hidden, self.dropout = hidden, dropout

        def projection(width: int) -> torch.nn.Module:
            return torch.nn.Sequential(
                torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
                torch.nn.Linear(hidden, dim))

        self.image = projection(image_dim) if image_dim > 0 else None
        self.text = projection(text_dim) if text_dim > 0 else None
        self.image_missing = torch.nn.Parameter(torch.randn(dim) * 0.02)
        self.text_missing = torch.nn.Parameter(torch.randn(dim) * 0.02)
        self.mix = torch.nn.Linear(2 * dim, dim)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (saved with the weights)."""
        return {"image_dim": self.image_dim, "text_dim": self.text_dim, "dim": self.dim,
                "hidden": self.hidden, "dropout": self.dropout}

    def _side(self, proj: torch.nn.Module | None, x: torch.Tensor | None, ok: torch.Tensor,
              missing: torch.Tensor) -> torch.Tensor:
        if proj is None or x is None:
            return missing.expand(len(ok), -1)
        return torch.where(ok[:, None], proj(x), missing)

    def forward(self, image: torch.Tensor | None, image_ok: torch.Tensor,
                text: torch.Tensor | None, text_ok: torch.Tensor) -> torch.Tensor:
        """Fuse a batch.

        Args:
            image: (b, image_dim) float32 or ``None``.
            image_ok: (b,) bool, rows whose image is valid.
            text: (b, text_dim) float32 or ``None``.
            text_ok: (b,) bool.

        Returns:
            (b, dim) float32, L2-normalised.
        """
        pi = self._side(self.image, image, image_ok, self.image_missing)
        pt = self._side(self.text, text, text_ok, self.text_missing)
        z = self.mix(torch.cat([pi, pt], dim=1))
        return torch.nn.functional.normalize(z.float(), dim=1)


def embed_with_head(head: FusionHead, image: np.ndarray | None, image_ok: np.ndarray,
                    text: np.ndarray | None, text_ok: np.ndarray, batch_size: int = 4096,
                    device: str = "cpu") -> np.ndarray:
    """Run a head over arrays in batches (evaluation mode, no gradients).

    Returns:
        (n, head.dim) float32, L2-normalised.
    """
    n = len(image_ok)
    out = np.empty((n, head.dim), dtype=np.float32)
    was_training = head.training
    head.eval()

    def t(a: np.ndarray | None, sl: slice) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a[sl])).to(device)

    try:
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                sl = slice(s, s + batch_size)
                out[sl] = head(t(image, sl), t(image_ok, sl), t(text, sl),
                               t(text_ok, sl)).cpu().numpy()
    finally:
        head.train(was_training)
    return out
