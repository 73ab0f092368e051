"""Report benchmark: an HTML match report of Grocery Store photos against the catalogue.

Store photos (with the coarse class name as a typed title) are matched against the 81
catalogue products (iconic image, name, description) with the default encoders; the
threshold is calibrated for the best F1 on ``val`` photos (``ThresholdCalibrator``), the
``test`` photos are matched with it and :func:`mmmatch.reporting.report` writes the report,
with the true product of each photo as gold. Headless Chromium then renders the top of the
page to a PNG (``--screenshot``); ``--html`` keeps the report. Figures: file size, pair
cards, time to build the report and to render it, whether the screenshot has content.

    python benchmarks/report_render.py --data-dir ../shared/datasets \\
        --out benchmarks/results/report_render.json
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import parser, write

from data_prep.grocery import load_grocery
from mmmatch import Matcher
from mmmatch.calibrate import ThresholdCalibrator
from mmmatch.reporting import report

RIGHT = {"id": "id", "title": "title", "text": ("description",), "image": "image"}


def _photos(data_dir: str, split: str, limit: int, seed: int) -> pd.DataFrame:
    """A sample of one split's photos as a catalogue: ``id, title, image, label``."""
    photos = load_grocery(data_dir).photos[split]
    photos = photos.sample(n=min(limit, len(photos)), random_state=seed)
    return pd.DataFrame({
        "id": [f"{split}-{Path(p).stem}" for p in photos["image"]],
        "title": photos["typed_title"].to_numpy(),
        "image": photos["image"].to_numpy(),
        "label": photos["label"].to_numpy(),
    }).reset_index(drop=True)


def chromium_screenshot(html: Path, png: Path, width: int = 1280, height: int = 2000
                        ) -> float:
    """Render ``html`` with headless Chromium into ``png``; returns the seconds it took."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("headless Chromium is needed for the screenshot (apt install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        start = time.perf_counter()
        subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
             f"--screenshot={png}", f"--window-size={width},{height}",
             html.resolve().as_uri()],
            check=True, capture_output=True, timeout=300)
        return time.perf_counter() - start


def nonblank(png: Path) -> bool:
    """The screenshot has more than one colour."""
    from PIL import Image

    with Image.open(png) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).var()) > 0


def main() -> None:
    p = parser("report_render", __doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=300, help="test photos matched (sample)")
    p.add_argument("--calibration-photos", type=int, default=150,
                   help="val photos the threshold is calibrated on")
    p.add_argument("-k", type=int, default=3, help="candidates per photo")
    p.add_argument("--max-pairs", type=int, default=500, help="pair cards in the report")
    p.add_argument("--html", help="keep the report here (default: a temporary file; it is "
                   "a few MB, so it is not written beside the results)")
    p.add_argument("--screenshot", help="PNG of the top of the page (default: next to --out, "
                   "report_screenshot.png)")
    p.add_argument("--cache-dir", help="embedding cache (default: a fresh temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out_dir = Path(args.out).parent
    png = Path(args.screenshot or out_dir / "report_screenshot.png")
    catalogue = load_grocery(args.data_dir).catalogue
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(args.html or Path(tmp) / "report_render.html")
        cache = args.cache_dir or tmp
        start = time.perf_counter()
        valid = _photos(args.data_dir, "val", args.calibration_photos, args.seed)
        matcher = Matcher(cache_dir=cache, k=args.k)
        scored = matcher.match(valid, catalogue, right_columns=RIGHT, all_candidates=True)
        truth = dict(zip(valid["id"], valid["label"], strict=True))
        labels = scored["right_id"].to_numpy() == scored["left_id"].map(truth).to_numpy()
        cal = ThresholdCalibrator("f1").fit(scored["score"].to_numpy(), labels,
                                            positives=len(valid))
        test = _photos(args.data_dir, "test", args.photos, args.seed)
        pairs = Matcher(cache_dir=cache, k=args.k, threshold=cal.threshold_).match(
            test, catalogue, right_columns=RIGHT, all_candidates=True)
        results["report.match_s"] = time.perf_counter() - start
        gold = pd.DataFrame({"left_id": test["id"], "right_id": test["label"]})

        start = time.perf_counter()
        report(pairs, test, catalogue, output=html, gold=gold, calibration=cal,
               right_columns=RIGHT, max_pairs=args.max_pairs,
               title=f"Grocery Store: {len(test)} store photos against the catalogue")
        results["report.render_s"] = time.perf_counter() - start
        text = html.read_text(encoding="utf-8")
        results["report.bytes"] = float(os.path.getsize(html))
        results["report.pair_cards"] = float(text.count('<div class="pair-card'))
        results["report.candidates"] = float(len(pairs))
        results["report.photos"] = float(len(test))
        results["report.threshold"] = float(cal.threshold_)
        results["report.screenshot_s"] = chromium_screenshot(html, png)
        results["report.screenshot_nonblank"] = float(nonblank(png))
        print(f"report: {args.html or '(temporary)'}, screenshot: {png}", flush=True)
    write(results, args.out)


if __name__ == "__main__":
    main()
