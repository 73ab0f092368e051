"""A saved, searchable catalogue: query with a photo, a title, or both.

:class:`SearchIndex` is one self-describing folder: ``manifest.json`` (encoders with their
ids and preprocessing, weights, layout, lexical settings, package versions), ``vectors/``
(the FAISS :class:`~mmmatch.index.EmbeddingIndex` of fused vectors) and ``items.parquet``
(the catalogue rows returned with results). Loading checks that the encoders available now
are the ones that built it.

An index changes in place with :meth:`SearchIndex.add` and :meth:`SearchIndex.remove`.
Opened with :meth:`SearchIndex.open`, every change is durable before the call returns:

* ``journal.jsonl`` in the folder is a write-ahead log. Each change is one JSON line
  (``seq``, ``op``, the ids, and for an ``add`` the item rows and their fused vectors as
  base64 little-endian float32) ending in a CRC-32 of the line, appended and fsync'd
  before the change is applied in memory.
* :meth:`SearchIndex.load` replays the journal on top of the snapshot (records with a
  ``seq`` above the manifest's ``journal_seq``). A torn last line (a crash in the middle
  of an append, never acknowledged) fails its CRC and is ignored; :meth:`SearchIndex.open`
  cuts it off before appending. A bad record *followed* by good ones is corruption and
  stops the load.
* :meth:`SearchIndex.compact` (every ``compact_every`` changes, and on
  :meth:`SearchIndex.close`) rewrites the snapshot with :func:`~mmmatch._io.atomic_dir`;
  the new folder has no journal, so the snapshot and the emptied journal replace the old
  pair in one rename.

The lexical (TF-IDF) part keeps its fitted vocabulary when items are added: only the new
texts are transformed. It is refitted on every text once the items added since the last
fit reach a quarter of the texts it was fitted on (the refit is journaled, so a replay
reproduces it); a vocabulary that is no longer a fresh fit is saved in ``lexical/``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mmmatch._io import atomic_dir
from mmmatch._journal import (
    JOURNAL_FILE,
    Journal,
    JournalScan,
    decode_vectors,
    encode_vectors,
    fsync_dir,
    lock_folder,
    recover_interrupted_save,
    scan_journal,
)
from mmmatch.cache import EmbeddingCache
from mmmatch.catalogue import PROBLEM_COLUMNS, ColumnMap, load_catalogue
from mmmatch.compare import (
    EVIDENCE_COLUMNS,
    SIGNALS,
    FusedLayout,
    ScoreWeights,
    compare_pairs,
    weighted_score,
)
from mmmatch.encode import OnBadImage, encode_catalogue, encode_images, encode_texts
from mmmatch.exceptions import (
    CatalogueError,
    ConfigMismatchError,
    DuplicateIdError,
    ItemNotFoundError,
    MmmatchError,
)
from mmmatch.fusion import fuse
from mmmatch.images import ImageLimits
from mmmatch.index import EmbeddingIndex
from mmmatch.lexical import LexicalModel, fit_lexical_signals, lexical_signals

__all__ = ["QUERY_PROBLEM_COLUMNS", "PreparedItems", "SearchIndex"]

FORMAT_VERSION = 1
# queries come from outside the indexed texts: keep n-grams seen once (model numbers)
_SEARCH_LEXICAL = {"word": True, "min_df": 1}
LEXICAL_REFIT_RATIO = 0.25
"""The lexical vocabulary is refitted once the texts added since it was fitted reach this
fraction of the texts it was fitted on (at least one)."""
QUERY_PROBLEM_COLUMNS = ["query", "field", "problem", "detail"]
"""Columns of ``result.attrs["problems"]`` of :meth:`SearchIndex.search_batch`."""
_INTERNAL_COLUMNS = ("_id", "_title", "_text")

logger = logging.getLogger(__name__)


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


def _json_value(value: Any) -> Any:
    """One table value as JSON: ``None`` for missing / NaN / infinite, Python scalars, ISO
    dates, ``"<n bytes>"`` for bytes, ``str`` for anything else."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts, with the values :func:`_storable` would save (object
    columns become strings), so a journaled row reads back as the snapshot stores it."""
    columns: dict[str, list[Any]] = {}
    for col in df.columns:
        values = [_json_value(v) for v in df[col].tolist()]
        if df[col].dtype == object:
            values = [v if v is None or isinstance(v, str) else str(v) for v in values]
        columns[str(col)] = values
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _concat_items(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Items with new rows appended; the new rows' values in object columns become strings
    (as :func:`_storable` saves them), so nothing changes type at the next snapshot."""
    if len(old) == 0:
        cols = list(old.columns) + [c for c in new.columns if c not in old.columns]
        out = new.reindex(columns=cols)
    else:
        with warnings.catch_warnings():  # all-NA columns on one side: the dtype rule changes
            warnings.simplefilter("ignore", FutureWarning)
            out = pd.concat([old, new], ignore_index=True, sort=False)
    start = len(out) - len(new)
    for col in out.columns:
        if out[col].dtype == object:
            values = out[col].to_numpy()[start:]
            out.iloc[start:, out.columns.get_loc(col)] = [
                None if v is None or (isinstance(v, float) and np.isnan(v))
                else v if isinstance(v, str) else str(v) for v in values]
    return out


def _transform(model: LexicalModel, texts: list[str]) -> sp.csr_matrix:
    if not texts:
        return sp.csr_matrix((0, len(model.vectorizer_.vocabulary_)), dtype=np.float32)
    return model.transform(texts)


def _save_lexical(models: dict[str, LexicalModel], folder: Path) -> None:
    folder.mkdir()
    for name, model in models.items():
        vec = model.vectorizer_
        terms = vec.get_feature_names_out().tolist()
        (folder / f"{name}.json").write_text(json.dumps({"params": model.get_params(),
                                                         "terms": terms}))
        np.save(folder / f"{name}.idf.npy", np.asarray(vec.idf_))


def _load_lexical(folder: Path) -> dict[str, LexicalModel]:
    models = {}
    for spec in sorted(folder.glob("*.json")):
        name = spec.name[: -len(".json")]
        state = json.loads(spec.read_text())
        params = {**state["params"], "ngram_range": tuple(state["params"]["ngram_range"])}
        model = LexicalModel(**params).fit([""])  # builds the vectorizer with our settings
        model.vectorizer_.set_params(vocabulary=state["terms"])
        model.vectorizer_.fit([""])
        model.vectorizer_.idf_ = np.load(folder / f"{name}.idf.npy")
        models[name] = model
    return models


@dataclass
class PreparedItems:
    """Catalogue rows embedded by :meth:`SearchIndex.prepare`, ready for
    :meth:`SearchIndex.add`.

    Attributes:
        ids: the n item ids.
        vectors: (n, dim) float32 fused vectors.
        rows: n JSON-safe item rows (``_id``, ``_title``, ``_text`` and the catalogue's
            columns).
        problems: rows that could not be used (:data:`~mmmatch.catalogue.PROBLEM_COLUMNS`).
    """

    ids: list[str]
    vectors: np.ndarray
    rows: list[dict[str, Any]]
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBLEM_COLUMNS))

    def __len__(self) -> int:
        return len(self.ids)


def _search_rows(matcher: Any, encoded: Any) -> tuple[np.ndarray, pd.DataFrame]:
    """What an index keeps of encoded rows: their search vectors, (n, dim) float32, and the
    items table (``_id``, ``_title``, ``_text`` and the catalogue's columns)."""
    fused = matcher._fuse(encoded, matcher.fusion_weights_for(matcher.search_score_weights))
    items = encoded.catalogue.data.copy()
    items.insert(0, "_id", encoded.ids)
    items.insert(1, "_title", encoded.catalogue.titles)
    items.insert(2, "_text", encoded.catalogue.texts)
    return fused, items


class SearchIndex:
    """A catalogue indexed for photo / title search. Build with :meth:`build`, :meth:`empty`,
    :meth:`load` or :meth:`open`.

    Searching, adding and removing are thread-safe (one lock per index; the query
    encoders run outside it).

    Attributes:
        matcher: the :class:`~mmmatch.pipeline.Matcher` whose encoders and weights it uses.
        index: the FAISS index of fused vectors.
        items: one row per indexed item (``_id``, ``_title``, ``_text`` and the
            catalogue's columns).
        layout: where image and text sit in the fused vectors.
        problems: rows that could not be used when building or adding.

    Example:
        >>> index = SearchIndex.build(df, Matcher())  # doctest: +SKIP
        >>> index.add(new_rows_df)  # doctest: +SKIP
        >>> index.remove(["sku-12"])  # doctest: +SKIP
        >>> with SearchIndex.open("my-index") as live:  # doctest: +SKIP
        ...     live.add(more_rows)  # journaled and fsync'd before it returns
    """

    def __init__(
        self, matcher: Any, index: EmbeddingIndex, items: pd.DataFrame, layout: FusedLayout
    ) -> None:
        self.matcher = matcher
        self.index = index
        self.items = items.reset_index(drop=True)
        self.layout = layout
        self._reindex()
        self._lexical: dict[str, tuple[LexicalModel, Any]] | None = None
        self._lexical_restored: dict[str, LexicalModel] | None = None
        self._lexical_fitted_on = 0  # texts the vocabulary was fitted on
        self._lexical_added = 0  # texts added since
        self._lexical_fresh = True  # the vocabulary is (or will be) a fit on the items now
        self.problems = pd.DataFrame()
        self._lock = threading.RLock()
        self._seq = 0  # changes applied since the index was built
        self._journal: Journal | None = None
        self.compact_every = 1000
        self.compact_bytes = 64 * 2**20

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._positions

    def _reindex(self) -> None:
        self._ids = self.items["_id"].astype(str).to_numpy(dtype=object)  # position -> id
        self._positions = pd.Index(self._ids)  # id -> item position
        self._public_items: pd.DataFrame | None = None  # items as results show them

    @staticmethod
    def _metadata(image_enc: Any, text_enc: Any) -> dict[str, Any]:
        return {
            "image_encoder": image_enc.encoder_id if image_enc else None,
            "text_encoder": text_enc.encoder_id if text_enc else None,
        }

    @classmethod
    def build(
        cls, catalogue: Any, matcher: Any = None, columns: ColumnMap | dict | None = None,
        factory: str = "auto-search", nprobe: int | None = None,
    ) -> SearchIndex:
        """Embed and index a catalogue.

        Args:
            catalogue: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
            matcher: a :class:`~mmmatch.pipeline.Matcher` (default settings if ``None``).
            columns: column mapping of the catalogue.
            factory: the FAISS index: ``"auto-search"`` (exact up to 2**25 floats, then
                IVF; see :mod:`mmmatch.index`), ``"Flat"`` for exact search at any size,
                or any FAISS factory string.
            nprobe: inverted lists searched per query of an IVF index (default: the auto
                rule); more is slower and closer to exact.

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
        fused, items = _search_rows(matcher, enc)
        image_enc, text_enc = matcher.encoders(layout.image_dim > 0, layout.text_dim > 0)
        index = EmbeddingIndex(layout.dim, "cosine", factory, nprobe,
                               metadata=cls._metadata(image_enc, text_enc))
        index.add(fused, enc.ids)
        out = cls(matcher, index, items, layout)
        out.problems = cat.problems
        return out

    @classmethod
    def empty(cls, matcher: Any = None, images: bool = True, text: bool = True) -> SearchIndex:
        """An index without items, to fill with :meth:`add`.

        Args:
            matcher: a :class:`~mmmatch.pipeline.Matcher` (default settings if ``None``);
                with a trained model (``Matcher(model=...)``) its encoders and learned
                embedding are used.
            images: index photos (when the matcher has an image encoder).
            text: index titles and texts (when the matcher has a text encoder).

        Raises:
            ValueError: neither an image nor a text encoder is left.
        """
        from mmmatch.pipeline import Matcher

        matcher = matcher or Matcher()
        image_enc, text_enc = matcher.encoders(images, text)
        if image_enc is None and text_enc is None:
            raise ValueError("an index needs an image or a text encoder")
        model = matcher.trained
        layout = FusedLayout(image_enc.dim if image_enc else 0, text_enc.dim if text_enc else 0,
                             model.dim if model is not None else 0)
        index = EmbeddingIndex(layout.dim, "cosine", metadata=cls._metadata(image_enc, text_enc))
        items = pd.DataFrame({c: pd.Series(dtype=object) for c in _INTERNAL_COLUMNS})
        return cls(matcher, index, items, layout)

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
            "journal_seq": self._seq,
            "lexical_state": None if self._lexical_fresh else {
                "fitted_on": self._lexical_fitted_on, "added_since_fit": self._lexical_added,
            },
            "versions": self.index.manifest()["versions"],
        }

    def save(self, path: str | Path) -> Path:
        """Write the folder atomically (readers never see a half-written index).

        Saving an index opened with :meth:`open` to its own folder is :meth:`compact`.
        """
        path = Path(path)
        with self._lock:
            journal = self._journal
            if journal is not None and path.resolve() == journal.folder.resolve():
                self.compact()
            else:
                self._write(path)
        return path

    def _write(self, path: Path) -> None:
        lexical = (self._lexical_restored if self._lexical is None
                   else {name: model for name, (model, _) in self._lexical.items()})
        with atomic_dir(path) as tmp:
            (tmp / "manifest.json").write_text(json.dumps(self.manifest(), indent=2))
            (tmp / "vectors").mkdir()
            self.index.save_into(tmp / "vectors")
            _storable(self.items).to_parquet(tmp / "items.parquet", index=False)
            if not self._lexical_fresh and lexical is not None:
                _save_lexical(lexical, tmp / "lexical")
            model = self.matcher.trained
            if model is not None:  # the index travels with the model that embedded it
                model.save(tmp / "model")

    @classmethod
    def load(
        cls, path: str | Path, device: str | None = None, **matcher_kwargs: Any
    ) -> SearchIndex:
        """Load a saved index and the encoders it was built with, and replay its journal.

        Args:
            path: the index folder.
            device: torch device of the encoders.
            **matcher_kwargs: more :class:`~mmmatch.pipeline.Matcher` settings
                (``cache_dir``...).

        Raises:
            FileNotFoundError: no index at ``path``.
            ConfigMismatchError: the encoders available now produce different embeddings
                (other weights or version) than the ones that built the index, or the
                journal is damaged.
        """
        return cls._load(Path(path), device, **matcher_kwargs)[0]

    @classmethod
    def _load(
        cls, path: Path, device: str | None = None, **matcher_kwargs: Any
    ) -> tuple[SearchIndex, JournalScan]:
        from mmmatch.encoders import get_encoder
        from mmmatch.pipeline import Matcher

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
        out = cls(matcher, index, items, layout)
        out._seq = int(m.get("journal_seq", 0))
        state = m.get("lexical_state")
        if state and (path / "lexical").is_dir():
            out._lexical_restored = _load_lexical(path / "lexical")
            out._lexical_fitted_on = int(state["fitted_on"])
            out._lexical_added = int(state["added_since_fit"])
            out._lexical_fresh = False
        scan = scan_journal(path / JOURNAL_FILE)
        if scan.torn:
            logger.warning("%s: ignoring a torn last record (%d bytes; a crash in the middle "
                           "of a write that was never acknowledged)", path / JOURNAL_FILE,
                           scan.torn)
        out._replay(scan.records, path / JOURNAL_FILE)
        return out, scan

    @classmethod
    def open(
        cls,
        path: str | Path,
        compact_every: int = 1000,
        compact_bytes: int = 64 * 2**20,
        device: str | None = None,
        **matcher_kwargs: Any,
    ) -> SearchIndex:
        """Load an index for durable changes: every :meth:`add` / :meth:`remove` is
        appended to the folder's journal and fsync'd before it returns.

        Close it with :meth:`close` (or use it as a context manager), which compacts the
        journal into the snapshot. One process at a time may hold a folder open.

        Args:
            path: the index folder.
            compact_every: compact after this many journaled changes.
            compact_bytes: compact once the journal reaches this size.
            device: torch device of the encoders.
            **matcher_kwargs: more :class:`~mmmatch.pipeline.Matcher` settings.

        Raises:
            FileNotFoundError: no index at ``path``.
            MmmatchError: another process has the folder open.
            ConfigMismatchError: see :meth:`load`.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"no mmmatch search index at {path}")
        lock = lock_folder(path)
        try:
            recover_interrupted_save(path)
            index, scan = cls._load(path, device, **matcher_kwargs)
            if scan.torn:  # new records must not follow the torn one
                with open(path / JOURNAL_FILE, "r+b") as f:
                    f.truncate(scan.end)
                    os.fsync(f.fileno())
            index._journal = Journal(path, len(scan.records), scan.end, lock)
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        index.compact_every = int(compact_every)
        index.compact_bytes = int(compact_bytes)
        return index

    @property
    def path(self) -> Path | None:
        """The folder this index journals to (opened with :meth:`open`), else ``None``."""
        return None if self._journal is None else self._journal.folder

    @property
    def pending_changes(self) -> int:
        """Journaled changes not yet compacted into the snapshot."""
        return 0 if self._journal is None else self._journal.records

    def compact(self) -> None:
        """Rewrite the snapshot with every change and empty the journal, in one atomic swap.

        Raises:
            MmmatchError: the index was not opened with :meth:`open`.
        """
        with self._lock:
            journal = self._journal
            if journal is None:
                raise MmmatchError("compact() needs an index opened with SearchIndex.open")
            journal.detach()
            try:
                self._write(journal.folder)
            except BaseException:
                journal.reopen()  # the old folder and its journal are untouched
                raise
            fsync_dir(journal.folder.parent)
            journal.reset()

    def close(self) -> None:
        """Compact pending changes and release the folder (no-op when not opened)."""
        with self._lock:
            journal = self._journal
            if journal is None:
                return
            try:
                if journal.records:
                    self.compact()
            finally:
                journal.close()
                self._journal = None

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- changing ---------------------------------------------------------------------------
    def _check_new(self, ids: Sequence[str]) -> None:
        ids = [str(i) for i in ids]
        repeated = pd.Series(ids)[pd.Series(ids).duplicated()].unique().tolist()
        existing = [i for i in ids if i in self._positions]
        if existing or repeated:
            bad = list(dict.fromkeys(existing + repeated))
            where = "already in the index" if existing else "repeated"
            raise DuplicateIdError(
                f"{len(bad)} id(s) {where}: {', '.join(map(repr, bad[:5]))}"
                + (" (remove them first)" if existing else ""), bad)

    def prepare(
        self,
        catalogue: Any,
        columns: ColumnMap | dict | None = None,
        on_bad_image: OnBadImage | None = None,
        image_limits: ImageLimits | None = None,
    ) -> PreparedItems:
        """Embed catalogue rows for :meth:`add` without changing the index (no lock held).

        Args:
            catalogue: DataFrame, file path or :class:`~mmmatch.catalogue.Catalogue`.
            columns: column mapping of the catalogue.
            on_bad_image: ``"text_only"``, ``"skip"`` or ``"raise"`` (default: the
                matcher's; see :func:`~mmmatch.encode.encode_catalogue`).
            image_limits: byte / pixel limits (default: the matcher's).

        Returns:
            The embedded rows; rows that could not be used are in its ``problems``.

        Raises:
            DuplicateIdError: an id is already in the index.
            CatalogueError: the catalogue is malformed, uses a reserved column name
                (``_id``, ``_title``, ``_text``), or has a bad image with
                ``on_bad_image="raise"``.
        """
        cat = load_catalogue(catalogue, columns)
        reserved = [c for c in _INTERNAL_COLUMNS if c in cat.data.columns]
        if reserved:
            raise CatalogueError(f"column names {reserved} are reserved; rename them")
        self._check_new(cat.ids)
        image_enc, text_enc = self.matcher.encoders(self.layout.image_dim > 0,
                                                    self.layout.text_dim > 0)
        cache = self.matcher._cache()
        try:
            enc = encode_catalogue(
                cat, image_enc, text_enc, cache, on_bad_image or self.matcher.on_bad_image,
                image_limits or self.matcher.image_limits, self.matcher.show_progress,
            )
        finally:
            if cache is not None:
                cache.close()
        if len(enc) == 0:
            return PreparedItems([], np.empty((0, self.layout.dim), np.float32), [],
                                 cat.problems)
        model = self.matcher.trained
        if model is not None:
            enc.learned = model.embed_encoded(enc)
        if FusedLayout.of(enc) != self.layout:
            raise ConfigMismatchError(
                f"the new rows embed as {FusedLayout.of(enc)} but the index is {self.layout}"
            )
        fused, items = _search_rows(self.matcher, enc)
        return PreparedItems([str(i) for i in enc.ids], fused, _json_rows(items),
                             enc.catalogue.problems)

    def add(
        self,
        catalogue: Any,
        columns: ColumnMap | dict | None = None,
        on_bad_image: OnBadImage | None = None,
    ) -> list[str]:
        """Embed catalogue rows with this index's matcher and add them.

        The items table, the FAISS index and the lexical vectors are updated (the new texts
        are transformed with the fitted vocabulary; see the module docstring for when it is
        refitted). On an index opened with :meth:`open` the change is journaled and
        fsync'd before this returns. Metadata are kept as the snapshot stores them: object
        columns become strings, missing values ``None``.

        Args:
            catalogue: DataFrame, file path, :class:`~mmmatch.catalogue.Catalogue`, or
                :class:`PreparedItems` from :meth:`prepare` (embedded outside the lock).
            columns: column mapping of the catalogue.
            on_bad_image: see :meth:`prepare`.

        Returns:
            The ids added, in order; rows that could not be used are appended to
            ``problems``.

        Raises:
            DuplicateIdError: an id is already in the index (nothing is added).
            CatalogueError: see :meth:`prepare`.
        """
        prepared = (catalogue if isinstance(catalogue, PreparedItems)
                    else self.prepare(catalogue, columns, on_bad_image))
        with self._lock:
            self._check_new(prepared.ids)
            if not prepared.problems.empty:
                self.problems = (prepared.problems if self.problems.empty else
                                 pd.concat([self.problems, prepared.problems], ignore_index=True))
            if not prepared.ids:
                return []
            vectors = np.asarray(prepared.vectors, dtype=np.float32)
            if vectors.shape != (len(prepared.ids), self.layout.dim):
                raise ValueError(f"expected ({len(prepared.ids)}, {self.layout.dim}) vectors, "
                                 f"got {vectors.shape}")
            refit = False
            if self._uses_lexical:
                self._lexical_models()  # the vocabulary in use before the change
                refit = self._lexical_added + len(prepared.ids) >= max(
                    1.0, LEXICAL_REFIT_RATIO * self._lexical_fitted_on)
            self._log({"op": "add", "ids": prepared.ids, "rows": prepared.rows,
                       "shape": list(vectors.shape), "vectors": encode_vectors(vectors),
                       "refit_lexical": refit})
            self._apply_add(prepared.ids, vectors, prepared.rows, refit)
            self._maybe_compact()
        return list(prepared.ids)

    def remove(self, ids: str | Iterable[Any]) -> int:
        """Remove items by id (journaled like :meth:`add` on an opened index).

        Args:
            ids: one id or several.

        Returns:
            How many items were removed.

        Raises:
            ItemNotFoundError: an id is not in the index (nothing is removed).
        """
        ids = [ids] if isinstance(ids, str) else list(ids)
        ids = list(dict.fromkeys(str(i) for i in ids))
        with self._lock:
            missing = [i for i in ids if i not in self._positions]
            if missing:
                raise ItemNotFoundError(
                    f"{len(missing)} id(s) not in the index: {', '.join(map(repr, missing[:5]))}",
                    missing)
            if not ids:
                return 0
            if self._uses_lexical:
                self._lexical_models()
            self._log({"op": "remove", "ids": ids})
            self._apply_remove(ids)
            self._maybe_compact()
        return len(ids)

    def refit_lexical(self) -> None:
        """Refit the lexical vocabulary and IDF weights on the items' texts now."""
        with self._lock:
            if not self._uses_lexical:
                return
            self._log({"op": "refit_lexical"})
            self._refit_lexical()

    def get_items(self, ids: Sequence[Any]) -> pd.DataFrame:
        """Rows of some items: ``id``, ``title`` and the catalogue's columns.

        Raises:
            ItemNotFoundError: an id is not in the index.
        """
        ids = [str(i) for i in ids]
        with self._lock:
            pos = self._positions.get_indexer(ids)
            missing = [i for i, p in zip(ids, pos, strict=True) if p < 0]
            if missing:
                raise ItemNotFoundError(
                    f"{len(missing)} id(s) not in the index: {', '.join(map(repr, missing[:5]))}",
                    missing)
            return self._public_view().iloc[pos].reset_index(drop=True)

    def _public_view(self) -> pd.DataFrame:
        """All items as results and :meth:`get_items` show them (kept until items change)."""
        if self._public_items is None:
            self._public_items = self._public(self.items)
        return self._public_items

    @staticmethod
    def _public(rows: pd.DataFrame) -> pd.DataFrame:
        meta = rows.reset_index(drop=True).rename(columns={"_id": "id", "_title": "title"})
        meta = meta.drop(columns="_text")
        return meta.loc[:, ~meta.columns.duplicated()]

    def _log(self, record: dict[str, Any]) -> None:
        """Number a change and, on an opened index, journal it durably."""
        record = {"seq": self._seq + 1, "op": record.pop("op"), "time": round(time.time(), 3),
                  **record}
        if self._journal is not None:
            self._journal.append(record)
        self._seq += 1

    def _maybe_compact(self) -> None:
        journal = self._journal
        if journal is not None and (journal.records >= self.compact_every
                                    or journal.size >= self.compact_bytes):
            self.compact()

    def _apply_add(self, ids: list[str], vectors: np.ndarray, rows: list[dict[str, Any]],
                   refit: bool) -> None:
        if self._uses_lexical:
            self._lexical_models()
        self.index.add(vectors, ids)
        new = pd.DataFrame.from_records(rows)
        self.items = _concat_items(self.items, new)
        self._reindex()
        if self._lexical is not None:
            texts = new["_text"].astype(str).tolist()
            self._lexical = {
                name: (model, sp.vstack([mat, _transform(model, texts)], format="csr"))
                for name, (model, mat) in self._lexical.items()
            }
            self._lexical_added += len(ids)
            self._lexical_fresh = False
            if refit:
                self._refit_lexical()

    def _apply_remove(self, ids: list[str]) -> None:
        if self._uses_lexical:
            self._lexical_models()
        keep = np.ones(len(self.items), dtype=bool)
        keep[self._positions.get_indexer(ids)] = False
        self.index.remove(ids)
        self.items = self.items[keep].reset_index(drop=True)
        self._reindex()
        if self._lexical is not None:
            rows = np.flatnonzero(keep)
            self._lexical = {name: (model, mat[rows]) for name, (model, mat)
                             in self._lexical.items()}
            self._lexical_fresh = False

    def _refit_lexical(self) -> None:
        self._lexical_restored = None
        self._lexical = None
        self._lexical_models()

    def _replay(self, records: list[dict[str, Any]], source: Path) -> None:
        """Apply journal records newer than the snapshot (consecutive adds at once)."""
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            if not pending:
                return
            ids = [str(i) for r in pending for i in r["ids"]]
            vectors = np.concatenate([decode_vectors(r, self.layout.dim) for r in pending])
            rows = [row for r in pending for row in r["rows"]]
            self._check_new(ids)
            self._apply_add(ids, vectors, rows, bool(pending[-1].get("refit_lexical")))
            pending.clear()

        try:
            for record in records:
                seq = int(record["seq"])
                if seq <= self._seq:
                    continue  # already in the snapshot
                if seq != self._seq + 1:
                    raise ValueError(f"record {seq} follows {self._seq}: records are missing")
                op = record["op"]
                if op == "add":
                    pending.append(record)
                    if record.get("refit_lexical"):
                        flush()
                else:
                    flush()
                    if op == "remove":
                        ids = [str(i) for i in record["ids"]]
                        missing = [i for i in ids if i not in self._positions]
                        if missing:
                            raise ValueError(f"record {seq} removes unknown ids {missing[:5]}")
                        self._apply_remove(ids)
                    elif op == "refit_lexical":
                        if self._uses_lexical:
                            self._refit_lexical()
                    else:
                        raise ValueError(f"record {seq} has an unknown op {op!r} (written by "
                                         "a newer mmmatch?)")
                self._seq = seq
            flush()
        except (KeyError, TypeError, ValueError, MmmatchError) as e:
            raise ConfigMismatchError(f"{source}: cannot replay the journal: {e}") from None

    # -- searching --------------------------------------------------------------------------
    @property
    def _uses_lexical(self) -> bool:
        return bool(self.matcher.lexical) and self.layout.text_dim > 0

    def warm(self) -> None:
        """Load the encoders and fit the lexical models now (a service calls this before
        taking requests, so the first search does not pay for it: seconds at 100,000
        items)."""
        with self._lock:
            self.matcher.encoders(self.layout.image_dim > 0, self.layout.text_dim > 0)
            if self.matcher.lexical and self.layout.text_dim > 0 and len(self):
                self._lexical_models()

    def _lexical_models(self) -> dict[str, tuple[LexicalModel, Any]]:
        """The lexical models (restored, or fitted on the items' texts) and items' vectors."""
        if self._lexical is None:
            texts = self.items["_text"].astype(str).tolist()
            models = self._lexical_restored
            if models is None:
                models = fit_lexical_signals(texts or [""], **_SEARCH_LEXICAL)
                self._lexical_fitted_on, self._lexical_added = len(texts), 0
                self._lexical_fresh = True
            self._lexical = {name: (m, _transform(m, texts)) for name, m in models.items()}
        return self._lexical

    def _empty_result(self) -> pd.DataFrame:
        meta = [c for c in self._public_view().columns if c not in ("id", "title")]
        out = pd.DataFrame({
            "query": pd.Series(dtype=np.int64), "rank": pd.Series(dtype=np.int32),
            "id": pd.Series(dtype=object), "title": pd.Series(dtype=object),
            "score": pd.Series(dtype=np.float32),
            **{c: pd.Series(dtype=np.float32) for c in EVIDENCE_COLUMNS},
        })
        for c in meta:
            out[c] = pd.Series(dtype=object)
        return out

    def search_batch(
        self,
        images: Sequence[Any] | None = None,
        titles: Sequence[str | None] | None = None,
        k: int = 10,
        base_dir: str | Path | None = None,
        cache: EmbeddingCache | None = None,
        on_bad_query: Literal["raise", "skip"] = "raise",
        image_limits: ImageLimits | None = None,
    ) -> pd.DataFrame:
        """Search many queries at once (encoders and FAISS run batched).

        Args:
            images: per query an image (path, URL, bytes) or ``None``.
            titles: per query a title or ``None``. At least one of the two per query.
            k: results per query.
            base_dir: folder relative image paths are resolved against.
            cache: embedding cache for the query photos and titles (useful for repeated
                offline evaluation; a live service leaves it ``None``).
            on_bad_query: ``"raise"`` stops at the first query that cannot be searched;
                ``"skip"`` leaves it out of the results (the others are unaffected) and
                lists it in ``result.attrs["problems"]``.
            image_limits: byte / pixel / timeout limits of the query images (default: the
                matcher's).

        Returns:
            DataFrame ``query, rank, id, title, score, image_sim, text_sim, lexical_sim,
            word_sim, fused_sim`` and the item's catalogue columns, ``k`` rows per query
            (fewer for a small index). ``attrs["problems"]`` holds one record per query
            that was left out (:data:`QUERY_PROBLEM_COLUMNS`: ``query``, ``field``
            (``"image"`` or ``None``), ``problem`` (``empty_query``,
            ``images_not_supported`` or an :class:`~mmmatch.exceptions.ImageError` reason)
            and ``detail``).

        Raises:
            MmmatchError: with ``on_bad_query="raise"``, a query has neither image nor
                title, or its image is unreadable.
            ValueError: ``k < 1``, or images and titles of different lengths.
        """
        if on_bad_query not in ("raise", "skip"):
            raise ValueError(f"on_bad_query must be 'raise' or 'skip', got {on_bad_query!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n = len(images if images is not None else titles or [])
        images = list(images) if images is not None else [None] * n
        titles = [t if t and str(t).strip() else None for t in (titles or [None] * n)]
        if len(images) != len(titles):
            raise ValueError(f"got {len(images)} images but {len(titles)} titles")
        problems: list[dict[str, Any]] = []

        def left_out(q: int, field: str | None, problem: str, detail: str,
                     message: str | None = None) -> None:
            if on_bad_query == "raise":
                raise MmmatchError(message or detail)
            problems.append({"query": q, "field": field, "problem": problem, "detail": detail})

        for q, (im, ti) in enumerate(zip(images, titles, strict=True)):
            if im is None and ti is None:
                left_out(q, None, "empty_query", f"query {q} has neither an image nor a title")
            elif im is not None and not self.layout.image_dim:
                left_out(q, "image", "images_not_supported",
                         "this index was built without images; search by title")
        dropped = {p["query"] for p in problems}
        good = np.array([q for q in range(n) if q not in dropped], dtype=np.int64)
        images = [images[q] for q in good]
        titles = [titles[q] for q in good]
        m = len(good)
        image_enc, text_enc = self.matcher.encoders(
            self.layout.image_dim > 0, self.layout.text_dim > 0
        )
        image = text = None
        image_ok = np.zeros(m, dtype=bool)
        text_ok = np.zeros(m, dtype=bool)
        failed = np.zeros(m, dtype=bool)
        if image_enc is not None:
            image = np.zeros((m, image_enc.dim), dtype=np.float32)
            if any(im is not None for im in images):
                image, image_ok, errors = encode_images(
                    images, image_enc, base_dir, cache,
                    image_limits or self.matcher.image_limits or ImageLimits(),
                    show_progress=self.matcher.show_progress,
                )
                for j, err in sorted(errors.items()):
                    left_out(int(good[j]), "image", err.reason, str(err),
                             f"query {good[j]}: image {err}")
                    failed[j] = True
        if text_enc is not None:
            text_ok = np.array([t is not None for t in titles], dtype=bool)
            text = np.zeros((m, text_enc.dim), dtype=np.float32)
            if text_ok.any():
                text[text_ok] = encode_texts([t for t in titles if t is not None], text_enc,
                                             cache)
        weights = self.matcher.search_score_weights
        model = self.matcher.trained
        queries = None
        if m and not failed.all():
            learned = None if model is None else model.embed(image, image_ok, text, text_ok)
            queries = fuse(image, image_ok, text, text_ok,
                           self.matcher.fusion_weights_for(weights), learned=learned)
        with self._lock:
            if queries is None or len(self) == 0:
                result = self._empty_result()
            else:
                result = self._retrieve(queries, titles, image_ok, text_ok, failed, k)
                result["query"] = good[result["query"].to_numpy()]
        result.attrs["problems"] = sorted(problems, key=lambda p: p["query"])
        return result

    def _retrieve(self, queries: np.ndarray, titles: list[str | None], image_ok: np.ndarray,
                  text_ok: np.ndarray, failed: np.ndarray, k: int) -> pd.DataFrame:
        """Candidates of the fused queries, compared and ranked (under the lock)."""
        n = len(queries)
        weights = self.matcher.search_score_weights
        k = min(k, len(self)) or 1
        _, ids, hit_vecs = self.index.search_with_vectors(queries, k)
        qi = np.repeat(np.arange(n), ids.shape[1])
        ii = self._positions.get_indexer(ids.ravel())
        keep = (ii >= 0) & ~failed[qi]
        qi, ii = qi[keep], ii[keep]
        item_vecs = hit_vecs.reshape(-1, self.layout.dim)[keep]  # the vectors of (qi, ii)
        sparse_sims: dict[str, np.ndarray] = {}
        if self.matcher.lexical and self.layout.text_dim > 0 and text_ok.any():
            lexical = self._lexical_models()
            queries_lex = {
                name: model.transform([t or "" for t in titles])
                for name, (model, _) in lexical.items()
            }
            items_lex = lexical["lexical"][1]
            if getattr(self, "_lexical_t", (None,))[0] is not items_lex:  # kept per matrix
                self._lexical_t = (items_lex, items_lex.T.tocsr())
            _, lpos = LexicalModel.search(queries_lex["lexical"], items_lex, k,
                                          items_t=self._lexical_t[1])
            lq = np.repeat(np.arange(n), lpos.shape[1])
            lp = lpos.ravel()
            ok = (lp >= 0) & text_ok[lq] & ~failed[lq]
            pairs = np.unique(np.stack([np.r_[qi, lq[ok]], np.r_[ii, lp[ok]]], 1), axis=0)
            item_vecs = self._union_vectors(qi, ii, item_vecs, pairs[:, 0], pairs[:, 1])
            qi, ii = pairs[:, 0], pairs[:, 1]
            for name, (_, items_lex) in lexical.items():
                sparse_sims[name] = LexicalModel.pair_similarity(
                    queries_lex[name], items_lex, qi, ii
                )
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
        # per query, best score first (NaN last; ties keep the candidates' order), top k
        order = np.lexsort((-evidence["score"].to_numpy(), qi))
        q_sorted = qi[order]
        first = np.r_[True, q_sorted[1:] != q_sorted[:-1]]
        starts = np.flatnonzero(first)
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)])) + 1
        top = rank <= k
        order, rank = order[top], rank[top].astype(np.int32)
        meta = self._public_view().iloc[ii[order]].reset_index(drop=True)
        cols = ["query", "rank", "id", "title", "score", *EVIDENCE_COLUMNS]
        result = pd.DataFrame({"query": qi[order], "rank": rank, "id": meta["id"],
                               "title": meta["title"],
                               **{c: evidence[c].to_numpy()[order]
                                  for c in ("score", *EVIDENCE_COLUMNS)}})
        # an item column named like a result column (a "score" rating, say) keeps its values
        # as "<name>_item" instead of shadowing the result's
        for c in meta.columns:
            if c not in ("id", "title"):
                result[f"{c}_item" if c in cols else c] = meta[c]
        return result

    def _union_vectors(self, qi: np.ndarray, ii: np.ndarray, vecs: np.ndarray,
                       uq: np.ndarray, ui: np.ndarray) -> np.ndarray:
        """Item vectors of the pairs ``(uq, ui)``: taken from ``vecs`` (those of the pairs
        ``(qi, ii)`` the vector search found) where there, read from the index otherwise."""
        stride = max(len(self), 1)
        found_keys = qi.astype(np.int64) * stride + ii
        keys = uq.astype(np.int64) * stride + ui
        order = np.argsort(found_keys, kind="stable")
        at = np.minimum(np.searchsorted(found_keys[order], keys), max(len(order) - 1, 0))
        have = (found_keys[order][at] == keys) if len(order) else np.zeros(len(keys), bool)
        out = np.empty((len(keys), self.layout.dim), np.float32)
        out[have] = vecs[order[at[have]]]
        if (~have).any():
            out[~have] = self.index.reconstruct(self._ids[ui[~have]])
        return out

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
