"""Load test of the HTTP search service: photo + title queries against a 100,000-item index.

* The index: 100,000 items, each a real Grocery Store photo (``train`` / ``val`` photos and
  the catalogue's iconic images, 3,017 of them, reused) with its own title (the Abt-Buy and
  Amazon-Google product titles and the grocery product names, combined so that every title
  is distinct), embedded with the default encoders (EfficientNet-Lite0 + MiniLM) and built
  once into ``--work-dir`` (about 15 min on 2 CPU cores; later runs reuse it).
* The queries: Grocery ``test`` photos (never indexed) with their typed titles, as JPEG
  uploads plus a title field, ``k=10``.
* Model only: the same queries through the two encoders in batches of ``--clients``, in
  this process, before the server starts and after it stops, averaged (``model_only``: from
  the JPEG bytes and the title,
  the encoders' own decoding and preprocessing included; ``forward_only``: the networks
  alone, on photos decoded and resized beforehand): the rate the encoders bound a CPU to.
* The index is approximate above 128 MB of vectors (IVF, see ``mmmatch.index``):
  ``ivf_recall_at_10`` is the top-10 overlap of its results with an exact search.
* The service: ``mmmatch serve`` in a subprocess on loopback (uvicorn, one worker, the
  micro-batcher grouping concurrent queries); ``--clients`` concurrent clients (asyncio +
  httpx in this process) send ``--requests`` queries after a warm-up; latency per request
  from send to parsed response.

    python benchmarks/serve_load.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT, parser, write

from data_prep.entity_matching import load_em_dataset
from data_prep.grocery import load_grocery

N_ITEMS = 100_000


def _titles(data_dir: str, grocery_names: list[str], n: int) -> list[str]:
    """``n`` distinct titles: product titles of the entity-matching datasets, each with a
    grocery product name and a pack variant."""
    pool: list[str] = []
    for name in ("abt-buy", "amazon-google"):
        ds = load_em_dataset(data_dir, name)
        col = ds.columns["title"]
        for df in (ds.full_left, ds.full_right):
            pool.extend(df[col].astype(str).str.strip().tolist())
    pool = list(dict.fromkeys(t for t in pool if t))
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = pool[i % len(pool)]
        grocery = grocery_names[int(rng.integers(len(grocery_names)))]
        out.append(f"{base} - {grocery} pack {i // len(pool) + 1}")
    return out


def build_index(data_dir: str, folder: Path, cache_dir: Path) -> float:
    """Build and save the 100,000-item index (if ``folder`` has none); its build seconds."""
    from mmmatch import Matcher, SearchIndex

    if (folder / "manifest.json").exists():
        return 0.0
    data = load_grocery(data_dir)
    photos = pd.concat([data.photos["train"], data.photos["val"]], ignore_index=True)
    images = photos["image"].tolist() + data.catalogue["image"].tolist()
    names = data.catalogue["title"].astype(str).tolist()
    items = pd.DataFrame({
        "id": [f"item{i}" for i in range(N_ITEMS)],
        "title": _titles(data_dir, names, N_ITEMS),
        "image": [images[i % len(images)] for i in range(N_ITEMS)],
    })
    start = time.perf_counter()
    matcher = Matcher(cache_dir=cache_dir, show_progress=True)
    index = SearchIndex.build(items, matcher)
    index.save(folder)
    return time.perf_counter() - start


def model_only_qps(photos: list[bytes], titles: list[str], batch: int, reps: int = 3
                   ) -> dict[str, float]:
    """Queries per second of the two encoders alone, in batches of ``batch`` (the median of
    ``reps`` passes over the queries, after a warm-up pass: the frozen graph is optimised
    on its first calls).

    ``model_only``: each encoder from the query as sent (JPEG bytes decoded, resized and
    normalised by the encoder's own preprocessing; the title tokenised), no HTTP, search or
    JSON. ``forward_only``: the networks' forward passes alone, on photos decoded and
    resized beforehand.
    """
    import io

    from PIL import Image

    from mmmatch.encode import encode_images, encode_texts
    from mmmatch.encoders import get_encoder

    image_enc = get_encoder("efficientnet-lite0", "image")
    text_enc = get_encoder("minilm-l6", "text")
    pixels = np.stack([image_enc.preprocess.geometry(Image.open(io.BytesIO(b)).convert("RGB"))
                       for b in photos])

    def from_bytes() -> None:
        for i in range(0, len(photos), batch):
            encode_images(photos[i:i + batch], image_enc)
            encode_texts(titles[i:i + batch], text_enc)

    def forward() -> None:
        for i in range(0, len(photos), batch):
            image_enc.encode_uint8(pixels[i:i + batch])
            text_enc.encode(titles[i:i + batch])

    out = {}
    for key, run in (("serve.model_only_qps", from_bytes), ("serve.forward_only_qps", forward)):
        run()  # warm-up
        rates = []
        for _ in range(reps):
            start = time.perf_counter()
            run()
            rates.append(len(photos) / (time.perf_counter() - start))
        out[key] = float(np.median(rates))
    return out


def ivf_recall(folder: Path, photos: list[bytes], titles: list[str]) -> dict[str, float]:
    """Top-10 overlap of the served (IVF) search with an exact search of the same index, and
    the rate of ``SearchIndex.search_batch`` itself (in this process, no HTTP)."""
    import faiss

    from mmmatch.search import SearchIndex

    index = SearchIndex.load(folder)
    index.warm()
    got = index.search_batch(photos, titles, k=10)
    start = time.perf_counter()  # the search alone, no HTTP: batches of 16, as served
    for i in range(0, len(photos), 16):
        index.search_batch(photos[i:i + 16], titles[i:i + 16], k=10)
    search_qps = len(photos) / (time.perf_counter() - start)
    ivf = faiss.extract_index_ivf(index.index._index)
    nprobe = ivf.nprobe
    ivf.nprobe = ivf.nlist  # every list: exact
    exact = index.search_batch(photos, titles, k=10)
    overlap = [len(set(a) & set(b)) / 10 for (_, a), (_, b) in zip(
        got.groupby("query")["id"], exact.groupby("query")["id"], strict=True)]
    top1 = (got[got["rank"] == 1]["id"].to_numpy() == exact[exact["rank"] == 1]["id"]
            .to_numpy()).mean()
    return {"serve.search_batch_qps": search_qps,
            "serve.ivf_recall_at_10": float(np.mean(overlap)), "serve.ivf_top1_agreement":
            float(top1), "serve.ivf_nprobe": float(nprobe), "serve.ivf_nlist": float(ivf.nlist)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path, port: int, clients: int, log: Path, max_wait_ms: float
                 ) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmmatch.cli", "serve", f"catalogue={folder}", "--port",
           str(port), "--max-batch", str(clients), "--max-wait-ms", str(max_wait_ms),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    import httpx

    deadline = time.monotonic() + 600  # loading 100,000 items and two encoders
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not come up in 600 s")


def _bodies(photos: list[bytes], titles: list[str]) -> list[tuple[bytes, str]]:
    """Each query's multipart body and content type, encoded once, so the load client (on
    the same 2 cores as the server) only sends bytes, as wrk would."""
    import httpx

    out = []
    for q, (photo, title) in enumerate(zip(photos, titles, strict=True)):
        request = httpx.Request("POST", "http://x/", files={
            "image": (f"q{q}.jpg", photo, "image/jpeg")}, data={"title": title, "k": "10"})
        out.append((request.read(), request.headers["content-type"]))
    return out


async def load(url: str, photos: list[bytes], titles: list[str], clients: int,
               n_requests: int, warmup: int) -> tuple[np.ndarray, float, int]:
    """Latencies (s) of the measured requests, their wall time, and the failures."""
    import httpx

    bodies = _bodies(photos, titles)
    latencies: list[float] = []
    failures = 0
    counter = iter(range(warmup + n_requests))
    first_measured: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        for i in counter:
            body, content_type = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            r = await http.post(url, content=body, headers={"content-type": content_type})
            ok = r.status_code == 200 and r.content.count(b'"rank"') == 10
            dt = time.perf_counter() - t0
            failures += not ok
            if i >= warmup:
                if not first_measured:
                    first_measured.append(t0)
                latencies.append(dt)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        end = time.perf_counter()
    wall = end - (first_measured[0] if first_measured else start)
    return np.asarray(latencies), wall, failures


def main() -> None:
    p = parser("serve_load", __doc__.splitlines()[0])
    p.add_argument("--work-dir", default=str(Path.home() / ".cache" / "mmmatch" / "benchmarks"
                                             / "serve_load"),
                   help="where the 100,000-item index is built once and kept")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=25.0, help="the server's batching wait")
    p.add_argument("--requests", type=int, default=960, help="measured requests")
    p.add_argument("--warmup", type=int, default=64)
    p.add_argument("--queries", type=int, default=480, help="distinct query photos")
    args = p.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "index-100k"
    out: dict[str, float] = {"serve.clients": float(args.clients)}
    out["serve.index_build_s"] = build_index(args.data_dir, folder, work / "cache")

    test = load_grocery(args.data_dir).photos["test"].sample(n=args.queries, random_state=0)
    photos = [Path(p).read_bytes() for p in test["image"]]
    titles = test["typed_title"].astype(str).tolist()
    before = model_only_qps(photos, titles, args.clients)
    out |= ivf_recall(folder, photos, titles)
    print({k: round(v, 3) for k, v in out.items()}, flush=True)

    port = _free_port()
    log = work / "server.log"
    t0 = time.perf_counter()
    proc = start_server(folder, port, args.clients, log, args.max_wait_ms)
    out["serve.max_wait_ms"] = args.max_wait_ms
    out["serve.startup_s"] = time.perf_counter() - t0
    try:
        import httpx

        info = httpx.get(f"http://127.0.0.1:{port}/indexes/catalogue", timeout=30).json()
        out["serve.index_items"] = float(info["count"])
        url = f"http://127.0.0.1:{port}/indexes/catalogue/search"
        lat, wall, failures = asyncio.run(load(url, photos, titles, args.clients,
                                               args.requests, args.warmup))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    batches = [line for line in log.read_text().splitlines() if "queries in" in line]
    if batches:
        print(batches[-1], flush=True)
        mean = re.search(r"mean ([0-9.]+)", batches[-1])
        if mean:
            out["serve.mean_batch"] = float(mean.group(1))
    # the encoders again after the load: this shared VM's speed drifts by +-20 % within
    # minutes, so the rate to compare with is the mean of both sides of the load
    after = model_only_qps(photos, titles, args.clients)
    for key in before:
        out[f"{key}_before"], out[f"{key}_after"] = before[key], after[key]
        out[key] = (before[key] + after[key]) / 2
    out["serve.requests"] = float(len(lat))
    out["serve.failures"] = float(failures)
    out["serve.qps"] = len(lat) / wall
    out["serve.p50_s"] = float(np.percentile(lat, 50))
    out["serve.p99_s"] = float(np.percentile(lat, 99))
    out["serve.qps_over_model_only"] = out["serve.qps"] / out["serve.model_only_qps"]
    out["serve.qps_over_forward_only"] = out["serve.qps"] / out["serve.forward_only_qps"]
    out["serve.p99_over_p50"] = out["serve.p99_s"] / out["serve.p50_s"]
    print({k: round(v, 4) for k, v in out.items()}, flush=True)
    write(out, args.out)


if __name__ == "__main__":
    main()
