"""mmmatch: find the same product across catalogues from its photo and its title.

Example:
    >>> import mmmatch
    >>> pairs = mmmatch.match(left_df, right_df)  # doctest: +SKIP
    >>> clusters = mmmatch.dedupe(df)  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from mmmatch._blas import tune_openblas

tune_openblas()  # before numpy / faiss load OpenBLAS: see mmmatch/_blas.py

from mmmatch.catalogue import Catalogue, ColumnMap, load_catalogue
from mmmatch.compare import ScoreWeights
from mmmatch.encoders import get_encoder, list_encoders
from mmmatch.exceptions import (
    CatalogueError,
    ConfigMismatchError,
    ImageError,
    MmmatchError,
    NotFittedError,
    UnknownEncoderError,
)
from mmmatch.index import EmbeddingIndex
from mmmatch.model import MatchModel
from mmmatch.pipeline import Matcher, dedupe, match
from mmmatch.reporting import report
from mmmatch.search import SearchIndex
from mmmatch.similarity import Metric

__all__ = [
    "Catalogue",
    "CatalogueError",
    "ColumnMap",
    "ConfigMismatchError",
    "EmbeddingIndex",
    "ImageError",
    "MatchModel",
    "Matcher",
    "Metric",
    "MmmatchError",
    "NotFittedError",
    "ScoreWeights",
    "SearchIndex",
    "UnknownEncoderError",
    "__version__",
    "dedupe",
    "get_encoder",
    "list_encoders",
    "load_catalogue",
    "match",
    "report",
]
