"""Comparing candidate pairs: the evidence behind every score.

For each pair this computes one similarity per signal: the cosine of the image embeddings,
of the text embeddings, and the TF-IDF cosines of character n-grams (``lexical``) and of
words (``word``). The zero-shot ``score`` is their weighted mean over the signals that both
rows have, so a row without a photo is compared on its text alone, on the same scale,
instead of being penalised. With hubness terms (:mod:`mmmatch.hubness`) each signal is
CSLS-corrected before the mean; the ``*_sim`` evidence columns stay raw cosines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "EVIDENCE_COLUMNS", "SEARCH_WEIGHTS", "SIGNALS", "TITLE_SEARCH_WEIGHTS", "FusedLayout",
    "ScoreWeights", "compare_pairs", "weighted_score",
]

SIGNALS = ("image", "text", "lexical", "word", "fused")
EVIDENCE_COLUMNS = [f"{name}_sim" for name in SIGNALS]


@dataclass(frozen=True)
class ScoreWeights:
    """Weight of each signal in the zero-shot pair score.

    The defaults are for matching catalogue titles against catalogue titles: the text side
    (text 0.1 : character n-grams 0.6 : words 0.3) was chosen on the Abt-Buy and
    Amazon-Google *train* labels. Searching with a short typed title is more semantic:
    :data:`SEARCH_WEIGHTS` were chosen on the Grocery Store *val* split.

    Attributes:
        image: image-embedding cosine.
        text: text-embedding cosine.
        lexical: TF-IDF character n-gram cosine.
        word: TF-IDF word uni- and bigram cosine.
        fused: cosine of the learned fused embeddings (a trained model only; see
            :mod:`mmmatch.train`).
    """

    image: float = 0.5
    text: float = 0.05
    lexical: float = 0.3
    word: float = 0.15
    fused: float = 0.0

    def __post_init__(self) -> None:
        if min(self.image, self.text, self.lexical, self.word, self.fused) < 0:
            raise ValueError(f"score weights must be >= 0, got {self}")

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly form."""
        return asdict(self)


SEARCH_WEIGHTS = ScoreWeights(image=0.5, text=0.4, lexical=0.1, word=0.0)
"""Default weights of :class:`~mmmatch.search.SearchIndex` for queries with a photo (and
maybe a typed title); best on the Grocery Store val split (.709 top-1 with photo + title)."""

TITLE_SEARCH_WEIGHTS = ScoreWeights(image=0.0, text=1.0, lexical=0.0, word=0.0)
"""Default weights of :class:`~mmmatch.search.SearchIndex` for typed-title-only queries: on
the Grocery Store val split the sentence embedding alone (.584 top-1) beats adding n-gram
evidence (.564), which matches a generic typed word against every description."""


@dataclass(frozen=True)
class FusedLayout:
    """Where each part sits inside a fused vector: image, text, then the learned embedding.

    Attributes:
        image_dim: width of the image part (0 without images).
        text_dim: width of the text part (0 without text).
        learned_dim: width of the learned fused embedding (0 without a trained model).
    """

    image_dim: int
    text_dim: int
    learned_dim: int = 0

    @classmethod
    def of(cls, encoded: Any) -> FusedLayout:
        """The layout of an :class:`~mmmatch.encode.EncodedCatalogue`'s fused vectors."""
        learned = getattr(encoded, "learned", None)
        return cls(
            encoded.image.shape[1] if encoded.image is not None else 0,
            encoded.text.shape[1] if encoded.text is not None else 0,
            learned.shape[1] if learned is not None else 0,
        )

    @property
    def dim(self) -> int:
        """Total width."""
        return self.image_dim + self.text_dim + self.learned_dim

    def parts(self, fused: np.ndarray) -> dict[str, np.ndarray]:
        """Split (n, dim) fused vectors into their non-empty modality parts."""
        out = {}
        if self.image_dim:
            out["image"] = fused[:, : self.image_dim]
        if self.text_dim:
            out["text"] = fused[:, self.image_dim : self.image_dim + self.text_dim]
        if self.learned_dim:
            out["fused"] = fused[:, self.image_dim + self.text_dim :]
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
    sparse_sims: dict[str, np.ndarray] | None = None,
    hubness: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
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
        sparse_sims: ``{"lexical": (p,), "word": (p,)}`` TF-IDF cosines of the pairs, for
            the signals in use (NaN where a text is empty).
        hubness: per signal, ``(r_left (n_left,), r_right (n_right,))`` neighbourhood
            means; the signal enters the score as ``sim - (r_left + r_right) / 2``.
        chunk_size: pairs compared at once.

    Returns:
        DataFrame with ``image_sim, text_sim, lexical_sim, word_sim`` (NaN where a signal
        is missing for that pair) and ``score``, the weighted mean of the available
        (hubness-corrected) signals.
    """
    li = np.asarray(li, dtype=np.int64)
    ri = np.asarray(ri, dtype=np.int64)
    p = len(li)
    sims = {name: np.full(p, np.nan, dtype=np.float32) for name in SIGNALS}
    for start in range(0, p, chunk_size):
        sl = slice(start, start + chunk_size)
        lp = layout.parts(left_fused[li[sl]])
        rp = layout.parts(right_fused[ri[sl]])
        for name in lp:
            sims[name][sl] = _part_cosine(lp[name], rp[name])
    for name, values in (sparse_sims or {}).items():
        sims[name] = np.asarray(values, dtype=np.float32)
    if hubness:
        adjusted = {
            name: values - (hubness[name][0][li] + hubness[name][1][ri]) / 2
            if name in hubness else values
            for name, values in sims.items()
        }
    else:
        adjusted = sims
    out = pd.DataFrame({f"{name}_sim": values for name, values in sims.items()})
    out["score"] = weighted_score(adjusted, weights)
    return out


def weighted_score(sims: dict[str, np.ndarray], weights: ScoreWeights) -> np.ndarray:
    """Weighted mean of the signals each pair has (NaN entries are left out).

    Args:
        sims: signal name -> (p,) similarities (NaN where missing).
        weights: the signal weights.

    Returns:
        (p,) float32; NaN for a pair with no weighted signal.
    """
    w = weights.to_dict()
    p = len(next(iter(sims.values()))) if sims else 0
    num = np.zeros(p, dtype=np.float64)
    den = np.zeros(p, dtype=np.float64)
    for name, values in sims.items():
        if w[name] == 0:
            continue
        have = ~np.isnan(values)
        num[have] += w[name] * values[have]
        den[have] += w[name]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan).astype(np.float32)
