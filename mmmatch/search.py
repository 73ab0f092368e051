"""A saved, searchable catalogue: query with a photo, a title, or both.

:class:`SearchIndex` is one self-describing folder: ``manifest.json`` (encoders with their
ids and preprocessing, weights, layout, lexical settings, package versions), ``vectors/``
(the FAISS :class:`~mmmatch.index.EmbeddingIndex` of fused vectors) and ``items.parquet``
(the catalogue rows returned with results). Loading checks that the encoders available now
are the ones that built it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmmatch._io import atomic_dir
from mmmatch.cache import EmbeddingCache
from mmmatch.catalogue import ColumnMap, load_catalogue
from mmmatch.compare import (
    EVIDENCE_COLUMNS,
    SIGNALS,
    FusedLayout,
    ScoreWeights,
    compare_pairs,
    weighted_score,
)
from mmmatch.encode import encode_images, encode_texts
from mmmatch.exceptions import ConfigMismatchError, MmmatchError
from mmmatch.fusion import fuse
from mmmatch.images import ImageLimits
from mmmatch.index import EmbeddingIndex
from mmmatch.lexical import LexicalModel, fit_lexical_signals, lexical_signals

__all__ = ["SearchIndex"]

FORMAT_VERSION = 1
# queries come from outside the indexed texts: keep n-grams seen once (model numbers)
_SEARCH_LEXICAL = {"word": True, "min_df": 1}


def _storable(df: pd.DataFrame) -> pd.DataFrame:
    """Columns Parquet can store: bytes and mixed objects become strings."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = [
                None if v is None or (isinstance(v, float) and np.isnan(v))
                else f"<{len(v)} bytes>" if isinstance(v, bytes | bytearray)
                else str(v)
                for v in out[col]
            ]
    return out


class SearchIndex:
    """A catalogue indexed for photo / title search. Build with :meth:`build` or :meth:`load`.

    Attributes:
        matcher: the :class:`~mmmatch.pipeline.Matcher` whose encoders and weights it uses.
        index: the FAISS index of fused vectors.
        items: one row per indexed item (``id``, ``title`` and the catalogue's columns).
        layout: where image and text sit in the fused vectors.
    """

    def __init__(
        self, matcher: Any, index: EmbeddingIndex, items: pd.DataFrame, layout: FusedLayout
    ) -> None:
        self.matcher = matcher
        self.index = index
        self.items = items.reset_index(drop=True)
        self._ids = self.items["_id"].astype(str).to_numpy()  # item position -> id
        self._positions = pd.Index(self._ids)  # id -> item position
        self.layout = layout
        self._lexical: dict[str, tuple[LexicalModel, Any]] | None = None
        self.problems = pd.DataFrame()

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def build(
        cls, catalogue: Any, matcher: Any = None, columns: ColumnMap | dict | None = None
    ) -> SearchIndex:
        """Embed and index a catalogue.

        Args:
            catalogue: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
            matcher: a :class:`~mmmatch.pipeline.Matcher` (default settings if ``None``).
            columns: column mapping of the catalogue.

        Returns:
            The index; rows that could not be used are in its ``problems`` table.
        """
        from mmmatch.pipeline import Matcher

        matcher = matcher or Matcher()
        cat = load_catalogue(catalogue, columns)
        has_images = any(im is not None for im in cat.images)
        enc = matcher.encode(cat, use_images=has_images and bool(matcher.image_encoder),
                             use_text=bool(matcher.text_encoder))
        layout = FusedLayout.of(enc)
        fused = matcher._fuse(enc, matcher.fusion_weights_for(matcher.search_score_weights))
        image_enc, text_enc = matcher.encoders(layout.image_dim > 0, layout.text_dim > 0)
        metadata = {
            "image_encoder": image_enc.encoder_id if image_enc else None,
            "text_encoder": text_enc.encoder_id if text_enc else None,
        }
        index = EmbeddingIndex(layout.dim, "cosine", metadata=metadata)
        index.add(fused, enc.ids)
        items = enc.catalogue.data.copy()
        items.insert(0, "_id", enc.ids)
        items.insert(1, "_title", enc.catalogue.titles)
        items.insert(2, "_text", enc.catalogue.texts)
        out = cls(matcher, index, items, layout)
        out.problems = cat.problems
        return out

    # -- persistence ------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The self-description saved as ``manifest.json``."""
        m = self.matcher
        image_enc, text_enc = m.encoders(self.layout.image_dim > 0, self.layout.text_dim > 0)
        return {
            "format_version": FORMAT_VERSION,
            "kind": "mmmatch.SearchIndex",
            "image_encoder": None if image_enc is None else {
                "config": image_enc.config(), "encoder_id": image_enc.encoder_id,
                "dim": image_enc.dim, "preprocess": image_enc.preprocess.to_dict(),
            },
            "text_encoder": None if text_enc is None else {
                "config": text_enc.config(), "encoder_id": text_enc.encoder_id,
                "dim": text_enc.dim,
            },
            "layout": {"image_dim": self.layout.image_dim, "text_dim": self.layout.text_dim,
                       "learned_dim": self.layout.learned_dim},
            "model": "model" if m.trained is not None else None,
            "weights": m.score_weights.to_dict(),
            "search_weights": m.search_score_weights.to_dict(),
            "title_search_weights": m.title_search_score_weights.to_dict(),
            "lexical": m.lexical,
            "lexical_params": {
                name: model.get_params()
                for name, model in lexical_signals(**_SEARCH_LEXICAL).items()
            },
            "threshold": m.decision_threshold,
            "count": len(self),
            "versions": self.index.manifest()["versions"],
        }

    def save(self, path: str | Path) -> Path:
        """Write the folder atomically (readers never see a half-written index)."""
        with atomic_dir(path) as tmp:
            (tmp / "manifest.json").write_text(json.dumps(self.manifest(), indent=2))
            (tmp / "vectors").mkdir()
            self.index.save_into(tmp / "vectors")
            _storable(self.items).to_parquet(tmp / "items.parquet", index=False)
            model = self.matcher.trained
            if model is not None:  # the index travels with the model that embedded it
                model.save(tmp / "model")
        return Path(path)

    @classmethod
    def load(
        cls, path: str | Path, device: str | None = None, **matcher_kwargs: Any
    ) -> SearchIndex:
        """Load a saved index and the encoders it was built with.

        Raises:
            FileNotFoundError: no index at ``path``.
            ConfigMismatchError: the encoders available now produce different embeddings
                (other weights or version) than the ones that built the index.
        """
        from mmmatch.encoders import get_encoder
        from mmmatch.pipeline import Matcher

        path = Path(path)
        if not (path / "manifest.json").exists():
            raise FileNotFoundError(f"no mmmatch search index at {path} (missing manifest.json)")
        m = json.loads((path / "manifest.json").read_text())
        if m.get("kind") != "mmmatch.SearchIndex":
            raise ConfigMismatchError(f"{path} is not an mmmatch search index")
        if m.get("format_version", 0) > FORMAT_VERSION:
            raise ConfigMismatchError(f"{path}: written by a newer mmmatch; upgrade to read it")
        for role in ("image_encoder", "text_encoder"):
            saved = m[role]
            if saved is None or m.get("model"):  # a model checks its own encoders on load
                continue
            extra = {k: v for k, v in saved["config"].items() if k != "name"}
            encoder = get_encoder(saved["config"]["name"], role.split("_")[0], device, **extra)
            if encoder.encoder_id != saved["encoder_id"] or encoder.dim != saved["dim"]:
                raise ConfigMismatchError(
                    f"{path}: built with {role} {saved['encoder_id']!r} ({saved['dim']}-d) but "
                    f"{encoder.encoder_id!r} ({encoder.dim}-d) is installed; rebuild the index"
                )
        layout = FusedLayout(**m["layout"])
        model = None
        if m.get("model"):
            from mmmatch.model import MatchModel

            model = MatchModel.load(path / m["model"], device)
        index = EmbeddingIndex.load(path / "vectors", dim=layout.dim, metric="cosine")
        matcher = Matcher(
            image_encoder=(m["image_encoder"] or {}).get("config", {}).get("name"),
            text_encoder=(m["text_encoder"] or {}).get("config", {}).get("name"),
            weights=ScoreWeights(**m["weights"]),
            search_weights=ScoreWeights(**m["search_weights"]),
            title_search_weights=ScoreWeights(**m["title_search_weights"]),
            lexical=m["lexical"],
            threshold=m["threshold"], device=device, model=model, **matcher_kwargs,
        )
        items = pd.read_parquet(path / "items.parquet")
        if len(items) != len(index):
            raise ConfigMismatchError(
                f"{path}: items.parquet has {len(items)} rows but the index {len(index)}"
            )
        return cls(matcher, index, items, layout)

    # -- searching --------------------------------------------------------------------------
    def _lexical_models(self) -> dict[str, tuple[LexicalModel, Any]]:
        """Lexical models refitted on the items' texts (deterministic) and the items' vectors."""
        if self._lexical is None:
            texts = self.items["_text"].tolist()
            models = fit_lexical_signals(texts, **_SEARCH_LEXICAL)
            self._lexical = {name: (m, m.transform(texts)) for name, m in models.items()}
        return self._lexical

    def search_batch(
        self,
        images: Sequence[Any] | None = None,
        titles: Sequence[str | None] | None = None,
        k: int = 10,
        base_dir: str | Path | None = None,
        cache: EmbeddingCache | None = None,
    ) -> pd.DataFrame:
        """Search many queries at once (encoders and FAISS run batched).

        Args:
            images: per query an image (path, URL, bytes) or ``None``.
            titles: per query a title or ``None``. At least one of the two per query.
            k: results per query.
            base_dir: folder relative image paths are resolved against.
            cache: embedding cache for the query photos and titles (useful for repeated
                offline evaluation; a live service leaves it ``None``).

        Returns:
            DataFrame ``query, rank, id, title, score, image_sim, text_sim, lexical_sim,
            word_sim`` and the
            item's catalogue columns, ``k`` rows per query (fewer for a small index).

        Raises:
            MmmatchError: a query has neither image nor title, or its image is unreadable.
        """
        n = len(images if images is not None else titles or [])
        images = list(images) if images is not None else [None] * n
        titles = [t if t and str(t).strip() else None for t in (titles or [None] * n)]
        if len(images) != len(titles):
            raise ValueError(f"got {len(images)} images but {len(titles)} titles")
        for q, (im, ti) in enumerate(zip(images, titles, strict=True)):
            if im is None and ti is None:
                raise MmmatchError(f"query {q} has neither an image nor a title")
        if any(im is not None for im in images) and not self.layout.image_dim:
            raise MmmatchError("this index was built without images; search by title")
        image_enc, text_enc = self.matcher.encoders(
            self.layout.image_dim > 0, self.layout.text_dim > 0
        )
        image = text = None
        image_ok = np.zeros(n, dtype=bool)
        text_ok = np.zeros(n, dtype=bool)
        if image_enc is not None:
            image, image_ok, errors = encode_images(
                images, image_enc, base_dir, cache, self.matcher.image_limits or ImageLimits(),
                show_progress=self.matcher.show_progress,
            )
            if errors:
                q = min(errors)
                raise MmmatchError(f"query {q}: image {errors[q]}")
        if text_enc is not None:
            text_ok = np.array([t is not None for t in titles], dtype=bool)
            text = encode_texts([t or "" for t in titles], text_enc, cache)
            text[~text_ok] = 0.0
        weights = self.matcher.search_score_weights
        learned = None
        model = self.matcher.trained
        if model is not None:
            learned = model.embed(image, image_ok, text, text_ok)
        queries = fuse(image, image_ok, text, text_ok, self.matcher.fusion_weights_for(weights),
                       learned=learned)
        k = min(k, len(self)) or 1
        _, ids = self.index.search(queries, k)
        qi = np.repeat(np.arange(n), ids.shape[1])
        ii = self._positions.get_indexer(ids.ravel())
        keep = ii >= 0
        qi, ii = qi[keep], ii[keep]
        sparse_sims: dict[str, np.ndarray] = {}
        if self.matcher.lexical and self.layout.text_dim > 0 and text_ok.any():
            lexical = self._lexical_models()
            queries_lex = {
                name: model.transform([t or "" for t in titles])
                for name, (model, _) in lexical.items()
            }
            _, lpos = LexicalModel.search(queries_lex["lexical"], lexical["lexical"][1], k)
            lq = np.repeat(np.arange(n), lpos.shape[1])
            lp = lpos.ravel()
            ok = (lp >= 0) & text_ok[lq]
            pairs = np.unique(np.stack([np.r_[qi, lq[ok]], np.r_[ii, lp[ok]]], 1), axis=0)
            qi, ii = pairs[:, 0], pairs[:, 1]
            for name, (_, items_lex) in lexical.items():
                sparse_sims[name] = LexicalModel.pair_similarity(
                    queries_lex[name], items_lex, qi, ii
                )
        item_vecs = self.index.reconstruct(self._ids[ii])
        evidence = compare_pairs(
            queries, item_vecs, qi, np.arange(len(ii)), self.layout, weights, sparse_sims
        )
        title_only = ~image_ok[qi]
        if title_only.any() and self.layout.image_dim:  # re-weight the same evidence
            rows = np.flatnonzero(title_only)
            evidence.loc[rows, "score"] = weighted_score(
                {name: evidence[f"{name}_sim"].to_numpy()[rows] for name in SIGNALS},
                self.matcher.title_search_score_weights,
            )
        out = pd.DataFrame({"query": qi, "_pos": ii}).join(evidence)
        out = out.sort_values(["query", "score"], ascending=[True, False], kind="stable")
        out["rank"] = (out.groupby("query").cumcount() + 1).astype(np.int32)
        out = out[out["rank"] <= k]
        meta = self.items.iloc[out["_pos"].to_numpy()].reset_index(drop=True)
        meta = meta.rename(columns={"_id": "id", "_title": "title"}).drop(columns="_text")
        meta = meta.loc[:, ~meta.columns.duplicated()]
        result = out.drop(columns="_pos").reset_index(drop=True)
        cols = ["query", "rank", "id", "title", "score", *EVIDENCE_COLUMNS]
        result = pd.concat([result, meta], axis=1)
        rest = [c for c in result.columns if c not in cols]
        return result[cols + rest]

    def search(
        self,
        image: Any = None,
        title: str | None = None,
        k: int = 10,
        base_dir: str | Path | None = None,
    ) -> pd.DataFrame:
        """The top-``k`` items for one photo, one title, or both.

        Args:
            image: path, URL or bytes of a photo.
            title: typed title.
            k: results.
            base_dir: folder a relative image path is resolved against.

        Returns:
            See :meth:`search_batch` (without the ``query`` column).
        """
        out = self.search_batch([image], [title], k, base_dir)
        return out.drop(columns="query")


