"""Loading and validating a product catalogue.

A catalogue is a table with one row per product offer: an id, a title, optional other text
fields (description, brand, ...), an optional image (local path, http(s) URL or raw bytes), an
optional source (retailer) and an optional label (a known product id).

:func:`load_catalogue` reads CSV / Parquet / a DataFrame, maps your column names onto these
roles and checks the table, naming the offending rows in every error. Images are not decoded
here; they are read once, when encoded, and any problem is added to the catalogue's
``problems`` table (see :mod:`mmmatch.encode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mmmatch.exceptions import CatalogueError

__all__ = [
    "PROBLEM_COLUMNS",
    "Catalogue",
    "ColumnMap",
    "load_catalogue",
    "read_table",
]

PROBLEM_COLUMNS = ["row", "id", "field", "problem", "detail", "action"]
"""Columns of a catalogue's ``problems`` table."""

_AUTO_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id", "item_id", "product_id", "sku"),
    "title": ("title", "name", "product_name"),
    "image": ("image", "image_path", "image_url", "img", "photo"),
    "price": ("price",),
    "brand": ("brand", "manufacturer"),
}


@dataclass(frozen=True)
class ColumnMap:
    """Which of your columns plays which role.

    ``None`` for ``id`` / ``title`` / ``image`` means "auto-detect" among common names
    (``id``: id, item_id, product_id, sku; ``title``: title, name, product_name;
    ``image``: image, image_path, image_url, img, photo). Without an id column the
    DataFrame index is used as the id.

    Attributes:
        id: column with a unique id per row.
        title: the product title.
        text: other text fields appended to the title for matching (e.g. brand, description).
        image: image reference (path relative to the catalogue's folder, URL or bytes).
        source: retailer / catalogue of origin, for cross-source matching.
        label: known product id (optional; used for training and evaluation).
        price: price (the reranker compares the two sides'; auto-detected: price).
        brand: brand (the reranker checks the two agree; auto-detected: brand,
            manufacturer).
    """

    id: str | None = None
    title: str | None = None
    text: tuple[str, ...] = ()
    image: str | None = None
    source: str | None = None
    label: str | None = None
    price: str | None = None
    brand: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ColumnMap:
        """Build from a plain dict (unknown keys are an error)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise CatalogueError(
                f"unknown column roles {sorted(unknown)}; expected some of {sorted(known)}"
            )
        if isinstance(values.get("text"), str):
            values["text"] = (values["text"],)
        if "text" in values:
            values["text"] = tuple(values["text"])
        return cls(**values)


@dataclass
class Catalogue:
    """A validated catalogue.

    Attributes:
        data: the original rows (index reset to 0..n-1), all columns kept.
        ids: (n,) object array of str ids, unique.
        titles: (n,) object array of str ("" when missing).
        texts: (n,) object array: title and the other text fields joined with " | ".
        images: (n,) object array of image references, ``None`` when absent.
        sources: (n,) object array of str, or ``None`` without a source column.
        labels: (n,) object array, or ``None`` without a label column.
        base_dir: folder relative image paths are resolved against.
        columns: the resolved column mapping.
        problems: one row per problem found (columns :data:`PROBLEM_COLUMNS`).
        name: a short name for messages (file name or "catalogue").
        rows: (n,) int64 row numbers in the file / DataFrame as given (they differ from
            positions once rows are skipped); messages and ``problems`` use these.
    """

    data: pd.DataFrame
    ids: np.ndarray
    titles: np.ndarray
    texts: np.ndarray
    images: np.ndarray
    sources: np.ndarray | None
    labels: np.ndarray | None
    base_dir: Path | None
    columns: ColumnMap
    problems: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBLEM_COLUMNS))
    name: str = "catalogue"
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.ids):
            self.rows = np.arange(len(self.ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def add_problems(self, rows: list[dict[str, Any]]) -> None:
        """Append problem records (dicts with :data:`PROBLEM_COLUMNS` keys)."""
        if rows:
            new = pd.DataFrame(rows, columns=PROBLEM_COLUMNS)
            self.problems = (
                new if self.problems.empty else pd.concat([self.problems, new], ignore_index=True)
            )

    def subset(self, rows: np.ndarray) -> Catalogue:
        """The catalogue restricted to the given positions (problems and row numbers kept)."""
        rows = np.asarray(rows, dtype=np.int64)
        return Catalogue(
            data=self.data.iloc[rows].reset_index(drop=True),
            ids=self.ids[rows],
            titles=self.titles[rows],
            texts=self.texts[rows],
            images=self.images[rows],
            sources=None if self.sources is None else self.sources[rows],
            labels=None if self.labels is None else self.labels[rows],
            base_dir=self.base_dir,
            columns=self.columns,
            problems=self.problems,
            name=self.name,
            rows=self.rows[rows],
        )

    def row_name(self, row: int) -> str:
        """How to name one row in messages: ``catalogue row 12 (id 'abc')``."""
        return f"{self.name} row {self.rows[row]} (id {self.ids[row]!r})"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, TSV, JSON-lines or Parquet file into a DataFrame.

    Raises:
        CatalogueError: the file is missing or its format is not recognised.
    """
    path = Path(path)
    if not path.exists():
        raise CatalogueError(f"catalogue file not found: {path}")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".csv.gz"):
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if suffix in (".tsv", ".tsv.gz"):
            return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
        if suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise CatalogueError(f"could not read catalogue {path}: {e}") from None
    raise CatalogueError(
        f"unsupported catalogue format {path.suffix!r} for {path}; "
        "expected .csv, .tsv, .jsonl or .parquet"
    )


def _resolve(df: pd.DataFrame, role: str, given: str | None, required: bool) -> str | None:
    if given is not None:
        if given not in df.columns:
            raise CatalogueError(
                f"column {given!r} (for {role}) not found; the catalogue has columns "
                f"{list(map(str, df.columns))}"
            )
        return given
    for candidate in _AUTO_COLUMNS.get(role, ()):
        if candidate in df.columns:
            return candidate
    if required:
        raise CatalogueError(
            f"no {role} column found (looked for {list(_AUTO_COLUMNS[role])}); "
            f"the catalogue has columns {list(map(str, df.columns))}; name it with --{role}-column"
        )
    return None


def _as_text(values: pd.Series) -> np.ndarray:
    out = values.astype(object).where(values.notna(), "")
    return np.array([str(v).strip() for v in out], dtype=object)


def _list_rows(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return shown + more


def load_catalogue(
    source: str | Path | pd.DataFrame | Catalogue,
    columns: ColumnMap | dict[str, Any] | None = None,
    base_dir: str | Path | None = None,
    on_empty_row: Literal["raise", "skip"] = "raise",
    name: str | None = None,
) -> Catalogue:
    """Load and validate a catalogue.

    Args:
        source: a CSV / TSV / JSON-lines / Parquet path, a DataFrame, or an already loaded
            :class:`Catalogue` (returned unchanged).
        columns: the column mapping (:class:`ColumnMap` or a dict of its fields).
        base_dir: folder relative image paths are resolved against; defaults to the
            file's folder (or the working directory for a DataFrame).
        on_empty_row: what to do with rows that have neither text nor an image:
            ``"raise"`` (default) or ``"skip"`` (dropped and listed in ``problems``).
        name: what to call the catalogue in messages.

    Returns:
        The validated :class:`Catalogue`.

    Raises:
        CatalogueError: missing columns, missing or duplicate ids, or (with
            ``on_empty_row="raise"``) rows with neither text nor image; the message lists
            the offending rows.

    Example:
        >>> import pandas as pd
        >>> cat = load_catalogue(pd.DataFrame({"id": ["a", "b"], "title": ["Oat milk 1L", "Tea"]}))
        >>> list(cat.ids)
        ['a', 'b']
    """
    if isinstance(source, Catalogue):
        return source
    if on_empty_row not in ("raise", "skip"):
        raise ValueError(f"on_empty_row must be 'raise' or 'skip', got {on_empty_row!r}")
    cmap = columns if isinstance(columns, ColumnMap) else ColumnMap.from_dict(columns)
    if isinstance(source, pd.DataFrame):
        df = source
        name = name or "catalogue"
        base = Path(base_dir) if base_dir is not None else None
    else:
        path = Path(source)
        df = read_table(path)
        name = name or path.name
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
    index_ids = df.index
    df = df.reset_index(drop=True)

    id_col = _resolve(df, "id", cmap.id, required=False)
    title_col = _resolve(df, "title", cmap.title, required=False)
    image_col = _resolve(df, "image", cmap.image, required=False)
    text_cols = [_resolve(df, "text", c, required=True) for c in cmap.text]
    source_col = _resolve(df, "source", cmap.source, required=False) if cmap.source else None
    label_col = _resolve(df, "label", cmap.label, required=False) if cmap.label else None
    price_col = _resolve(df, "price", cmap.price, required=False)
    brand_col = _resolve(df, "brand", cmap.brand, required=False)
    if title_col is None and not text_cols and image_col is None:
        raise CatalogueError(
            f"{name}: no title, text or image column found; the catalogue has columns "
            f"{list(map(str, df.columns))}"
        )
    resolved = ColumnMap(
        id=id_col, title=title_col, text=tuple(c for c in text_cols if c),
        image=image_col, source=source_col, label=label_col, price=price_col, brand=brand_col,
    )

    raw_ids = df[id_col] if id_col is not None else pd.Series(index_ids, dtype=object)
    missing = np.flatnonzero(raw_ids.isna().to_numpy() | (_as_text(raw_ids) == ""))
    if len(missing):
        raise CatalogueError(
            f"{name}: {len(missing)} row(s) have no id in column {id_col!r}: rows "
            f"{_list_rows(missing)}"
        )
    ids = np.array([str(v) for v in raw_ids], dtype=object)
    dup_mask = pd.Series(ids).duplicated(keep=False).to_numpy()
    if dup_mask.any():
        dup_rows = np.flatnonzero(dup_mask)
        examples = ", ".join(f"{ids[r]!r} (row {r})" for r in dup_rows[:10])
        raise CatalogueError(
            f"{name}: ids must be unique; {len(dup_rows)} rows share ids: {examples}"
        )

    n = len(df)
    titles = _as_text(df[title_col]) if title_col else np.full(n, "", dtype=object)
    parts = [titles] + [_as_text(df[c]) for c in resolved.text]
    texts = np.array(
        [" | ".join(p for p in row if p) for row in zip(*parts, strict=True)], dtype=object
    ) if n else np.array([], dtype=object)
    if image_col:
        images = np.empty(n, dtype=object)
        for i, v in enumerate(df[image_col].tolist()):
            empty = v is None or (isinstance(v, float) and np.isnan(v)) or (
                isinstance(v, str) and not v.strip()
            )
            images[i] = None if empty else v
    else:
        images = np.full(n, None, dtype=object)
    sources = _as_text(df[source_col]) if source_col else None
    labels = df[label_col].to_numpy(dtype=object) if label_col else None

    cat = Catalogue(
        data=df, ids=ids, titles=titles, texts=texts, images=images, sources=sources,
        labels=labels, base_dir=base, columns=resolved, name=name,
    )
    empty = np.flatnonzero((texts == "") & np.array([im is None for im in images], dtype=bool))
    if len(empty):
        if on_empty_row == "raise":
            raise CatalogueError(
                f"{name}: {len(empty)} row(s) have neither text nor an image: rows "
                f"{_list_rows(empty)} (ids {', '.join(repr(ids[r]) for r in empty[:5])}); "
                "pass on_empty_row='skip' to drop them"
            )
        cat.add_problems([
            {"row": int(r), "id": ids[r], "field": "title", "problem": "empty_row",
             "detail": "neither text nor image", "action": "skipped"}
            for r in empty
        ])
        cat = cat.subset(np.setdiff1d(np.arange(n), empty))
    return cat
