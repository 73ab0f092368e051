"""Lexical similarity: TF-IDF over character n-grams.

Sentence embeddings blur model numbers (``nnsd797s`` vs ``nnsd767s`` score 0.89); character
n-grams keep them apart. :class:`LexicalModel` is fitted on the texts of the catalogues being
compared, then gives sparse L2-normalised vectors, top-k search and pair similarities.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from mmmatch._threads import CORES, split_rows
from mmmatch._validation import check_is_fitted

__all__ = ["LexicalModel", "fit_lexical_signals", "lexical_signals", "normalize_text"]

# "-" and "/" inside codes; "." too, except between digits (keep "1.5 l" apart from "15 l")
_SEPARATORS = re.compile(
    r"(?<=[a-z0-9])[-/](?=[a-z0-9])|(?<=[a-z])\.(?=[a-z0-9])|(?<=[0-9])\.(?=[a-z])"
)
_PUNCTUATION = re.compile(r"[^a-z0-9 ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, join codes split by ``-``, ``/`` or ``.`` (not decimals), drop punctuation.

    ``"Sony PS-LX350H (black)"`` -> ``"sony pslx350h black"``: model numbers written with and
    without separators then share their n-grams.
    """
    text = _SEPARATORS.sub("", str(text).lower())
    text = _PUNCTUATION.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


class LexicalModel:
    """TF-IDF character n-gram similarity (scikit-learn's ``TfidfVectorizer``).

    Args:
        analyzer: ``"char_wb"`` (character n-grams inside word boundaries), ``"char"`` or
            ``"word"``.
        ngram_range: n-gram lengths (characters, or words for ``analyzer="word"``).
        sublinear_tf: use ``1 + log(tf)``.
        min_df: ignore n-grams in fewer documents. The default 2 drops n-grams that occur
            once: they cannot be shared by a pair, and only dilute the vector norms.
        max_features: keep at most this many n-grams (``None``: all).

    Attributes:
        vectorizer_: the fitted ``TfidfVectorizer``.

    Example:
        >>> lex = LexicalModel(min_df=1).fit(["sony nnsd797s", "sony nnsd767s", "oat milk"])
        >>> X = lex.transform(["sony nnsd797s"])
        >>> bool(lex.search(X, lex.transform(["oat milk", "sony nnsd797s"]), k=1)[1][0, 0] == 1)
        True
    """

    def __init__(
        self,
        analyzer: str = "char_wb",
        ngram_range: tuple[int, int] = (3, 5),
        sublinear_tf: bool = True,
        min_df: int = 2,
        max_features: int | None = None,
    ) -> None:
        self.ngram_range = ngram_range
        self.analyzer = analyzer
        self.sublinear_tf = sublinear_tf
        self.min_df = min_df
        self.max_features = max_features

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (saved with artifacts; refitting is deterministic)."""
        return {
            "ngram_range": list(self.ngram_range), "analyzer": self.analyzer,
            "sublinear_tf": self.sublinear_tf, "min_df": self.min_df,
            "max_features": self.max_features,
        }

    def fit(self, texts: Sequence[str]) -> LexicalModel:
        """Learn the vocabulary and IDF weights from ``texts``; returns ``self``."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [str(t) for t in texts]
        extra = {"token_pattern": r"(?u)\b\w+\b"} if self.analyzer == "word" else {}
        self.vectorizer_ = TfidfVectorizer(
            analyzer=self.analyzer, ngram_range=tuple(self.ngram_range),
            sublinear_tf=self.sublinear_tf, min_df=min(self.min_df, max(1, len(texts))),
            max_features=self.max_features, preprocessor=normalize_text, dtype=np.float32,
            **extra,
        )
        try:
            self.vectorizer_.fit(texts)
        except ValueError:  # no n-gram reaches min_df (tiny or empty corpus): keep them all
            self.vectorizer_.set_params(min_df=1)
            try:
                self.vectorizer_.fit(texts)
            except ValueError:  # no n-gram at all (every text empty)
                self.vectorizer_.set_params(vocabulary=["<none>"])
                self.vectorizer_.fit(texts)
        return self

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """(n, vocabulary) float32 CSR, rows L2-normalised (empty text: a zero row)."""
        check_is_fitted(self, "vectorizer_")
        return self.vectorizer_.transform([str(t) for t in texts]).tocsr()

    @staticmethod
    def search(
        queries: sp.csr_matrix, items: sp.csr_matrix, k: int, chunk_size: int | None = None,
        items_t: sp.csr_matrix | None = None, n_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by cosine for each query row.

        Args:
            queries: (m, V) from :meth:`transform`.
            items: (n, V) from :meth:`transform`.
            k: neighbours per query.
            chunk_size: queries multiplied at once (memory: chunk_size x n floats); default
                as many as keep that block near 64M floats (256 MB).
            items_t: ``items.T`` as CSR, when the caller keeps it for repeated searches of
                the same items (a few queries then cost a few ms, not a transposition).
            n_threads: threads sharing each chunk's queries (SciPy's sparse product and
                NumPy's partition release the GIL); default one per CPU core when the
                chunk is large enough (over 2**20 query-item scores) to pay for them.

        Returns:
            ``(scores, positions)``: (m, k) float32 best first and (m, k) int64 item
            positions (``-1`` where fewer than k items exist).
        """
        m, n = queries.shape[0], items.shape[0]
        kk = min(k, n)
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        positions = np.full((m, k), -1, dtype=np.int64)
        if kk == 0:
            return scores, positions
        chunk_size = chunk_size or max(1, 64_000_000 // max(1, n))
        items = items.tocsr()

        def top(start: int, stop: int) -> None:
            q = queries[start:stop]
            if items_t is not None:
                block = (q @ items_t).toarray()
            else:  # items @ q.T converts only the (small) query block, never the items
                block = (items @ q.T.tocsr()).T.toarray()
            best = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
            best_scores = np.take_along_axis(block, best, axis=1)
            order = np.argsort(-best_scores, axis=1, kind="stable")
            positions[start:stop, :kk] = np.take_along_axis(best, order, axis=1)
            scores[start:stop, :kk] = np.take_along_axis(best_scores, order, axis=1)

        for start in range(0, m, chunk_size):
            stop = min(m, start + chunk_size)
            split_rows(top, start, stop,
                       n_threads or (CORES if (stop - start) * n > 2**20 else 1))
        return scores, positions

    @staticmethod
    def pair_similarity(
        left: sp.csr_matrix, right: sp.csr_matrix, li: np.ndarray, ri: np.ndarray
    ) -> np.ndarray:
        """Cosine of row ``li[j]`` of ``left`` with row ``ri[j]`` of ``right``: (p,) float32.

        A pair where either row has no n-gram (an empty text) has no lexical evidence: NaN,
        not 0, so the score leaves the signal out instead of counting it as a mismatch.
        """
        if len(li) == 0:
            return np.empty(0, dtype=np.float32)
        li, ri = np.asarray(li), np.asarray(ri)
        prod = left[li].multiply(right[ri])
        sim = np.asarray(prod.sum(axis=1), dtype=np.float32).ravel()
        sim[(np.diff(left.indptr)[li] == 0) | (np.diff(right.indptr)[ri] == 0)] = np.nan
        return sim


def lexical_signals(word: bool = True, min_df: int = 2) -> dict[str, LexicalModel]:
    """The lexical signals, unfitted: ``lexical`` (character 3-5-grams within word
    boundaries) and, with ``word``, ``word`` (word uni- and bigrams).

    Args:
        word: include the word-level model.
        min_df: 2 when the corpus holds both sides of every pair (matching); 1 when queries
            come from outside it (search), where an n-gram seen once can still be shared.
    """
    models = {"lexical": LexicalModel(min_df=min_df)}
    if word:
        models["word"] = LexicalModel("word", ngram_range=(1, 2), min_df=min_df)
    return models


def fit_lexical_signals(
    corpus: Sequence[str], word: bool = True, min_df: int = 2
) -> dict[str, LexicalModel]:
    """:func:`lexical_signals` fitted on ``corpus`` (every text being compared)."""
    return {name: model.fit(corpus) for name, model in lexical_signals(word, min_df).items()}
