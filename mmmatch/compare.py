"""Comparing candidate pairs: the evidence behind every score.

For each pair this computes the cosine of each modality (image, text embedding) and the
lexical (TF-IDF) cosine, and the zero-shot ``score``: their weighted mean over the signals
that both rows have. A row without a photo is thus compared on its text alone, on the same
scale, instead of being penalised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["EVIDENCE_COLUMNS", "FusedLayout", "ScoreWeights", "compare_pairs"]

EVIDENCE_COLUMNS = ["image_sim", "text_sim", "lexical_sim"]


@dataclass(frozen=True)
class ScoreWeights:
    """Weight of each signal in the zero-shot pair score.

    Attributes:
        image: image-embedding cosine.
        text: text-embedding cosine.
        lexical: TF-IDF character n-gram cosine.
    """

    image: float = 0.5
    text: float = 0.25
    lexical: float = 0.25

    def __post_init__(self) -> None:
        if min(self.image, self.text, self.lexical) < 0:
            raise ValueError(f"score weights must be >= 0, got {self}")

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass(frozen=True)
class FusedLayout:
    """Where each modality sits inside a fused vector: image first, then text.

    Attributes:
        image_dim: width of the image part (0 without images).
        text_dim: width of the text part (0 without text).
    """

    image_dim: int
    text_dim: int

    @property
    def dim(self) -> int:
        """Total width."""
        return self.image_dim + self.text_dim

    def parts(self, fused: np.ndarray) -> dict[str, np.ndarray]:
        """Split (n, dim) fused vectors into their non-empty modality parts."""
        out = {}
        if self.image_dim:
            out["image"] = fused[:, : self.image_dim]
        if self.text_dim:
            out["text"] = fused[:, self.image_dim :]
        return out


def _part_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (p, d) arrays; NaN where either row is all zero."""
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    cos[(na < 1e-8) | (nb < 1e-8)] = np.nan
    return cos.astype(np.float32)


def compare_pairs(
    left_fused: np.ndarray,
    right_fused: np.ndarray,
    li: np.ndarray,
    ri: np.ndarray,
    layout: FusedLayout,
    weights: ScoreWeights = ScoreWeights(),
    lexical_sim: np.ndarray | None = None,
    chunk_size: int = 65536,
) -> pd.DataFrame:
    """Evidence and zero-shot score of pairs ``(left[li[j]], right[ri[j]])``.

    Args:
        left_fused: (n_left, dim) float32 fused vectors (see :mod:`mmmatch.fusion`).
        right_fused: (n_right, dim) float32 fused vectors.
        li: (p,) int positions into ``left_fused``.
        ri: (p,) int positions into ``right_fused``.
        layout: where the modalities sit inside the fused vectors.
        weights: signal weights of the score.
        lexical_sim: (p,) float32 TF-IDF cosines, or ``None`` (no lexical signal).
        chunk_size: pairs compared at once.

    Returns:
        DataFrame with ``image_sim, text_sim, lexical_sim`` (NaN where a signal is
        missing for that pair) and ``score``, the weighted mean of the available signals.
    """
    li = np.asarray(li, dtype=np.int64)
    ri = np.asarray(ri, dtype=np.int64)
    p = len(li)
    sims = {name: np.full(p, np.nan, dtype=np.float32) for name in ("image", "text", "lexical")}
    for start in range(0, p, chunk_size):
        sl = slice(start, start + chunk_size)
        lp = layout.parts(left_fused[li[sl]])
        rp = layout.parts(right_fused[ri[sl]])
        for name in lp:
            sims[name][sl] = _part_cosine(lp[name], rp[name])
    if lexical_sim is not None:
        lex = np.asarray(lexical_sim, dtype=np.float32).copy()
        # a pair where either text is empty has no lexical evidence, like the text embedding
        lex[np.isnan(sims["text"])] = np.nan if layout.text_dim else lex[np.isnan(sims["text"])]
        sims["lexical"] = lex
    w = weights.to_dict()
    num = np.zeros(p, dtype=np.float64)
    den = np.zeros(p, dtype=np.float64)
    for name, values in sims.items():
        have = ~np.isnan(values)
        num[have] += w[name] * values[have]
        den[have] += w[name]
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(den > 0, num / den, np.nan).astype(np.float32)
    return pd.DataFrame({
        "image_sim": sims["image"], "text_sim": sims["text"],
        "lexical_sim": sims["lexical"], "score": score,
    })


