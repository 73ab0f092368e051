"""Load test of the HTTP search service: photo + title queries against a 100,000-item index.

* The index: 100,000 items, each a real Grocery Store photo (``train`` / ``val`` photos and
  the catalogue's iconic images, 3,017 of them, reused) with its own title (the Abt-Buy and
  Amazon-Google product titles and the grocery product names, combined so that every title
  is distinct), embedded with the default encoders (EfficientNet-Lite0 + MiniLM) and built
  once into ``--work-dir`` (about 15 min on 2 CPU cores; later runs reuse it).
* The index is approximate above 128 MB of vectors (a fast-scan shortlist re-scored from
  half-precision vectors, see ``mmmatch.index``): ``ivf_recall_at_10`` is the top-10
  overlap of the served results with an exact search of the same vectors.
* The queries: Grocery ``test`` photos (never indexed) with their typed titles, as JPEG
  uploads plus a title field, ``k=10``.
* The service: :func:`mmmatch.serve.create_app` on uvicorn (as ``mmmatch serve`` runs it)
  on loopback, in a thread of this process; ``--clients`` keep-alive connections from a
  separate client process (asyncio streams sending pre-encoded requests, as wrk does, so the
  client takes almost no CPU from the server on these 2 cores), each sending its next query
  when the last answer is read; latency from send to the whole answer read.
* The bar: the encoders alone on the same queries, in batches of ``--clients``
  (``model_only``: from the JPEG bytes and the title, the encoders' own decoding and
  preprocessing included; ``forward_only``: the networks alone on photos decoded
  beforehand), run *on the service's search thread with the service's encoder objects*,
  between its batches. Measured from another thread the same encoders ran 20-30% slower
  on this VM (memory placement), which would flatter the service. ``search_only``:
  ``SearchIndex.search_batch`` there, no HTTP.
* This VM's speed drifts by +-20% within minutes, so ``--rounds`` rounds alternate an
  encoders-only pass, a search-only pass and a load phase over the same queries; rates are
  totals over the rounds, and each round's own ratio is reported too.

    python benchmarks/serve_load.py --data-dir ../shared/datasets
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import parser, write

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

    if (folder / "vectors" / "shortlist.faiss").exists():
        return 0.0
    if folder.exists():  # built before the fast-scan shortlist: build again (from the cache)
        shutil.rmtree(folder)
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


def model_only_s(photos: list[bytes], titles: list[str], batch: int, image_enc: Any,
                 text_enc: Any) -> float:
    """Seconds the two encoders take for the queries as sent, in batches of ``batch``: the
    JPEG bytes decoded, resized and normalised by the encoder's own preprocessing, the title
    tokenised; no HTTP, search or JSON."""
    from mmmatch.encode import encode_images, encode_texts

    start = time.perf_counter()
    for i in range(0, len(photos), batch):
        encode_images(photos[i:i + batch], image_enc)
        encode_texts(titles[i:i + batch], text_enc)
    return time.perf_counter() - start


def forward_only_s(pixels: np.ndarray, titles: list[str], batch: int, image_enc: Any,
                   text_enc: Any) -> float:
    """Seconds of the networks' forward passes alone, on photos decoded and resized
    beforehand."""
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        image_enc.encode_uint8(pixels[i:i + batch])
        text_enc.encode(titles[i:i + batch])
    return time.perf_counter() - start


def search_only_s(photos: list[bytes], titles: list[str], batch: int, index: Any) -> float:
    """Seconds of ``SearchIndex.search_batch`` over the queries in batches of ``batch``:
    encoders, FAISS, TF-IDF and scoring, no HTTP."""
    start = time.perf_counter()
    for i in range(0, len(photos), batch):
        index.search_batch(photos[i:i + batch], titles[i:i + batch], k=10)
    return time.perf_counter() - start


def ivf_recall(index: Any, photos: list[bytes], titles: list[str]) -> dict[str, float]:
    """Top-10 overlap of the served search (the fast-scan shortlist re-scored) with an
    exact search of the same vectors (the half-precision IVF with every list visited)."""
    import faiss

    got = index.search_batch(photos, titles, k=10)
    vectors = index.index
    ivf = faiss.extract_index_ivf(vectors._index)
    nprobe, shortlist = ivf.nprobe, vectors._shortlist
    ivf.nprobe, vectors._shortlist = ivf.nlist, None  # every list, no shortlist: exact
    try:
        exact = index.search_batch(photos, titles, k=10)
    finally:
        ivf.nprobe, vectors._shortlist = nprobe, shortlist
    short = faiss.extract_index_ivf(shortlist)
    overlap = [len(set(a) & set(b)) / 10 for (_, a), (_, b) in zip(
        got.groupby("query")["id"], exact.groupby("query")["id"], strict=True)]
    top1 = (got[got["rank"] == 1]["id"].to_numpy() == exact[exact["rank"] == 1]["id"]
            .to_numpy()).mean()
    return {"serve.ivf_recall_at_10": float(np.mean(overlap)), "serve.ivf_top1_agreement":
            float(top1), "serve.ivf_nprobe": float(short.nprobe),
            "serve.ivf_nlist": float(short.nlist), "serve.k_factor": float(vectors.k_factor)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the load client: a separate process, so that it shares no interpreter with the server ---


def _requests(photos: list[bytes], titles: list[str], path: str) -> list[bytes]:
    """Each query as the complete HTTP/1.1 request (multipart photo + title + k), encoded
    once, so the client (on the same 2 cores as the server) only sends bytes, as wrk does."""
    import httpx

    out = []
    for q, (photo, title) in enumerate(zip(photos, titles, strict=True)):
        request = httpx.Request("POST", f"http://127.0.0.1{path}", files={
            "image": (f"q{q}.jpg", photo, "image/jpeg")}, data={"title": title, "k": "10"})
        body = request.read()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: {request.headers['content-type']}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        out.append(head + body)
    return out


async def _load(port: int, requests: list[bytes], clients: int, n: int, offset: int
                ) -> tuple[list[float], float, int]:
    """``n`` requests from ``clients`` keep-alive connections, each sending its next request
    when the last answer is read: latencies (s), wall time (s) and failures (not a 200 with
    10 results)."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(offset, offset + n))

    async def client() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if length is None:
                    raise RuntimeError(f"no content-length in {head[:300]!r}")
                body = await reader.readexactly(int(length.group(1)))
                latencies.append(time.perf_counter() - t0)
                failures += not (head.startswith(b"HTTP/1.1 200") and
                                 body.count(b'"rank"') == 10)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - start, failures


def _client_process(conn: Any, port: int, requests: list[bytes], clients: int) -> None:
    """Run load rounds as the parent asks (``(n, offset)``; ``None`` ends)."""
    while (ask := conn.recv()) is not None:
        conn.send(asyncio.run(_load(port, requests, clients, *ask)))


class _Server:
    """The service (:func:`mmmatch.serve.create_app` on uvicorn, as ``mmmatch serve`` runs
    it) on loopback, in a thread of this process: the rate of its encoders can then be
    measured on the very objects it serves with."""

    def __init__(self, app: Any, port: int) -> None:
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def main() -> None:
    p = parser("serve_load", __doc__.splitlines()[0])
    p.add_argument("--work-dir", default=str(Path.home() / ".cache" / "mmmatch" / "benchmarks"
                                             / "serve_load"),
                   help="where the 100,000-item index is built once and kept")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=25.0, help="the server's batching wait")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternations of an encoders-only pass and a load phase")
    p.add_argument("--requests", type=int, default=480, help="measured requests per round")
    p.add_argument("--warmup", type=int, default=64)
    p.add_argument("--queries", type=int, default=480, help="distinct query photos")
    args = p.parse_args()
    import multiprocessing

    from PIL import Image

    from mmmatch.search import SearchIndex
    from mmmatch.serve import create_app

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "index-100k"
    out: dict[str, float] = {"serve.clients": float(args.clients)}
    out["serve.index_build_s"] = build_index(args.data_dir, folder, work / "cache")

    test = load_grocery(args.data_dir).photos["test"].sample(n=args.queries, random_state=0)
    photos = [Path(p).read_bytes() for p in test["image"]]
    titles = test["typed_title"].astype(str).tolist()
    t0 = time.perf_counter()
    index = SearchIndex.load(folder)
    index.warm()
    out["serve.startup_s"] = time.perf_counter() - t0
    out["serve.index_items"] = float(len(index))
    out |= ivf_recall(index, photos, titles)
    print({k: round(v, 3) for k, v in out.items()}, flush=True)

    image_enc, text_enc = index.matcher.encoders(True, True)
    pixels = np.stack([image_enc.preprocess.geometry(Image.open(io.BytesIO(b)).convert("RGB"))
                       for b in photos])
    app = create_app({"catalogue": index}, max_batch=args.clients,
                     max_wait_ms=args.max_wait_ms)
    port = _free_port()
    requests = _requests(photos, titles, "/indexes/catalogue/search")
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    client = ctx.Process(target=_client_process,
                         args=(child_conn, port, requests, args.clients), daemon=True)
    rounds: list[dict[str, float]] = []
    latencies: list[float] = []
    failures = 0
    with _Server(app, port):
        client.start()
        try:
            # the encoders alone run on the thread the service searches on (between its
            # batches): the same objects, thread and memory arena as the served queries
            worker = app.state.batchers["catalogue"]

            def on_worker(fn: Any, *a: Any) -> float:
                return worker.submit(fn, *a).result()

            encoders = (args.clients, image_enc, text_enc)

            # warm-up: the frozen image graph is optimised on its first calls
            on_worker(model_only_s, photos, titles, *encoders)
            conn.send((args.warmup, 0))
            conn.recv()
            sizes = app.state.batch_sizes["catalogue"]
            sizes.clear()
            # the encoders alone and the service in turns: this shared VM's speed drifts by
            # +-20 % within minutes, so each load phase is compared with the pass beside it
            for r in range(args.rounds):
                model_s = on_worker(model_only_s, photos, titles, *encoders)
                forward_s = on_worker(forward_only_s, pixels, titles, *encoders)
                search_s = on_worker(search_only_s, photos, titles, args.clients, index)
                busy = worker.busy_s
                conn.send((args.requests, r * args.requests))
                lat, wall, failed = conn.recv()
                busy = worker.busy_s - busy
                latencies += lat
                failures += failed
                rounds.append({"model_only": model_s, "forward_only": forward_s,
                               "search_only": search_s, "served": wall, "busy": busy,
                               "requests": len(lat)})
                print(f"round {r}: " + ", ".join(
                    f"{k}_qps {len(photos) / rounds[-1][k]:.1f}"
                    for k in ("model_only", "forward_only", "search_only"))
                    + f", qps {len(lat) / wall:.1f}, worker_busy {busy / wall:.2f}", flush=True)
        finally:
            conn.send(None)
            client.join(timeout=60)
    lat_arr = np.asarray(latencies)
    queries = sum(n * c for n, c in sizes.items())
    out["serve.mean_batch"] = queries / max(1, sum(sizes.values()))
    out["serve.max_wait_ms"] = args.max_wait_ms
    out["serve.rounds"] = float(args.rounds)

    def total(key: str) -> float:  # seconds over all rounds
        return sum(r[key] for r in rounds)

    for key in ("model_only", "forward_only", "search_only"):  # the same queries each round
        out[f"serve.{key}_qps"] = len(photos) * args.rounds / total(key)
    out["serve.requests"] = float(len(lat_arr))
    out["serve.failures"] = float(failures)
    out["serve.qps"] = len(lat_arr) / total("served")
    out["serve.p50_s"] = float(np.percentile(lat_arr, 50))
    out["serve.p99_s"] = float(np.percentile(lat_arr, 99))
    out["serve.qps_over_model_only"] = out["serve.qps"] / out["serve.model_only_qps"]
    out["serve.qps_over_forward_only"] = out["serve.qps"] / out["serve.forward_only_qps"]
    out["serve.worker_busy_fraction"] = float(np.mean([r["busy"] / r["served"]
                                                       for r in rounds]))
    # each round's load phase beside its own encoders-only pass
    ratios = [r["requests"] / r["served"] / (len(photos) / r["model_only"]) for r in rounds]
    out["serve.round_ratio_min"] = float(min(ratios))
    out["serve.round_ratio_max"] = float(max(ratios))
    out["serve.p99_over_p50"] = out["serve.p99_s"] / out["serve.p50_s"]
    print({k: round(v, 4) for k, v in out.items()}, flush=True)
    write(out, args.out)


if __name__ == "__main__":
    main()
