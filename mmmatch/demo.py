"""Generated demo catalogues: two retailers listing overlapping products differently.

Each product is a packaged good (brand, kind, flavour, size, colour). Retailer A shows a clean
pack shot; retailer B a "phone photo" of the same pack (shifted, rotated, rescaled, other
light, background clutter) and writes the title its own way (other word order, abbreviations,
lower case). Some products are listed by one retailer only, and some pairs are near-misses
(same brand and kind, other flavour or size), so the demo has to get things right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["DemoData", "make_demo_catalogues"]

BRANDS = ["Nordika", "Solvang", "Brio", "Kelda", "Marlo", "Tovi", "Uplands", "Avena"]
KINDS = [
    ("Oat Drink", "bottle"), ("Orange Juice", "carton"), ("Greek Yoghurt", "tub"),
    ("Sparkling Water", "can"), ("Granola", "box"), ("Peanut Butter", "jar"),
]
FLAVOURS = ["Original", "Vanilla", "Strawberry", "Chocolate", "Lemon", "Blueberry"]
SIZES = ["250 ml", "500 ml", "1 l", "330 ml", "750 g", "400 g"]
ABBREVIATIONS = {"Original": "Orig.", "Strawberry": "Strawb.", "Chocolate": "Choc",
                 "Sparkling": "Sparkl.", "Yoghurt": "Yog.", "Blueberry": "Blueb."}
PALETTE = [
    (200, 40, 40), (40, 120, 200), (240, 200, 40), (60, 160, 80), (140, 60, 160),
    (240, 130, 30), (30, 30, 30), (220, 220, 220), (120, 80, 40), (200, 90, 150),
]


@dataclass
class DemoData:
    """Paths of the generated catalogues and the true pairs.

    Attributes:
        left: CSV of retailer A (``id, title, brand, image``).
        right: CSV of retailer B (``sku, name, image``).
        truth: DataFrame ``left_id, right_id`` of the true matches.
        folder: where everything was written.
    """

    left: Path
    right: Path
    truth: pd.DataFrame
    folder: Path


def _draw_pack(
    product: dict, rng: np.random.Generator, photo: bool, size: int = 256
) -> Image.Image:
    bg = (245, 245, 245) if not photo else tuple(int(v) for v in rng.integers(190, 250, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    if photo:  # a bit of shelf at the edges
        for _ in range(2):
            x0 = int(rng.choice([0, size - 30]))
            color = tuple(int(v) for v in rng.integers(0, 255, 3))
            d.rectangle([x0, int(rng.integers(0, size - 60)), x0 + 30, size], fill=color)
    body, accent = product["color"], product["accent"]
    shape = product["shape"]
    box = {"bottle": (90, 30, 166, 230), "carton": (70, 40, 186, 230), "tub": (50, 100, 206, 210),
           "can": (85, 50, 171, 220), "box": (55, 30, 201, 230), "jar": (65, 70, 191, 220)}[shape]
    if shape in ("can", "tub", "jar"):
        d.rounded_rectangle(box, radius=25, fill=body, outline=(20, 20, 20), width=3)
    else:
        d.rectangle(box, fill=body, outline=(20, 20, 20), width=3)
    if shape == "bottle":
        d.rectangle((112, 10, 144, 32), fill=accent)
    x0, y0, x1, y1 = box
    band = y0 + (y1 - y0) // 3
    d.rectangle((x0 + 6, band, x1 - 6, band + 40), fill=accent)
    d.text((x0 + 12, band + 6), product["brand"].upper(), fill=(255, 255, 255))
    d.text((x0 + 12, band + 22), product["flavour"][:10], fill=(0, 0, 0))
    # the flavour marker: a coloured disc, position by size
    cx = x0 + 20 + 20 * product["size_idx"]
    d.ellipse((cx, y1 - 50, cx + 26, y1 - 24), fill=product["flavour_color"])
    # a pattern per flavour: stripes, dots or checks in the flavour colour
    pattern = product["pattern"]
    for i in range(4):
        y = y0 + 8 + 12 * i
        if pattern == 0:
            d.line((x0 + 4, y, x1 - 4, y + 6), fill=product["flavour_color"], width=4)
        elif pattern == 1:
            for x in range(x0 + 10, x1 - 8, 18):
                d.ellipse((x, y, x + 7, y + 7), fill=product["flavour_color"])
        else:
            for x in range(x0 + 6 + 10 * (i % 2), x1 - 8, 20):
                d.rectangle((x, y, x + 9, y + 9), fill=product["flavour_color"])
    if photo:
        angle = float(rng.uniform(-6, 6))
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=bg)
        scale = float(rng.uniform(0.9, 1.05))
        new = int(size * scale)
        img = img.resize((new, new), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (size, size), bg)
        off = rng.integers(-12, 12, 2)
        canvas.paste(img, (int((size - new) // 2 + off[0]), int((size - new) // 2 + off[1])))
        arr = np.asarray(canvas, dtype=np.float32)
        arr = arr * float(rng.uniform(0.85, 1.1)) + rng.normal(0, 4, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))
    return img


def _retailer_b_title(p: dict, rng: np.random.Generator) -> str:
    words = [p["brand"], p["kind"], p["flavour"], p["size"]]
    words = [" ".join(ABBREVIATIONS.get(w, w) for w in part.split()) for part in words]
    style = rng.integers(0, 3)
    if style == 0:
        title = f"{words[1]} {words[2]} - {words[0]} ({words[3]})"
    elif style == 1:
        title = f"{words[0]} {words[2]} {words[1]}, {words[3].replace(' ', '')}"
    else:
        title = f"{words[0]} {words[1]} {words[3]} {words[2]}"
    return title.lower() if rng.random() < 0.5 else title


def make_demo_catalogues(
    folder: str | Path, n_products: int = 40, overlap: float = 0.75, seed: int = 0
) -> DemoData:
    """Write two demo catalogues (CSV + JPEG images) and their true matches.

    Args:
        folder: output folder (created).
        n_products: products per retailer.
        overlap: fraction of retailer A's products that retailer B also lists.
        seed: random seed; the same seed writes the same files.

    Returns:
        :class:`DemoData` with the two CSV paths and the true pairs.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    combos = [(b, k, f, s) for b in range(len(BRANDS)) for k in range(len(KINDS))
              for f in range(len(FLAVOURS)) for s in range(3)]
    picks = rng.choice(len(combos), size=2 * n_products, replace=False)
    products = []
    for i, c in enumerate(picks):
        b, k, f, s = combos[c]
        kind, shape = KINDS[k]
        products.append({
            "pid": i, "brand": BRANDS[b], "kind": kind, "shape": shape, "flavour": FLAVOURS[f],
            "size": SIZES[(k + s) % len(SIZES)], "size_idx": s,
            "color": PALETTE[b % len(PALETTE)], "accent": PALETTE[(b + k + 3) % len(PALETTE)],
            "flavour_color": PALETTE[(f + 5) % len(PALETTE)], "pattern": f % 3,
        })
    left_products = products[:n_products]
    n_shared = round(overlap * n_products)
    right_products = left_products[:n_shared] + products[n_products : 2 * n_products - n_shared]
    right_order = rng.permutation(len(right_products))

    left_rows, right_rows, truth = [], [], []
    for p in left_products:
        name = f"images/a_{p['pid']:04d}.jpg"
        _draw_pack(p, rng, photo=False).save(folder / name, quality=90)
        left_rows.append({
            "id": f"A{p['pid']:04d}",
            "title": f"{p['brand']} {p['kind']} {p['flavour']} {p['size']}",
            "brand": p["brand"], "image": name,
        })
    for j in right_order:
        p = right_products[j]
        name = f"images/b_{p['pid']:04d}.jpg"
        _draw_pack(p, rng, photo=True).save(folder / name, quality=80)
        sku = f"B-{p['pid'] * 7 + 1001}"
        right_rows.append({"sku": sku, "name": _retailer_b_title(p, rng), "image": name})
        if p["pid"] < n_products:
            truth.append({"left_id": f"A{p['pid']:04d}", "right_id": sku})
    left_path, right_path = folder / "retailer_a.csv", folder / "retailer_b.csv"
    pd.DataFrame(left_rows).to_csv(left_path, index=False)
    pd.DataFrame(right_rows).to_csv(right_path, index=False)
    truth_df = pd.DataFrame(truth, columns=["left_id", "right_id"])
    truth_df.to_csv(folder / "truth.csv", index=False)
    return DemoData(left_path, right_path, truth_df, folder)
