"""The HTTP service: real uvicorn servers on 127.0.0.1 (in a thread, and in a subprocess
killed with SIGKILL), plus FastAPI's TestClient for the finer cases.

Indexes are built with the fake encoders of ``conftest.install_fake_encoders`` (a hash of
the title, an 8x8 thumbnail of the photo), so everything runs in seconds.
"""

import asyncio
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from conftest import image_bytes
from fastapi.testclient import TestClient
from PIL import Image

from mmmatch.pipeline import Matcher
from mmmatch.search import JOURNAL_FILE, SearchIndex
from mmmatch.serve import ServeLimits, create_app, resolve_indexes

TESTS = Path(__file__).parent
KEY = "s3cret"
AUTH = {"X-API-Key": KEY}
TITLES = ["oat milk 1 l", "green tea 20 bags", "sony nnsd797s microwave", "orange juice 1 l",
          "red apple 6 pack", "blue cheese 200 g", "sony nnsd767s microwave", "black coffee"]
LIMITS = ServeLimits(max_request_bytes=300_000, max_image_bytes=100_000,
                     max_image_pixels=200_000, max_k=50, max_batch_queries=8,
                     max_items_per_request=5)


@pytest.fixture
def products():
    return pd.DataFrame({"id": [f"p{i}" for i in range(8)], "title": TITLES,
                         "image": [image_bytes(i) for i in range(8)],
                         "brand": ["oatly", "tetley", "sony", "tropicana", "", "", "sony", ""],
                         "price": [1.5 + i for i in range(8)]})


@pytest.fixture
def folders(fake_encoders, products, tmp_path):
    """``indexes/shop`` (photos + titles, products p0-p5) and ``indexes/books`` (titles)."""
    root = tmp_path / "indexes"
    matcher = Matcher(image_encoder="tiny-image", text_encoder="hash-text", cache_dir=False)
    SearchIndex.build(products.iloc[:6], matcher).save(root / "shop")
    books = pd.DataFrame({"id": ["b1", "b2"], "title": ["the oat cookbook", "tea for two"]})
    SearchIndex.build(books, Matcher(image_encoder=None, text_encoder="hash-text",
                                     cache_dir=False)).save(root / "books")
    return root


def png(size=(64, 48), seed=0):
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 40 % 256, 90, 30)).save(buf, "PNG")
    return buf.getvalue()


def top(response):
    return [hit["id"] for hit in response.json()["results"]]


def error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True  # graceful: the lifespan closes (compacts) the indexes
        self.thread.join(20)
        assert not self.thread.is_alive()


# -- a real server, every endpoint --------------------------------------------------------------


def test_live_server_every_endpoint(folders, products):
    app = create_app({"shop": folders / "shop", "books": folders / "books"}, api_key=KEY,
                     limits=LIMITS)
    image = products["image"]
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=20) as http:
        # health and the API key
        assert http.get("/health").json() == {"status": "ok", "indexes": 2}
        error(http.get("/indexes"), 401, "unauthorized")
        error(http.get("/indexes", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
        error(http.post("/indexes/shop/search", data={"title": "tea"}), 401, "unauthorized")
        listing = http.get("/indexes", headers=AUTH).json()["indexes"]
        assert [(i["name"], i["count"], i["has_images"]) for i in listing] == [
            ("shop", 6, True), ("books", 2, False)]
        shop = http.get("/indexes/shop", headers=AUTH).json()
        assert shop["image_encoder"] == "tiny-image" and shop["text_encoder"] == "hash-text"
        assert shop["persistent"] is True
        error(http.get("/indexes/nope", headers=AUTH), 404, "index_not_found")

        # search: title, photo, both
        r = http.post("/indexes/shop/search", data={"title": TITLES[1], "k": "3"}, headers=AUTH)
        assert r.status_code == 200 and top(r)[0] == "p1" and len(top(r)) == 3
        hit = r.json()["results"][0]
        assert set(hit) == {"rank", "id", "title", "score", "evidence", "metadata"}
        assert set(hit["evidence"]) == {"score", "image_sim", "text_sim", "lexical_sim",
                                        "word_sim", "fused_sim"}
        assert hit["evidence"]["image_sim"] is None and hit["metadata"]["brand"] == "tetley"
        assert hit["metadata"]["price"] == 2.5 and hit["title"] == TITLES[1]
        r = http.post("/indexes/shop/search", files={"image": ("q.jpg", image[4], "image/jpeg")},
                      data={"k": 2}, headers=AUTH)
        assert top(r)[0] == "p4" and r.json()["results"][0]["evidence"]["image_sim"] > 0.99
        r = http.post("/indexes/shop/search", files={"image": ("q.jpg", image[2])},
                      data={"title": TITLES[2]}, headers=AUTH)
        assert top(r)[0] == "p2" and len(top(r)) == 6  # k=10 > 6 items
        r = http.post("/indexes/books/search", data={"title": "tea for two", "k": 1},
                      headers=AUTH)
        assert top(r) == ["b2"]

        # search errors: 4xx with {"error": {...}}, never 500
        error(http.post("/indexes/shop/search", data={"k": 3}, headers=AUTH), 422,
              "empty_query")
        error(http.post("/indexes/shop/search", data={"title": "   "}, headers=AUTH), 422,
              "empty_query")
        for k in ("0", "51", "-3"):
            err = error(http.post("/indexes/shop/search", data={"title": "tea", "k": k},
                                  headers=AUTH), 422, "k_out_of_range")
            assert err["field"] == "k"
        error(http.post("/indexes/shop/search", data={"title": "tea", "k": "ten"},
                        headers=AUTH), 422, "invalid_request")
        err = error(http.post("/indexes/shop/search", files={"image": ("bad.jpg", b"not a jpeg")},
                              headers=AUTH), 422, "unreadable_image")
        assert err["field"] == "image" and "bad.jpg" in err["message"]
        truncated = image[3][: len(image[3]) // 3]
        error(http.post("/indexes/shop/search", files={"image": ("cut.jpg", truncated)},
                        headers=AUTH), 422, "unreadable_image")
        bomb = png((1000, 1000))  # a few KB, a million pixels
        assert len(bomb) < 20_000
        err = error(http.post("/indexes/shop/search", files={"image": ("bomb.png", bomb)},
                              headers=AUTH), 413, "image_too_large")
        assert "bomb.png" in err["message"]
        noise = np.random.default_rng(0).integers(0, 256, 150_000, dtype=np.uint8).tobytes()
        error(http.post("/indexes/shop/search", files={"image": ("big.jpg", noise)},
                        headers=AUTH), 413, "image_too_large")
        error(http.post("/indexes/shop/search", files={"image": ("huge.jpg", noise * 3)},
                        headers=AUTH), 413, "request_too_large")
        error(http.post("/indexes/nope/search", data={"title": "tea"}, headers=AUTH), 404,
              "index_not_found")
        error(http.post("/indexes/books/search", files={"image": ("q.jpg", image[0])},
                        headers=AUTH), 422, "images_not_supported")

        # batch search: a JSON field pairs files and titles
        queries = [{"image": "a.jpg"}, {"title": TITLES[3]}, {"image": "b.jpg",
                                                             "title": TITLES[5]}]
        r = http.post("/indexes/shop/search/batch", headers=AUTH,
                      files=[("files", ("a.jpg", image[0])), ("files", ("b.jpg", image[5]))],
                      data={"queries": json.dumps(queries), "k": 2})
        assert r.status_code == 200
        assert [(q["query"], q["results"][0]["id"], len(q["results"]))
                for q in r.json()["queries"]] == [(0, "p0", 2), (1, "p3", 2), (2, "p5", 2)]
        err = error(http.post("/indexes/shop/search/batch", headers=AUTH,
                              files=[("files", ("a.jpg", image[0])), ("files", ("x.jpg", b"?"))],
                              data={"queries": json.dumps([{"image": "a.jpg"},
                                                           {"image": "x.jpg"}])}),
                    422, "unreadable_image")
        assert "query 1" in err["message"] and "x.jpg" in err["message"]

        # items: add (with a photo), read, duplicate, delete
        new = [{"id": "p6", "title": TITLES[6], "image": "p6.jpg", "brand": "sony",
                "price": 8.5}, {"id": "p7", "title": TITLES[7]}]
        r = http.post("/indexes/shop/items", headers=AUTH, data={"items": json.dumps(new)},
                      files=[("files", ("p6.jpg", image[6], "image/jpeg"))])
        assert r.status_code == 201, r.text
        assert r.json() == {"index": "shop", "added": ["p6", "p7"], "count": 8}
        r = http.post("/indexes/shop/search", files={"image": ("q.jpg", image[6])},
                      data={"k": 1}, headers=AUTH)
        assert top(r) == ["p6"] and r.json()["results"][0]["metadata"]["image"] == "p6.jpg"
        item = http.get("/indexes/shop/items/p6", headers=AUTH).json()
        assert item == {"id": "p6", "title": TITLES[6],
                        "metadata": {"image": "p6.jpg", "brand": "sony", "price": 8.5}}
        err = error(http.post("/indexes/shop/items", headers=AUTH,
                              data={"items": json.dumps([{"id": "p7", "title": "again"}])}),
                    409, "duplicate_id")
        assert "p7" in err["message"]
        assert http.delete("/indexes/shop/items/p0", headers=AUTH).json() == {
            "index": "shop", "removed": "p0", "count": 7}
        error(http.delete("/indexes/shop/items/p0", headers=AUTH), 404, "item_not_found")
        error(http.get("/indexes/shop/items/p0", headers=AUTH), 404, "item_not_found")
        error(http.delete("/indexes/nope/items/p1", headers=AUTH), 404, "index_not_found")
        assert http.get("/indexes/shop", headers=AUTH).json()["pending_changes"] == 2

        # the schema and docs are served (and open); unknown routes are JSON 404s
        schema = http.get("/openapi.json").json()
        assert {"/indexes/{name}/search", "/indexes/{name}/search/batch",
                "/indexes/{name}/items", "/indexes/{name}/items/{item_id}"} <= set(schema["paths"])
        assert http.get("/docs").status_code == 200
        error(http.get("/nowhere", headers=AUTH), 404, "not_found")
        error(http.put("/health"), 405, "method_not_allowed")

        before = http.post("/indexes/shop/search", files={"image": ("q.jpg", image[5])},
                           data={"title": "cheese", "k": 5}, headers=AUTH).json()

    # the graceful stop compacted the journal; a new server sees every change
    assert (folders / "shop" / JOURNAL_FILE).read_bytes() == b""
    app = create_app({"shop": folders / "shop"}, api_key=KEY, limits=LIMITS)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=20) as http:
        assert http.get("/indexes/shop", headers=AUTH).json()["count"] == 7
        error(http.get("/indexes/shop/items/p0", headers=AUTH), 404, "item_not_found")
        assert http.get("/indexes/shop/items/p7", headers=AUTH).json()["title"] == TITLES[7]
        after = http.post("/indexes/shop/search", files={"image": ("q.jpg", image[5])},
                          data={"title": "cheese", "k": 5}, headers=AUTH).json()
        assert after == before


def test_concurrent_searches_are_batched(folders, products):
    index = SearchIndex.open(folders / "shop")
    calls = []
    search_batch = index.search_batch

    def slow_search_batch(images, titles, **kwargs):
        calls.append(len(titles))
        if len(calls) == 1:
            time.sleep(0.5)  # the others queue up meanwhile
        return search_batch(images, titles, **kwargs)

    index.search_batch = slow_search_batch
    app = create_app({"shop": index}, max_batch=32, max_wait_ms=20)

    async def clients(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            requests = [
                http.post("/indexes/shop/search", data={"title": TITLES[i % 6], "k": 1})
                if i % 2 else
                http.post("/indexes/shop/search", files={"image": ("q.jpg",
                                                                   products["image"][i % 6])},
                          data={"k": 1})
                for i in range(16)]
            return await asyncio.gather(*requests)

    with LiveServer(app) as live:
        responses = asyncio.run(clients(live.url))
    assert [top(r) for r in responses] == [[f"p{i % 6}"] for i in range(16)]
    assert sum(calls) == 16
    assert len(calls) <= 4 and max(calls) >= 8, calls
    assert sum(n * c for n, c in app.state.batch_sizes["shop"].items()) == 16
    index.close()


def test_an_idle_server_does_not_wait_to_batch(folders):
    index = SearchIndex.open(folders / "shop")
    app = create_app({"shop": index}, max_wait_ms=3000)  # a wait that would show
    with LiveServer(app) as live:
        for _ in range(2):  # one query at a time: each batch as large as the last (1)
            start = time.perf_counter()
            r = httpx.post(f"{live.url}/indexes/shop/search", data={"title": TITLES[0], "k": 1},
                           timeout=30)
            assert r.status_code == 200 and time.perf_counter() - start < 2.0
    assert app.state.batch_sizes["shop"] == {1: 2}
    index.close()


LAUNCHER = """
import sys
sys.path.insert(0, {tests!r})
import conftest
conftest.install_fake_encoders()
from mmmatch.cli import main
# through the command line, as a user starts it (the API key comes from the environment)
sys.exit(main(["serve", *sys.argv[2:], "--port", sys.argv[1], "--max-wait-ms", "1",
               "--log-level", "warning"]))
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(folder, tmp_path, log):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER.format(tests=str(TESTS)))
    port = _free_port()
    env = {**os.environ, "MMMATCH_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(port), f"shop={folder}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, Path(log.name).read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


def test_kill_9_loses_nothing_acknowledged(folders, products, tmp_path):
    folder = folders / "shop"
    with open(tmp_path / "server.log", "w") as log:
        proc, url = _start(folder, tmp_path, log)
        try:
            with httpx.Client(base_url=url, timeout=20) as http:
                error(http.get("/indexes"), 401, "unauthorized")  # MMMATCH_API_KEY is read
                for i in (6, 7):
                    r = http.post("/indexes/shop/items", headers=AUTH,
                                  files=[("files", (f"p{i}.jpg", products["image"][i]))],
                                  data={"items": json.dumps({"id": f"p{i}", "title": TITLES[i],
                                                             "image": f"p{i}.jpg"})})
                    assert r.status_code == 201, r.text
                assert http.delete("/indexes/shop/items/p1", headers=AUTH).status_code == 200
                before = http.post("/indexes/shop/search", headers=AUTH,
                                   files={"image": ("q.jpg", products["image"][7])},
                                   data={"title": TITLES[7]}).json()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert len((folder / JOURNAL_FILE).read_bytes().splitlines()) == 3  # not compacted

        proc, url = _start(folder, tmp_path, log)
        try:
            with httpx.Client(base_url=url, timeout=20) as http:
                assert http.get("/indexes/shop", headers=AUTH).json()["count"] == 7
                error(http.get("/indexes/shop/items/p1", headers=AUTH), 404, "item_not_found")
                after = http.post("/indexes/shop/search", headers=AUTH,
                                  files={"image": ("q.jpg", products["image"][7])},
                                  data={"title": TITLES[7]}).json()
                assert after == before and after["results"][0]["id"] == "p7"
        finally:
            proc.terminate()  # SIGTERM: a graceful stop compacts (uvicorn then re-raises it)
            assert proc.wait(20) in (0, -signal.SIGTERM)
    assert (folder / JOURNAL_FILE).read_bytes() == b""
    assert json.loads((folder / "manifest.json").read_text())["count"] == 7


# -- finer cases with the TestClient ------------------------------------------------------------


@pytest.fixture
def client(folders):
    app = create_app({"shop": folders / "shop", "books": folders / "books"}, limits=LIMITS)
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


def test_batch_search_positional_form(client, products):
    image = products["image"]
    r = client.post("/indexes/shop/search/batch", data={"titles": [TITLES[1], ""], "k": 1},
                    files=[("files", ("a.jpg", image[1])), ("files", ("b.jpg", image[4]))])
    assert [q["results"][0]["id"] for q in r.json()["queries"]] == ["p1", "p4"]
    r = client.post("/indexes/shop/search/batch", data={"titles": TITLES[:3], "k": 1})
    assert [q["results"][0]["id"] for q in r.json()["queries"]] == ["p0", "p1", "p2"]
    r = client.post("/indexes/shop/search/batch",
                    files=[("files", ("a.jpg", image[3])), ("files", ("a.jpg", image[3]))])
    assert [q["results"][0]["id"] for q in r.json()["queries"]] == ["p3", "p3"]
    error(client.post("/indexes/shop/search/batch", data={"titles": ["a", "b"]},
                      files=[("files", ("a.jpg", image[1]))]), 422, "invalid_request")
    error(client.post("/indexes/shop/search/batch", data={"titles": ["t"] * 9}), 422,
          "too_many_queries")
    error(client.post("/indexes/shop/search/batch", data={"k": 2}), 422, "empty_query")
    error(client.post("/indexes/shop/search/batch", data={"titles": ["tea", " "]}), 422,
          "empty_query")
    error(client.post("/indexes/shop/search/batch", data={"titles": ["tea"], "k": 0}), 422,
          "k_out_of_range")


def test_batch_search_queries_field_errors(client, products):
    files = [("files", ("a.jpg", products["image"][0]))]

    def batch(queries, **extra):
        return client.post("/indexes/shop/search/batch", files=files,
                           data={"queries": queries, **extra})

    error(batch("not json"), 422, "invalid_request")
    error(batch(json.dumps([1, 2])), 422, "invalid_request")
    error(batch(json.dumps([{"image": "zzz.jpg"}])), 422, "unknown_file")
    error(batch(json.dumps([{"picture": "a.jpg"}])), 422, "invalid_request")
    error(batch(json.dumps([{"title": 7}])), 422, "invalid_request")
    error(batch(json.dumps([{}])), 422, "empty_query")
    error(batch(json.dumps([{"title": "x"}] * 9)), 422, "too_many_queries")
    error(batch(json.dumps([{"title": "x"}]), titles=["y"]), 422, "invalid_request")
    dup = client.post("/indexes/shop/search/batch", files=files * 2,
                      data={"queries": json.dumps([{"image": "a.jpg"}])})
    error(dup, 422, "duplicate_file")
    error(client.post("/indexes/books/search/batch", files=files,
                      data={"queries": json.dumps([{"image": "a.jpg"}])}), 422,
          "images_not_supported")
    r = batch(json.dumps({"image": "a.jpg", "title": TITLES[0]}))  # one object is one query
    assert r.json()["queries"][0]["results"][0]["id"] == "p0"


def test_add_items_validation(client, products):
    def add(items, files=(), index="shop"):
        return client.post(f"/indexes/{index}/items", files=list(files),
                           data={"items": items if isinstance(items, str) else json.dumps(items)})

    photo = [("files", ("x.jpg", products["image"][6]))]
    error(add("{oops"), 422, "invalid_request")
    error(add([]), 422, "invalid_items")
    error(add([{"title": "no id"}]), 422, "invalid_items")
    error(add([{"id": True, "title": "bool id"}]), 422, "invalid_items")
    error(add([{"id": "n1"}]), 422, "invalid_items")  # neither title, text nor image
    error(add([{"id": "n1", "title": 5}]), 422, "invalid_items")
    error(add([{"id": "n1", "title": "x", "_id": "y"}]), 422, "invalid_items")
    error(add([{"id": "n1", "title": "x", "image": "nope.jpg"}], photo), 422, "unknown_file")
    error(add([{"id": f"n{i}", "title": "x"} for i in range(6)]), 422, "too_many_items")
    error(add([{"id": "n1", "title": "x"}, {"id": "n1", "title": "y"}]), 409, "duplicate_id")
    error(add([{"id": "p2", "title": "x"}]), 409, "duplicate_id")
    err = error(add([{"id": "n1", "title": "x", "image": "bad.jpg"}],
                    [("files", ("bad.jpg", b"GIF89a..."))]), 422, "unreadable_image")
    assert "bad.jpg" in err["message"] and err["field"] == "files"
    bomb = [("files", ("b.png", png((900, 900))))]
    error(add([{"id": "n1", "title": "x", "image": "b.png"}], bomb), 413, "image_too_large")
    error(add([{"id": "n1", "title": "x", "image": "x.jpg"}], photo, index="books"), 422,
          "images_not_supported")
    error(add([{"id": "n1", "title": "x"}], index="nope"), 404, "index_not_found")
    assert client.get("/indexes/shop").json()["count"] == 6  # nothing was added
    # ids of every kind, text and nested metadata
    r = add([{"id": 42, "title": "forty two", "text": "answer | towel", "tags": ["a", "b"],
              "in_stock": True}, {"id": "a/b c", "text": "only a text"}])
    assert r.status_code == 201 and r.json()["added"] == ["42", "a/b c"]
    item = client.get("/indexes/shop/items/42").json()
    # the other items' columns come back as null; object columns are stored as strings
    assert item["metadata"] == {"text": "answer | towel", "tags": '["a", "b"]',
                                "in_stock": "True", "brand": None, "image": None,
                                "price": None}
    assert client.get("/indexes/shop/items/a%2Fb%20c").json()["id"] == "a/b c"
    assert client.delete("/indexes/shop/items/a/b c").json()["removed"] == "a/b c"
    # metadata named like an image or a title is only metadata (the service never fetches)
    r = add([{"id": "u", "text": "some text", "photo": "http://127.0.0.1:9/x.jpg",
              "name": "not the title"}])
    assert r.status_code == 201, r.text
    item = client.get("/indexes/shop/items/u").json()
    assert item["title"] == "" and item["metadata"]["photo"] == "http://127.0.0.1:9/x.jpg"
    r = client.post("/indexes/shop/search",  # the fake text encoder hashes the whole text
                    data={"title": "forty two | answer | towel", "k": 1})
    assert top(r) == ["42"]


def test_malformed_requests_get_4xx_json(client):
    cases = [
        client.post("/indexes/shop/search", content=b"garbage",
                    headers={"content-type": "multipart/form-data; boundary=xyz"}),
        client.post("/indexes/shop/search", content=b"{}",
                    headers={"content-type": "application/json"}),
        client.post("/indexes/shop/search", data={"image": "not a file"}),
        client.post("/indexes/shop/items", data={}),
        client.post("/indexes/shop/items", data={"items": json.dumps([{"id": "q", "title": "t",
                                                                      "image": 3}])}),
        client.get("/indexes/shop/items/"),
        client.post("/indexes//search", data={"title": "x"}),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert set(r.json()["error"]) >= {"code", "message"}


def test_request_log_lines(client, caplog):
    with caplog.at_level(logging.INFO, logger="mmmatch.serve"):
        client.post("/indexes/shop/search", data={"title": "tea", "k": 2})
        client.get("/indexes/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "mmmatch.serve"]
    assert len(lines) == 2
    method, path, status, duration = lines[0].split()
    assert (method, path, status) == ("POST", "/indexes/shop/search", "200")
    assert duration.endswith("ms") and float(duration[:-2]) >= 0
    assert lines[1].startswith("GET /indexes/nope 404 ")


def test_openapi_documents_the_key_and_the_batch_forms(folders):
    app = create_app({"shop": folders / "shop"}, api_key=KEY)
    with TestClient(app) as c:
        schema = c.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    batch = schema["paths"]["/indexes/{name}/search/batch"]["post"]
    assert "paired by" in batch["description"] and "`queries`" in batch["description"]
    assert "413" in batch["responses"] and "422" in batch["responses"]
    assert "security" in schema["paths"]["/indexes"]["get"]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_resolve_indexes(folders, tmp_path):
    assert resolve_indexes([folders]) == {"books": folders / "books", "shop": folders / "shop"}
    assert resolve_indexes([folders / "shop", f"b={folders / 'books'}"]) == {
        "shop": folders / "shop", "b": folders / "books"}
    assert resolve_indexes([f"all={folders}"]) == {"all.books": folders / "books",
                                                    "all.shop": folders / "shop"}
    with pytest.raises(ValueError, match="given twice"):
        resolve_indexes([folders / "shop", f"shop={folders / 'books'}"])
    with pytest.raises(ValueError, match="index name"):
        resolve_indexes([f"a b={folders / 'shop'}"])
    with pytest.raises(FileNotFoundError, match="not an mmmatch search index"):
        resolve_indexes([tmp_path / "indexes" / "shop" / "vectors"])
    with pytest.raises(FileNotFoundError, match="no index folder"):
        resolve_indexes([tmp_path / "missing"])


def test_in_memory_index_and_text_only_limits(fake_encoders, products):
    index = SearchIndex.build(products.iloc[:3], Matcher(
        image_encoder="tiny-image", text_encoder="hash-text", cache_dir=False))
    with TestClient(create_app({"mem": index}, limits=LIMITS)) as c:
        info = c.get("/indexes/mem").json()
        assert info["persistent"] is False and info["count"] == 3
        long_title = "x" * (LIMITS.max_title_chars + 1)
        error(c.post("/indexes/mem/search", data={"title": long_title}), 422, "title_too_long")
        error(c.post("/indexes/mem/search", files={"image": ("e.jpg", b"")}), 422,
              "unreadable_image")
        r = c.post("/indexes/mem/items", data={"items": json.dumps([{"id": "z", "title": "z"}])})
        assert r.status_code == 201
    assert len(index) == 4  # served as given, not closed


class _FakeModel:
    """Stands in for a trained MatchModel: fake encoders, a 4-d learned embedding."""

    dim = 4
    reranker = None
    threshold = None

    def __init__(self):
        from mmmatch.model import MODEL_SCORE_WEIGHTS, MODEL_SEARCH_WEIGHTS

        self.score_weights, self.search_weights = MODEL_SCORE_WEIGHTS, MODEL_SEARCH_WEIGHTS

    def encoders(self, device=None, use_images=True, use_text=True):
        from mmmatch.encoders import get_encoder

        return (get_encoder("tiny-image", "image") if use_images else None,
                get_encoder("hash-text", "text") if use_text else None)

    def embed(self, image, image_ok, text, text_ok):
        out = np.concatenate([image[:, :2] * image_ok[:, None], text[:, :2]], axis=1) + 1e-3
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def embed_encoded(self, encoded):
        return self.embed(encoded.image, encoded.image_ok, encoded.text, encoded.text_ok)

    def save(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text(json.dumps({"kind": "mmmatch.MatchModel"}))
        return Path(path)


def test_a_model_folder_is_served_as_an_empty_index(fake_encoders, products, tmp_path,
                                                    monkeypatch):
    from mmmatch.model import MatchModel

    monkeypatch.setattr(MatchModel, "load", classmethod(lambda cls, path, device=None:
                                                          _FakeModel()))
    model_dir = _FakeModel().save(tmp_path / "model")
    assert resolve_indexes([model_dir]) == {"model": model_dir}
    for _ in range(2):  # created on the first start, reopened on the second
        with TestClient(create_app(resolve_indexes([model_dir]))) as c:
            info = c.get("/indexes/model").json()
            assert info["model"] is True and info["dim"] == 192 + 16 + 4
            if info["count"] == 0:
                r = c.post("/indexes/model/items", files=[("files", ("a.jpg",
                                                                     products["image"][0]))],
                           data={"items": json.dumps([{"id": "a", "title": TITLES[0],
                                                       "image": "a.jpg"}])})
                assert r.status_code == 201, r.text
            else:
                assert info["count"] == 1
            r = c.post("/indexes/model/search", files={"image": ("q.jpg", products["image"][0])})
            assert top(r) == ["a"] and r.json()["results"][0]["evidence"]["fused_sim"] > 0
    assert (model_dir / "index" / "manifest.json").exists()


def test_missing_extra_says_what_to_install(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "mmmatch.serve")
    with pytest.raises(ImportError, match=r'pip install "mmmatch\[serve\]"'):
        importlib.import_module("mmmatch.serve")


def test_a_failing_search_does_not_fail_its_batch(fake_encoders, products):
    index = SearchIndex.build(products.iloc[:4], Matcher(
        image_encoder="tiny-image", text_encoder="hash-text", cache_dir=False))
    search_batch = index.search_batch

    def flaky(images, titles, **kwargs):
        if "boom" in titles:
            raise RuntimeError("a bug")
        return search_batch(images, titles, **kwargs)

    index.search_batch = flaky
    app = create_app({"mem": index}, max_wait_ms=200)

    async def clients():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(*[
                http.post("/indexes/mem/search", data={"title": title, "k": 1})
                for title in (TITLES[0], "boom", TITLES[1])])

    first, boom, second = asyncio.run(clients())
    assert top(first) == ["p0"] and top(second) == ["p1"]
    error(boom, 500, "internal")
    assert app.state.batch_sizes["mem"] == {3: 1, 1: 3}  # one batch, then one by one


def test_batcher_runs_calls_on_the_search_thread_and_counts_busy_time(client):
    import threading

    batcher = client.app.state.batchers["shop"]
    before = batcher.busy_s
    assert client.post("/indexes/shop/search", data={"title": TITLES[0]}).status_code == 200
    assert batcher.busy_s > before
    searched_on = batcher.submit(lambda: threading.current_thread().name).result(timeout=10)
    assert searched_on.startswith("mmmatch-search-shop")
