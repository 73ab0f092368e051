"""Abt-Buy and Amazon-Google (DeepMatcher versions + full gold) as mmmatch catalogues.

Layout (see ``../shared/datasets/README.md``): ``tableA.csv`` / ``tableB.csv`` catalogues,
``train/valid/test.csv`` labelled pairs and ``full-gold/`` with the original-case tables and
the complete list of true matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["DATASETS", "EMDataset", "load_em_dataset"]

# title column and the extra text fields used for matching. Abt-Buy descriptions are left out:
# they are marketing text that blurs MiniLM and adds nothing to TF-IDF (measured on train).
DATASETS = {
    "abt-buy": {"title": "name", "text": (), "full": ("abt.csv", "buy.csv", "|")},
    "amazon-google": {"title": "title", "text": ("manufacturer",),
                      "full": ("amazon.csv", "gp.csv", "#")},
}


@dataclass
class EMDataset:
    """One entity-matching dataset.

    Attributes:
        name: ``abt-buy`` or ``amazon-google``.
        left: table A as a DataFrame (``id`` column as str).
        right: table B.
        pairs: split name (``train``, ``valid``, ``test``) -> ``left_id, right_id, label``.
        full_left: original-case table A of the full gold.
        full_right: original-case table B.
        gold: every true pair ``left_id, right_id`` over the full tables.
        columns: the column mapping (title and text fields) for :func:`mmmatch.load_catalogue`.
    """

    name: str
    left: pd.DataFrame
    right: pd.DataFrame
    pairs: dict[str, pd.DataFrame]
    full_left: pd.DataFrame
    full_right: pd.DataFrame
    gold: pd.DataFrame
    columns: dict


def _read(path: Path, sep: str = ",") -> pd.DataFrame:
    df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, engine="python"
                     if len(sep) > 1 else "c")
    df["id"] = df["id"].astype(str)
    return df


def load_em_dataset(data_dir: str | Path, name: str, description_chars: int = 200
                    ) -> EMDataset:
    """Read one dataset.

    Args:
        data_dir: the shared datasets folder.
        name: ``abt-buy`` or ``amazon-google``.
        description_chars: long descriptions are cut to this many characters (they are
            mostly marketing text; the title and codes carry the identity).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    spec = DATASETS[name]
    root = Path(data_dir).resolve() / name
    left, right = _read(root / "tableA.csv"), _read(root / "tableB.csv")
    pairs = {}
    for split in ("train", "valid", "test"):
        p = pd.read_csv(root / f"{split}.csv", dtype=str)
        pairs[split] = pd.DataFrame({
            "left_id": p["ltable_id"], "right_id": p["rtable_id"],
            "label": p["label"].astype(int),
        })
    a, b, sep = spec["full"]
    full_left, full_right = _read(root / "full-gold" / a, sep), _read(root / "full-gold" / b, sep)
    gt = pd.read_csv(root / "full-gold" / "gt.csv", sep=sep, dtype=str)
    gold = pd.DataFrame({"left_id": gt["D1"], "right_id": gt["D2"]})
    for df in (left, right, full_left, full_right):
        for col in spec["text"]:
            if col in df.columns and description_chars:
                df[col] = df[col].str.slice(0, description_chars)
    columns = {"id": "id", "title": spec["title"], "text": spec["text"]}
    return EMDataset(name, left, right, pairs, full_left, full_right, gold, columns)
