"""The similarity metric: one enum that knows which direction is "closer"."""

from __future__ import annotations

from enum import Enum

import numpy as np

__all__ = ["Metric"]


class Metric(str, Enum):
    """How two embeddings are compared.

    * ``cosine``: inner product of L2-normalised vectors, in [-1, 1], higher is closer.
    * ``ip``: raw inner product, higher is closer.
    * ``l2``: squared Euclidean distance, lower is closer.

    Example:
        >>> Metric("cosine").higher_is_better
        True
        >>> Metric.L2.is_better(0.1, 0.5)
        True
    """

    COSINE = "cosine"
    IP = "ip"
    L2 = "l2"

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger score means more similar."""
        return self is not Metric.L2

    def is_better(self, a: float, b: float) -> bool:
        """Whether score ``a`` is strictly closer than score ``b``."""
        return a > b if self.higher_is_better else a < b

    def passes(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        """Boolean mask of the scores at least as close as ``threshold``."""
        scores = np.asarray(scores)
        return scores >= threshold if self.higher_is_better else scores <= threshold

    @property
    def worst(self) -> float:
        """The score of "no neighbour" (used to pad results)."""
        return -np.inf if self.higher_is_better else np.inf

    @classmethod
    def parse(cls, value: str | Metric) -> Metric:
        """Like ``Metric(value)`` but with an error that lists the valid names."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown metric {value!r}; expected one of: {valid}") from None
