"""Schema fuzz of the HTTP search service: schemathesis against a live ``mmmatch serve``.

* **Data**: a small real index built here with the DEFAULT packaged encoders
  (EfficientNet-Lite0 + all-MiniLM-L6-v2; about 5 s on 2 CPU cores): ``shop`` (photos +
  titles, retailer A of :func:`mmmatch.demo.make_demo_catalogues`) and ``books`` (titles only,
  retailer B), so both the photo paths and ``images_not_supported`` are reachable.
  ``--data-dir`` is accepted for the common interface, but nothing is read from it.
* **Server**: :func:`mmmatch.serve.serve` (uvicorn) in a subprocess on 127.0.0.1, a free
  port, an API key and small :class:`~mmmatch.serve.ServeLimits` (so the 413 / 422 limits
  are reachable with small requests); its log is kept, and the lines it wrote during a
  request that got a 5xx go into the failure record.
* **Fuzz**: the schema is fetched with ``schemathesis.openapi.from_url`` from
  ``/openapi.json`` (optional uploads unwrapped from FastAPI's ``anyOf [file, null]``, see
  :func:`load_schema`); every operation is fuzzed with ``operation.as_strategy()``, half its
  ``--examples`` in the negative generation mode (where schemathesis can make any: a path
  parameter that takes any string has none) and the rest positive, each case sent with
  ``case.call()`` over real HTTP. After the adds, reads and removals, the two searches run
  again (a quarter of ``--examples``) over the items the fuzz added. Random path names
  would almost never hit an index and random bytes never decode as a photo, so most
  positive cases are steered: the index name from the served ones, the item id from the
  ids known to exist (those added by the fuzz too), photos from a pool of real and broken
  images (demo JPEGs, CMYK, 16-bit, palette, animated GIF, float TIFF, a 2 x 400 strip,
  truncated, empty, over the pixel / byte limits...), and the ``items`` / ``queries`` JSON
  fields from strategies that write rows of the documented shape with fuzzed values
  (metadata keys included, some of them named like result columns: ``score``, ``rank``,
  ``query``...). Values come from hypothesis (``--seed``), so a run is repeatable.
* **Second pass** without the API key (half the cases with a wrong one): every protected
  operation must answer 401, ``/health`` 200, never a 5xx.
* **Checks** on every response: no 5xx (each one is printed and written, with its request,
  to ``OUT.failures.json`` beside ``--out``), the error shape ``{"error": {"code": str,
  "message": str}}`` of every 4xx, and schemathesis' conformance checks (status code,
  content type, response schema, headers) counted per check. After the run the server is
  stopped (SIGINT: the journals are compacted) and the index folders reopened: their item
  counts must be those the server last reported.

    python benchmarks/serve_fuzz.py --data-dir ../shared/datasets \\
        --out benchmarks/results/serve_fuzz.json
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import base64
import io
import json
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests
import schemathesis
from _common import parser, write
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import (
    Failure,
    FailureGroup,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.file_samples import file_extension

ENCODERS = "efficientnet-lite0 + minilm-l6 (the packaged defaults)"
API_KEY = "fuzz-s3cret"
MAX_RECORDS = 100  # failures and violations written out in full (all are counted)
LIMITS = {"max_request_bytes": 400_000, "max_image_bytes": 150_000, "max_image_pixels": 250_000,
          "max_k": 50, "max_batch_queries": 8, "max_items_per_request": 5,
          "max_title_chars": 300}
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
# the names schemathesis gives uploaded parts: the form field, plus the extension it sniffs
FILENAMES = ["files.jpg", "files.png", "files.gif", "files.webp", "files", "image.jpg", "a.jpg",
             ""]

LAUNCHER = """
import json, sys
import torch
torch.set_num_threads(1)
from mmmatch.serve import ServeLimits, serve
spec = json.loads(sys.argv[1])
serve(spec["indexes"], port=spec["port"], api_key=spec["api_key"], max_wait_ms=2.0,
      limits=ServeLimits(**spec["limits"]), log_level="warning")
"""


# -- data -------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo_pool(images: list[Path]) -> dict[str, bytes]:
    """Real, odd and broken image files to upload, by a name saying what each is."""
    pool = {f"demo{i}": p.read_bytes() for i, p in enumerate(images[:6])}
    img = Image.open(images[0]).convert("RGB")
    small = img.resize((64, 64))
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    gif = [small, small.rotate(90), small.rotate(180)]
    pool |= {
        "png_rgba": _encode(img.convert("RGBA"), "PNG"),
        "png_la": _encode(small.convert("LA"), "PNG"),
        "png_1bit": _encode(small.convert("1"), "PNG"),
        "png_palette_transparent": _encode(small.convert("P"), "PNG", transparency=0),
        "png_16bit": _encode(Image.fromarray(
            rng.integers(0, 65535, (48, 64), dtype=np.uint16)), "PNG"),
        "jpeg_cmyk": _encode(small.convert("CMYK"), "JPEG"),
        "jpeg_grey_progressive": _encode(small.convert("L"), "JPEG", progressive=True),
        "webp": _encode(small, "WEBP"),
        "gif_animated": _encode(gif[0], "GIF", save_all=True, append_images=gif[1:]),
        "bmp": _encode(small, "BMP"),
        "tiff_float": _encode(small.convert("F"), "TIFF"),
        "ico": _encode(small, "ICO"),
        "one_pixel": _encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
        "thin_2x400": _encode(Image.new("RGB", (2, 400), (0, 90, 0)), "PNG"),
        "over_pixel_limit": _encode(Image.new("RGB", (1000, 1000)), "PNG"),
        "over_byte_limit": _encode(noise, "PNG"),  # ~270 KB of noise
        "truncated_jpeg": pool["demo0"][: len(pool["demo0"]) // 2],
        "jpeg_header_only": pool["demo0"][:300],
        "garbage": rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "text": b"not an image at all",
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        "empty": b"",
    }
    # a PNG whose header claims 60000 x 60000 (refused from the header, before decoding)
    png = bytearray(pool["one_pixel"])
    png[16:24] = (60000).to_bytes(4, "big") * 2
    pool["png_huge_header"] = bytes(png)
    return pool


@dataclass
class Served:
    """The index folders, their ids and the photos and titles to fuzz with."""

    folders: dict[str, Path]
    ids: dict[str, set[str]]
    photos: dict[str, bytes]
    titles: list[str]


def build_indexes(root: Path, n_products: int) -> Served:
    """``shop`` (photos + titles) and ``books`` (titles only) with the default encoders."""
    from mmmatch.demo import make_demo_catalogues
    from mmmatch.pipeline import Matcher
    from mmmatch.search import SearchIndex

    demo = make_demo_catalogues(root / "demo", n_products=n_products)
    left = pd.read_csv(demo.left)
    left["image"] = [str(demo.folder / p) for p in left["image"]]
    right = pd.read_csv(demo.right).rename(columns={"sku": "id", "name": "title"})
    right = right.drop(columns=["image"])
    folders = {"shop": root / "indexes" / "shop", "books": root / "indexes" / "books"}
    SearchIndex.build(left, Matcher(cache_dir=False)).save(folders["shop"])
    SearchIndex.build(right, Matcher(image_encoder=None, cache_dir=False)).save(
        folders["books"])
    images = sorted((demo.folder / "images").glob("*.jpg"))
    return Served(folders, {"shop": set(left["id"].astype(str)),
                            "books": set(right["id"].astype(str))},
                  photo_pool(images), [*left["title"], *right["title"]])


# -- the server ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folders: dict[str, Path], log: Path, timeout: float = 180.0
                 ) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    spec = {"indexes": {k: str(v) for k, v in folders.items()}, "port": port,
            "api_key": API_KEY, "limits": LIMITS}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(spec)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> int | None:
    """SIGINT (uvicorn shuts down gracefully, the lifespan compacts the journals)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None
    return proc.returncode


# -- steering -------------------------------------------------------------------------------------
# Values come from hypothesis (which favours edge cases: 0, empty, boundaries); the choices of
# what to steer come from a ``random.Random`` ("dice") seeded by a hypothesis draw and the
# generated case: hypothesis would push those choices towards the first option too.

_JSON_LEAF = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
              | st.text(max_size=30))
JSON_VALUE = st.recursive(_JSON_LEAF, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                          max_leaves=8)
FRESH_ID = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,15}\Z") | st.text(min_size=1,
                                                                          max_size=12)
METADATA_KEYS = ["price", "brand", "tags", "size"]
# metadata keys that are also names of search result columns, roles or response fields
TRICKY_KEYS = ["score", "rank", "query", "image_sim", "text_sim", "word_sim", "fused_sim",
               "evidence", "metadata", "source", "label", "Title", "ID", "id ", "index"]
ODD_TEXTS = ["", " ", "\t\n", "\x00", "é" * 10, "🥛 oat drink", "a" * 301, " " * 400 + "x",
             "%00", "../../etc/passwd", "null"]


def text_values(titles: list[str]) -> st.SearchStrategy[str]:
    """Titles as a user would type them, and odd ones."""
    return st.sampled_from(titles) | st.text(max_size=40) | st.sampled_from(ODD_TEXTS)


def id_values(known: list[str]) -> st.SearchStrategy[Any]:
    """Item ids: known ones, new ones and odd ones."""
    return st.one_of(
        st.sampled_from(known) if known else st.nothing(),
        FRESH_ID,
        st.integers(-5, 10**20),
        # (no "." or "..": the HTTP client resolves them away before sending)
        st.sampled_from(["", " ", "a/b", "%2F", "x" * 300, "é", "\x00", "0", "?a=1", "#x",
                         "a b"]),
        _JSON_LEAF,
    )


def item_rows(d: Any, dice: random.Random, known: list[str], titles: list[str],
              files: list[str]) -> str:
    """An ``items`` field: JSON rows of the documented shape; in half the requests all valid,
    in the others each row valid or not by chance (a single bad row fails the request)."""
    rows: list[Any] = []
    all_valid = dice.random() < 0.5
    for _ in range(dice.choice([1, 1, 1, 1, 2, 2, 3, 5, LIMITS["max_items_per_request"] + 1,
                                0])):
        row: dict[str, Any] = {}
        if all_valid or dice.random() < 0.5:  # a row that should be accepted
            row["id"] = d(FRESH_ID)
            if dice.random() < 0.85:  # hypothesis likes short ids: "0", "A"... taken by now
                row["id"] += f"-{dice.randrange(10**6)}"
            row["title"] = d(st.sampled_from(titles) | st.text(min_size=1, max_size=40))
            if dice.random() < 0.3:
                row["text"] = d(st.sampled_from(titles))
            if files and dice.random() < 0.6:
                row["image"] = dice.choice(files)
            if dice.random() < 0.5:
                keys = METADATA_KEYS if dice.random() < 0.7 else TRICKY_KEYS
                row |= d(st.dictionaries(st.sampled_from(keys), JSON_VALUE, min_size=1,
                                         max_size=2))
            rows.append(row)
            continue
        if dice.random() < 0.9:
            row["id"] = d(id_values(known))
        if dice.random() < 0.5:
            row["title"] = d(text_values(titles) | _JSON_LEAF)
        if dice.random() < 0.25:
            row["text"] = d(text_values(titles) | _JSON_LEAF)
        if dice.random() < 0.3:
            row["image"] = dice.choice(files) if files and dice.random() < 0.5 else \
                d(st.sampled_from(FILENAMES) | _JSON_LEAF)
        if dice.random() < 0.5:
            row |= d(st.dictionaries(st.text(max_size=10) | st.sampled_from(
                [*TRICKY_KEYS, "_reserved", "__upload__"]), JSON_VALUE, max_size=3))
        rows.append(row)
    shape = dice.random()
    value: Any = rows if shape < 0.8 else (rows[0] if rows and shape < 0.9 else d(JSON_VALUE))
    text = json.dumps(value)
    return text[:-1] if dice.random() < 0.03 else text  # now and then broken JSON


def batch_queries(d: Any, dice: random.Random, titles: list[str], files: list[str]) -> str:
    """A ``queries`` field: JSON queries (title / image filename), mostly valid."""
    queries = []
    for _ in range(dice.choice([1, 1, 2, 3, 4, LIMITS["max_batch_queries"] + 1, 0])):
        q: dict[str, Any] = {}
        valid = dice.random() < 0.7
        if dice.random() < 0.6 or (valid and not files):
            q["title"] = d(st.sampled_from(titles)) if valid else d(text_values(titles)
                                                                    | _JSON_LEAF)
        if files and (dice.random() < 0.6 or "title" not in q):
            q["image"] = dice.choice(files)
        if not valid and dice.random() < 0.5:
            q["image"] = d(st.sampled_from(FILENAMES) | _JSON_LEAF)
        if not valid and dice.random() < 0.2:
            q[d(st.text(max_size=6))] = d(_JSON_LEAF)
        queries.append(q)
    return json.dumps(queries if dice.random() < 0.9 else d(JSON_VALUE))


def part_name(field: str, data: bytes) -> str:
    """The filename schemathesis gives an uploaded part (the field, and a sniffed extension)."""
    extension = file_extension(data)
    return f"{field}.{extension}" if extension else field


# -- the fuzz loop ------------------------------------------------------------------------------


def _slug(label: str) -> str:
    method, path = label.split(" ", 1)
    return method.lower() + "_" + "_".join(p for p in re.split(r"[^a-z0-9]+", path.lower()) if p)


def _request_record(response: requests.Response | None, case: Any) -> dict[str, Any]:
    """The request as sent (method, URL, headers, body in base64), to replay it exactly."""
    if response is None or response.request is None:
        return {"method": case.method, "path": case.formatted_path,
                "body": repr(case.body)[:4000]}
    req = response.request
    body = req.body if isinstance(req.body, bytes | type(None)) else str(req.body).encode()
    return {"method": req.method, "url": req.url, "headers": dict(req.headers),
            "body_bytes": len(body or b""),
            "body_base64": base64.b64encode((body or b"")[:300_000]).decode(),
            "body_preview": (body or b"")[:1500].decode("latin-1")}


def _error_shape_ok(response: Any) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return (isinstance(body, dict) and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("code"), str)
            and isinstance(body["error"].get("message"), str))


@dataclass
class Tally:
    """What was sent and what came back."""

    requests: int = 0
    classes: Counter = field(default_factory=Counter)  # "2xx" ... "5xx"
    per_op: Counter = field(default_factory=Counter)  # (slug, class or "requests"), keyed
    statuses: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)  # (slug, error code), keyed
    checks: Counter = field(default_factory=Counter)  # check failure -> count
    shape_violations: int = 0
    transport_errors: int = 0
    skipped: int = 0  # examples not sent: the time budget of their operation ran out
    unsendable: Counter = field(default_factory=Counter)  # client-side errors, not sent
    nokey_unexpected: int = 0
    failures: list[dict] = field(default_factory=list)  # 5xx and transport errors
    signatures: Counter = field(default_factory=Counter)  # operation + exception -> count
    added: list[dict] = field(default_factory=list)  # the items fields of accepted adds
    violations: list[dict] = field(default_factory=list)  # 4xx bodies of the wrong shape
    check_examples: dict[str, dict] = field(default_factory=dict)  # one per check failure


class Fuzzer:
    def __init__(self, url: str, proc: subprocess.Popen, served: Served, log: Path,
                 tally: Tally) -> None:
        self.url = url
        self.proc = proc
        self.served = served
        self.log = log
        self.tally = tally
        self.session = requests.Session()
        self.ids = {name: sorted(ids) for name, ids in served.ids.items()}
        self.photo_names = sorted(served.photos)

    def _log_offset(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def _steer(self, case: Any, data: Any, dice: random.Random, mode: GenerationMode) -> None:
        """Point a generated case at the served indexes and real payloads (most of the time)."""
        d = data.draw
        params = case.path_parameters
        if params is not None and "name" in params and dice.random() < 0.9:
            params["name"] = dice.choice(["shop", "shop", "books"])
        if params is not None and "item_id" in params and dice.random() < 0.8:
            known = self.ids.get(params.get("name"), []) or self.ids["shop"]
            params["item_id"] = str(dice.choice(known) if known and dice.random() < 0.6
                                    else d(id_values(known)))
        if mode is GenerationMode.NEGATIVE or case.operation.method.upper() != "POST" \
                or dice.random() < 0.15:
            return  # negative and some positive cases go as schemathesis made them
        if not isinstance(case.body, dict):  # an optional body may have been left out
            case.body = {}
            case.media_type = "multipart/form-data"
        body = case.body
        titles = self.served.titles

        def photos(n: int) -> list[bytes]:
            real = [name for name in self.photo_names if name.startswith("demo")]
            return [self.served.photos[dice.choice(real if dice.random() < 0.6
                                                   else self.photo_names)]
                    for _ in range(n)]

        def k() -> int:
            return dice.choice([1, 3, 10]) if dice.random() < 0.7 else \
                d(st.integers(-2, LIMITS["max_k"] + 3))

        path = case.operation.path
        if path.endswith("/search"):
            body.clear()
            query = dice.choice(["image", "title", "both", "both", "neither"])
            if query in ("image", "both"):
                body["image"] = photos(1)[0]
            if query in ("title", "both"):
                body["title"] = d(st.sampled_from(titles)) if dice.random() < 0.6 \
                    else d(text_values(titles))
            if dice.random() < 0.8:
                body["k"] = k()
        elif path.endswith("/search/batch"):
            body.clear()
            if dice.random() < 0.6:
                body["files"] = photos(dice.choice([1, 1, 2, 3]))
            names = sorted({part_name("files", f) for f in body.get("files", [])})
            if dice.random() < 0.5:
                body["queries"] = batch_queries(d, dice, titles, names)
                if dice.random() < 0.05:
                    body["titles"] = d(st.lists(text_values(titles), max_size=2))
            elif dice.random() < 0.8 or not body.get("files"):
                n = len(body.get("files", [])) or dice.choice([1, 2, 4])
                if dice.random() < 0.1:  # not as many titles as files
                    n += dice.choice([-1, 1])
                body["titles"] = [d(st.sampled_from(titles)) if dice.random() < 0.7
                                  else d(text_values(titles)) for _ in range(max(0, n))]
            if dice.random() < 0.8:
                body["k"] = k()
        elif path.endswith("/items"):
            body.clear()
            known = [i for ids in self.ids.values() for i in ids]
            if dice.random() < (0.6 if (params or {}).get("name") != "books" else 0.1):
                body["files"] = photos(dice.choice([1, 1, 2]))
            names = sorted({part_name("files", f) for f in body.get("files", [])})
            body["items"] = item_rows(d, dice, known, titles, names)

    def _record(self, label: str, mode: str, keyed: bool, case: Any, response: Any,
                offset: int) -> None:
        t = self.tally
        slug = _slug(label)
        status = response.status_code
        klass = f"{status // 100}xx"
        t.classes[klass] += 1
        t.statuses[status] += 1
        if keyed:
            t.per_op[(slug, klass)] += 1
        if status >= 500:
            self._failure(label, mode, keyed, case, response, offset, f"HTTP {status}")
        elif 400 <= status < 500 and not _error_shape_ok(response):
            t.shape_violations += 1
            if len(t.violations) < MAX_RECORDS:
                t.violations.append({"operation": label, "mode": mode, "status": status,
                                     "response": response.text[:2000],
                                     "request": _request_record(response, case)})
        if keyed and status >= 400 and _error_shape_ok(response):
            t.error_codes[(slug, response.json()["error"]["code"])] += 1
        if not keyed:
            expected = 200 if label == "GET /health" else 401
            if status != expected:
                t.nokey_unexpected += 1
                print(f"without the key: {label} answered {status}, not {expected}",
                      flush=True)
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as e:
            for failure in getattr(e, "exceptions", [e]):
                name = type(failure).__name__
                t.checks[name] += 1
                t.check_examples.setdefault(f"{label} {name}", {
                    "operation": label, "status": status, "check": name,
                    "message": str(getattr(failure, "title", "")) + ": " + str(failure)[:1500],
                    "request": _request_record(response, case)})
        self._learn(case, response)

    def _learn(self, case: Any, response: Any) -> None:
        """Keep the known ids up to date (items added or removed by the fuzz)."""
        name = (case.path_parameters or {}).get("name")
        if name not in self.ids:
            return
        if case.method.upper() == "POST" and response.status_code == 201:
            self.ids[name] = sorted(set(self.ids[name]) | set(response.json()["added"]))
            if len(self.tally.added) < MAX_RECORDS:  # state a later failure may depend on
                self.tally.added.append({"index": name,
                                         "items": str(case.body.get("items"))[:3000]})
        elif case.method.upper() == "DELETE" and response.status_code == 200:
            self.ids[name] = [i for i in self.ids[name] if i != response.json()["removed"]]

    def _failure(self, label: str, mode: str, keyed: bool, case: Any, response: Any,
                 offset: int, what: str) -> None:
        time.sleep(0.2)  # let the server flush its log line
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                server_log = f.read(20_000).decode(errors="replace")
        except OSError:
            server_log = ""
        errors = re.findall(r"^(\w+(?:Error|Exception)\b.*)$", server_log, re.MULTILINE)
        signature = f"{label}: {what}: {errors[-1][:200] if errors else 'no traceback'}"
        t = self.tally
        t.signatures[signature] += 1
        if len(t.failures) >= MAX_RECORDS:
            return
        record = {"operation": label, "mode": mode, "api_key": keyed, "what": what,
                  "signature": signature,
                  "response": None if response is None else response.text[:4000],
                  "request": _request_record(response, case), "server_log": server_log}
        t.failures.append(record)
        if t.signatures[signature] <= 2:  # print the first two of each kind
            print(f"FAILURE {what}: {label} ({mode})\n  request: "
                  f"{json.dumps(record['request'])[:1500]}\n  response: {record['response']}"
                  f"\n  server log: {server_log[-3000:]}", flush=True)

    def run(self, operation: Any, mode: GenerationMode, examples: int, budget_s: float,
            keyed: bool, seed_value: int) -> None:
        label = operation.label
        slug = _slug(label)
        t = self.tally
        stop_at = time.monotonic() + budget_s

        @seed(seed_value)
        @settings(max_examples=examples, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                  print_blob=False)
        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        def fuzz(case: Any, data: Any) -> None:
            if time.monotonic() > stop_at or self.proc.poll() is not None:
                t.skipped += 1
                return
            # seeded by what hypothesis drew (the same draws, the same choices: no flakiness);
            # the case itself is in the seed as hypothesis repeats edge-case integers a lot
            generated = re.sub(r" at 0x[0-9a-f]+", "",  # no addresses: repeatable runs
                               f"{case.method} {case.path_parameters!r} {case.body!r:.5000}")
            dice = random.Random(f"{data.draw(st.integers(0, 2**32 - 1))} {generated}")
            if keyed:
                self._steer(case, data, dice, mode)
                headers = {"X-API-Key": API_KEY}
            else:  # no key, or a wrong one
                headers = {} if dice.random() < 0.5 else {"X-API-Key": f"wrong-{dice.random()}"}
            offset = self._log_offset()
            try:
                response = case.call(base_url=self.url, session=self.session, headers=headers,
                                     timeout=60)
            except requests.RequestException as e:  # sent, but no answer
                t.requests += 1
                t.transport_errors += 1
                self._failure(label, mode.value, keyed, case, None, offset,
                              f"transport error: {type(e).__name__}: {e}")
                return
            except Exception as e:  # the client could not build the request: not sent
                t.unsendable[type(e).__name__] += 1
                return
            t.requests += 1
            if keyed:
                t.per_op[(slug, "requests")] += 1
            self._record(label, mode.value, keyed, case, response, offset)

        try:
            fuzz()
        except Exception as e:  # e.g. no negative case for a parameter that takes any string
            print(f"{label} ({mode.value}): stopped: {type(e).__name__}: "
                  f"{' '.join(str(e).split())[:160]}", flush=True)


def load_schema(url: str, security: bool) -> Any:
    """The service's schema, fetched from ``/openapi.json``, as schemathesis sees it.

    FastAPI documents an optional upload as ``anyOf: [{file}, {type: null}]`` (a list of
    them likewise); schemathesis 4 sends a file part with a filename only for a bare
    ``contentMediaType: application/octet-stream`` property, and a part without a filename
    is a plain form field to the server (which then always answers 422). So the null branch
    of those unions is dropped: uploads are sent as files, and an absent upload is left out.

    Args:
        url: the server.
        security: whether negative cases may leave out or corrupt the API key (off for the
            pass with the key, so that its negative cases fuzz the parameters and bodies).
    """
    raw = schemathesis.openapi.from_url(f"{url}/openapi.json").raw_schema

    def is_file(s: Any) -> bool:
        return isinstance(s, dict) and (
            s.get("contentMediaType") == "application/octet-stream"
            or s.get("format") == "binary" or is_file(s.get("items")))

    for body in raw.get("components", {}).get("schemas", {}).values():
        for name, prop in list(body.get("properties", {}).items()):
            branches = prop.get("anyOf", [])
            files = [b for b in branches if is_file(b)]
            if files and all(b in files or b.get("type") == "null" for b in branches):
                rest = {k: v for k, v in prop.items() if k != "anyOf"}
                body["properties"][name] = {**files[0], **rest}
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=url)
    schema.config.generation.update(with_security_parameters=security)
    return schema


class ServerDied(RuntimeError):
    """The server process exited during the fuzz."""


def fuzz_pass(fuzzer: Fuzzer, schema: Any, examples: int, budget_s: float, keyed: bool,
              seed_value: int, proc: subprocess.Popen) -> None:
    """Every operation in the schema's order, half its examples negative (where any can be
    generated) and the rest positive; then, with the key, the searches once more (a quarter
    of the examples, positive) against the items the fuzz has added and removed."""
    operations = [r.ok() for r in schema.get_all_operations()]
    plan = [(op, examples // 2, examples) for op in operations]
    if keyed:
        plan += [(op, 0, examples // 4) for op in operations
                 if op.method.upper() == "POST" and "/search" in op.path]
    end = time.monotonic() + budget_s
    for i, (op, n_negative, n) in enumerate(plan):
        share = max(0.0, end - time.monotonic()) / (len(plan) - i)
        start = time.perf_counter()
        before = fuzzer.tally.requests
        if n_negative:
            fuzzer.run(op, GenerationMode.NEGATIVE, n_negative, share / 2, keyed,
                       seed_value + 2 * i)
        negative = fuzzer.tally.requests - before
        fuzzer.run(op, GenerationMode.POSITIVE, n - negative,
                   share - (time.perf_counter() - start), keyed, seed_value + 2 * i + 1)
        print(f"{'key' if keyed else 'no key'} {op.label}: {negative} negative + "
              f"{fuzzer.tally.requests - before - negative} positive requests, "
              f"{time.perf_counter() - start:.1f}s; so far {dict(fuzzer.tally.classes)}",
              flush=True)
        if proc.poll() is not None:
            raise ServerDied(f"exit status {proc.returncode} during {op.label}")


def final_counts(url: str) -> dict[str, int]:
    r = requests.get(f"{url}/indexes", headers={"X-API-Key": API_KEY}, timeout=30)
    return {i["name"]: i["count"] for i in r.json()["indexes"]}


def main() -> None:
    p = parser("serve_fuzz", __doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=200,
                   help="examples per operation (half positive, half negative)")
    p.add_argument("--nokey-examples", type=int, default=20,
                   help="examples per operation without the API key")
    p.add_argument("--time-limit", type=float, default=240.0,
                   help="seconds for both passes; examples past an operation's share are "
                   "skipped")
    p.add_argument("--products", type=int, default=24, help="items per generated index")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    sidecar = out.with_name(out.stem + ".failures.json")
    sidecar.unlink(missing_ok=True)
    # the JSON holds numbers only (plus commit and machine): say the rest here
    print(f"encoders: {ENCODERS}; schemathesis {schemathesis.SCHEMATHESIS_VERSION}",
          flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        served = build_indexes(root, args.products)
        log = root / "server.log"
        proc, url = start_server(served.folders, log)
        results["fuzz.setup_seconds"] = time.perf_counter() - start
        tally = Tally()
        died, counts, keyed_requests = "", {}, None
        start = time.perf_counter()
        try:
            keyed_schema = load_schema(url, security=False)
            schema = load_schema(url, security=True)
            n_ops = len(list(keyed_schema.get_all_operations()))
            fuzzer = Fuzzer(url, proc, served, log, tally)
            start = time.perf_counter()
            fuzz_pass(fuzzer, keyed_schema, args.examples, args.time_limit * 0.85, True,
                      args.seed, proc)
            keyed_requests = tally.requests
            fuzz_pass(fuzzer, schema, args.nokey_examples,
                      max(10.0, args.time_limit - (time.perf_counter() - start)), False,
                      args.seed + 1000, proc)
            counts = final_counts(url)
        except ServerDied as e:
            died = str(e)
            print(f"SERVER DIED: {died}", flush=True)
        finally:
            seconds = time.perf_counter() - start
            exit_code = stop_server(proc)
        from mmmatch.search import SearchIndex

        try:  # what a restart would serve
            reopened = {name: len(SearchIndex.load(folder))
                        for name, folder in served.folders.items()}
        except Exception as e:
            print(f"the index folders do not reopen: {type(e).__name__}: {e}")
            reopened = {}
        server_log = log.read_text(errors="replace")
    keyed_requests = tally.requests if keyed_requests is None else keyed_requests
    results |= {
        "fuzz.requests": tally.requests,
        "fuzz.5xx": tally.classes["5xx"],
        "fuzz.4xx": tally.classes["4xx"],
        "fuzz.2xx": tally.classes["2xx"],
        "fuzz.3xx": tally.classes["3xx"],
        "fuzz.transport_errors": tally.transport_errors,
        "fuzz.5xx_kinds": len(tally.signatures),
        "fuzz.operations": n_ops,
        "fuzz.error_shape_violations": tally.shape_violations,
        "fuzz.seconds": seconds,
        "fuzz.examples_per_operation": args.examples,
        "fuzz.skipped_examples": tally.skipped,
        "fuzz.unsendable_examples": sum(tally.unsendable.values()),
        "fuzz.keyed.requests": keyed_requests,
        "fuzz.nokey.requests": tally.requests - keyed_requests,
        "fuzz.nokey.unexpected_status": tally.nokey_unexpected,
        "fuzz.server_died": float(bool(died)),
        "fuzz.server_exit_code": -1 if exit_code is None else exit_code,
        "fuzz.reopened_counts_match": float(reopened == counts),
    }
    results |= {f"fuzz.status.{s}": n for s, n in sorted(tally.statuses.items())}
    results |= {f"fuzz.check.{name}": n for name, n in sorted(tally.checks.items())}
    results |= {f"fuzz.op.{slug}.{what}": n for (slug, what), n in sorted(tally.per_op.items())}
    results |= {f"fuzz.op.{slug}.error.{code}": n
                for (slug, code), n in sorted(tally.error_codes.items())}
    if tally.failures or tally.violations or died:
        sidecar.write_text(json.dumps({"server_died": died,
                                       "kinds": dict(tally.signatures.most_common()),
                                       "failures": tally.failures,
                                       "error_shape_violations": tally.violations,
                                       "check_failures": list(tally.check_examples.values()),
                                       "items_added_before": tally.added,
                                       "server_log_tail": server_log[-20_000:]},
                                      indent=2) + "\n")
        print(f"{len(tally.failures)} failures, {len(tally.violations)} error-shape "
              f"violations: see {sidecar}", flush=True)
    for signature, n in tally.signatures.most_common():
        print(f"5xx / no answer, {n}x: {signature}")
    for key, example in tally.check_examples.items():
        message = " ".join(example["message"].split())
        print(f"schemathesis check failed: {key} ({example['status']}): {message[:300]}")
    if reopened != counts:
        print(f"the reopened indexes hold {reopened}, the server last reported {counts}")
    write(results, out)


if __name__ == "__main__":
    main()
