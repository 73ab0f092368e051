"""The Grocery Store Dataset as an mmmatch catalogue (81 products) plus labelled photos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["GroceryData", "load_grocery"]


@dataclass
class GroceryData:
    """Catalogue and photos.

    Attributes:
        catalogue: one row per fine product: ``id`` (fine class id), ``title`` (product name),
            ``description``, ``image`` (absolute path of the iconic image), ``coarse``.
        photos: split name -> ``image`` (absolute path), ``label`` (fine id, str),
            ``coarse_id``, ``typed_title`` (the coarse class name, as a shopper would type it).
    """

    catalogue: pd.DataFrame
    photos: dict[str, pd.DataFrame]


def _words(name: str) -> str:
    return name.replace("-", " ").replace("_", " ").strip()


def load_grocery(data_dir: str | Path) -> GroceryData:
    """Read ``grocery-store/`` from the shared datasets folder."""
    root = Path(data_dir).resolve() / "grocery-store"
    classes = pd.read_csv(root / "classes.csv")
    classes.columns = ["name", "fine_id", "coarse", "coarse_id", "iconic", "description_path"]
    descriptions = [
        (root / p.lstrip("/")).read_text(encoding="utf-8", errors="replace").strip()
        for p in classes["description_path"]
    ]
    catalogue = pd.DataFrame({
        "id": classes["fine_id"].astype(str),
        "title": [_words(n) for n in classes["name"]],
        "description": descriptions,
        "image": [str(root / p.lstrip("/")) for p in classes["iconic"]],
        "coarse": [_words(c) for c in classes["coarse"]],
    })
    coarse_names = dict(zip(classes["coarse_id"], catalogue["coarse"], strict=True))
    photos = {}
    for split in ("train", "val", "test"):
        rows = pd.read_csv(root / f"{split}.txt", header=None, names=["path", "fine", "coarse"],
                           skipinitialspace=True)
        photos[split] = pd.DataFrame({
            "image": [str(root / p.strip()) for p in rows["path"]],
            "label": rows["fine"].astype(str),
            "coarse_id": rows["coarse"].astype(int),
            "typed_title": [coarse_names[c] for c in rows["coarse"]],
        })
    return GroceryData(catalogue, photos)
