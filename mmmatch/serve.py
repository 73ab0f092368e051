"""An HTTP search service over one or more :class:`~mmmatch.search.SearchIndex` folders.

``mmmatch serve my-index/ --port 8000`` (or :func:`serve`) runs :func:`create_app` with
uvicorn. Needs the ``serve`` extra: ``pip install "mmmatch[serve]"``.

Endpoints (every error is ``{"error": {"code": ..., "message": ..., "field": ...}}``):

* ``GET /health``: liveness, never behind the API key.
* ``GET /indexes``, ``GET /indexes/{name}``: name, item count, encoders, has_images.
* ``POST /indexes/{name}/search``: one photo and / or title (multipart) -> the top ``k``.
* ``POST /indexes/{name}/search/batch``: many queries in one request.
* ``POST /indexes/{name}/items``, ``GET`` / ``DELETE /indexes/{name}/items/{id}``:
  add items (with photos), read or remove one; changes are journaled and fsync'd before the
  response (see :mod:`mmmatch.search`), so they survive a crash and a restart.
* ``/openapi.json`` and ``/docs``: the schema and its interactive page.

Concurrent searches of one index are micro-batched: a batch gathers the requests queued
while the previous one ran, then waits at most ``max_wait_ms`` until it has as many as the
previous batch had (steady load: full batches; an idle server: no wait), then one
:meth:`~mmmatch.search.SearchIndex.search_batch` call embeds and searches them all in a
worker thread, so the encoders see batches instead of single images.

Example:
    >>> from mmmatch.serve import create_app  # doctest: +SKIP
    >>> app = create_app({"groceries": "indexes/groceries"}, api_key="s3cret")  # doctest: +SKIP
    >>> # uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd

from mmmatch.compare import EVIDENCE_COLUMNS
from mmmatch.exceptions import (
    CatalogueError,
    DuplicateIdError,
    ImageError,
    ItemNotFoundError,
    MmmatchError,
)
from mmmatch.images import ImageLimits, decode_image
from mmmatch.search import SearchIndex, _json_value

try:
    from fastapi import FastAPI, File, Form, HTTPException, Request, Security, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import APIKeyHeader
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f'the mmmatch HTTP service needs FastAPI, uvicorn and python-multipart ({e.name} is '
        'missing): pip install "mmmatch[serve]"'
    ) from e

__all__ = ["API_KEY_ENV", "ServeLimits", "ServiceError", "create_app", "resolve_indexes",
           "serve"]

logger = logging.getLogger(__name__)

API_KEY_ENV = "MMMATCH_API_KEY"
"""Environment variable :func:`serve` reads the API key from when none is given."""
API_KEY_HEADER = "X-API-Key"
_OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                         "/redoc"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HIT_COLUMNS = ["rank", "id", "title", "score", *EVIDENCE_COLUMNS]
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media",
                 422: "invalid_request", 429: "too_many_requests"}


@dataclass(frozen=True)
class ServeLimits:
    """Limits on what one request may ask for; beyond them the answer is a 4xx error.

    Attributes:
        max_request_bytes: largest request body (413 ``request_too_large``).
        max_image_bytes: largest uploaded image file (413 ``image_too_large``).
        max_image_pixels: largest width x height of an image, checked from its header
            before decoding, so decompression bombs are refused (413 ``image_too_large``).
        max_k: largest ``k`` (422 ``k_out_of_range``).
        max_batch_queries: most queries in one batch request (422 ``too_many_queries``).
        max_items_per_request: most items in one add request (422 ``too_many_items``).
        max_title_chars: longest title (422 ``title_too_long``).
    """

    max_request_bytes: int = 64 * 2**20
    max_image_bytes: int = 16 * 2**20
    max_image_pixels: int = 40_000_000
    max_k: int = 100
    max_batch_queries: int = 256
    max_items_per_request: int = 1000
    max_title_chars: int = 2000

    @property
    def image_limits(self) -> ImageLimits:
        """The :class:`~mmmatch.images.ImageLimits` applied to uploaded images."""
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)


class ServiceError(Exception):
    """An error the service answers with ``{"error": {"code", "message", "field"}}``.

    Args:
        status: HTTP status (4xx).
        code: short machine-readable code (``empty_query``, ``unreadable_image``...).
        message: what went wrong and what to do, for people.
        field: the form field (and file) concerned, if any.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


# -- response models (documentation in /openapi.json) ----------------------------------------


class Evidence(BaseModel):
    """The evidence behind a score (``null`` where a signal is missing for the pair)."""

    score: float | None = Field(description="the search score the results are ranked by")
    image_sim: float | None = Field(description="cosine of the image embeddings")
    text_sim: float | None = Field(description="cosine of the text embeddings")
    lexical_sim: float | None = Field(description="TF-IDF cosine of character n-grams")
    word_sim: float | None = Field(description="TF-IDF cosine of words")
    fused_sim: float | None = Field(description="cosine of learned embeddings (trained model)")


class Hit(BaseModel):
    """One catalogue item found for a query."""

    rank: int
    id: str
    title: str | None
    score: float | None
    evidence: Evidence
    metadata: dict[str, Any] = Field(description="the item's other catalogue columns")


class SearchResponse(BaseModel):
    index: str
    k: int
    results: list[Hit]


class QueryResults(BaseModel):
    query: int = Field(description="position of the query in the request")
    results: list[Hit]


class BatchSearchResponse(BaseModel):
    index: str
    k: int
    queries: list[QueryResults]


class IndexInfo(BaseModel):
    name: str
    count: int = Field(description="items in the index")
    image_encoder: str | None
    text_encoder: str | None
    has_images: bool = Field(description="the index can be searched with a photo")
    has_text: bool
    model: bool = Field(description="a trained model embeds the items")
    dim: int
    persistent: bool = Field(description="changes are journaled to the index folder")
    pending_changes: int = Field(description="journaled changes not yet compacted")


class IndexList(BaseModel):
    indexes: list[IndexInfo]


class Item(BaseModel):
    id: str
    title: str | None
    metadata: dict[str, Any]


class AddResponse(BaseModel):
    index: str
    added: list[str]
    count: int = Field(description="items in the index after the change")


class RemoveResponse(BaseModel):
    index: str
    removed: str
    count: int


class Health(BaseModel):
    status: str
    indexes: int


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    details: list[Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse} for s in statuses}


# -- results as JSON ----------------------------------------------------------------------------


def _hits(result: pd.DataFrame) -> dict[int, list[dict[str, Any]]]:
    """Search results grouped by query as JSON-safe hits."""
    meta_cols = [c for c in result.columns if c not in _HIT_COLUMNS and c != "query"]
    cols = {c: result[c].tolist() for c in result.columns}
    out: dict[int, list[dict[str, Any]]] = {}
    for row in range(len(result)):
        score = _json_value(cols["score"][row])
        evidence = {"score": score, **{c: _json_value(cols[c][row]) for c in EVIDENCE_COLUMNS}}
        out.setdefault(int(cols["query"][row]), []).append({
            "rank": int(cols["rank"][row]),
            "id": str(cols["id"][row]),
            "title": _json_value(cols["title"][row]),
            "score": score,
            "evidence": evidence,
            "metadata": {str(c): _json_value(cols[c][row]) for c in meta_cols},
        })
    return out


def _item(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": str(row["id"]), "title": _json_value(row["title"]),
            "metadata": {str(c): _json_value(v) for c, v in row.items()
                         if c not in ("id", "title")}}


# -- the micro-batcher ----------------------------------------------------------------------


@dataclass
class _Query:
    image: bytes | None
    title: str | None
    k: int
    where: str  # how to name the query's image in errors
    field: str | None  # the form field of the image


_IMAGE_PROBLEMS = {"too_large": (413, "image_too_large")}
_UPLOAD = "__upload__"  # the column holding an added item's uploaded photo


def _query_error(problem: dict[str, Any], query: _Query) -> ServiceError:
    kind = problem["problem"]
    if kind == "empty_query":
        return ServiceError(422, "empty_query", "give an image file, a title, or both")
    if kind == "images_not_supported":
        return ServiceError(422, "images_not_supported",
                            "this index has no images; search it by title", query.field)
    status, code = _IMAGE_PROBLEMS.get(kind, (422, "unreadable_image"))
    return ServiceError(status, code, f"{query.where}: {problem['detail']}", query.field)


class _Batcher:
    """Queues single searches of one index and runs them as batches on one worker thread."""

    def __init__(self, name: str, index: SearchIndex, max_batch: int, max_wait_s: float,
                 image_limits: ImageLimits) -> None:
        self.name = name
        self.index = index
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.image_limits = image_limits
        self.batch_sizes: Counter[int] = Counter()  # batch size -> how many batches
        self.busy_s = 0.0  # seconds the worker spent searching
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"mmmatch-search-{name}")
        self._queue: asyncio.Queue[tuple[_Query, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._task is None \
                or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(self._queue), name=f"batcher-{self.name}")
        return self._queue

    async def search(self, queries: Sequence[_Query]) -> list[list[dict] | ServiceError]:
        """Queue queries (together) and wait for their hits, or a :class:`ServiceError`."""
        queue = self._start()
        loop = asyncio.get_running_loop()
        futures = []
        for query in queries:
            future = loop.create_future()
            queue.put_nowait((query, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        expect = 1  # queries the last batch had: under steady load as many will come
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                if len(batch) >= expect:  # an idle server answers at once
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            expect = len(batch)
            live = [(q, f) for q, f in batch if not f.done()]  # clients that went away
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._search,
                                                      [q for q, _ in live])
            except Exception:  # never let the loop die
                logger.exception("search batch of %s failed", self.name)
                results = [ServiceError(500, "internal", "the search failed")] * len(live)
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _search(self, queries: list[_Query]) -> list[list[dict] | ServiceError]:
        """One :meth:`SearchIndex.search_batch` per distinct ``k`` (in the worker thread)."""
        start = time.perf_counter()
        try:
            return self._search_by_k(queries)
        finally:
            self.busy_s += time.perf_counter() - start

    def _search_by_k(self, queries: list[_Query]) -> list[list[dict] | ServiceError]:
        out: list[list[dict] | ServiceError] = [[] for _ in queries]
        by_k: dict[int, list[int]] = {}
        for i, query in enumerate(queries):
            by_k.setdefault(query.k, []).append(i)
        for k, members in by_k.items():
            self.batch_sizes[len(members)] += 1
            try:
                result = self.index.search_batch(
                    [queries[i].image for i in members], [queries[i].title for i in members],
                    k=k, on_bad_query="skip", image_limits=self.image_limits)
            except Exception as e:  # not a bad query (those are skipped): isolate it
                if len(members) > 1:
                    logger.exception("search batch of %s failed; searching one by one",
                                     self.name)
                    for i in members:
                        out[i] = self._search_by_k([queries[i]])[0]
                elif isinstance(e, MmmatchError):
                    out[members[0]] = ServiceError(422, "invalid_query", str(e))
                else:
                    logger.exception("search of %s failed", self.name)
                    out[members[0]] = ServiceError(500, "internal", "the search failed; the "
                                                   "server log has the details")
                continue
            problems = {p["query"]: p for p in result.attrs.get("problems", [])}
            hits = _hits(result)
            for j, i in enumerate(members):
                out[i] = _query_error(problems[j], queries[i]) if j in problems \
                    else hits.get(j, [])
        return out

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the search worker thread, between batches; its future."""
        return self._executor.submit(fn, *args)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)


# -- middleware -----------------------------------------------------------------------------


def _error_body(status: int, code: str, message: str, field: str | None = None,
                details: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if details is not None:
        body["details"] = details
    return {"error": body}


async def _send_json(send: Callable, status: int, body: dict[str, Any],
                     headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


async def _drain(receive: Callable, cap: int) -> bool:
    """Read and drop the rest of a request body, up to ``cap`` bytes; whether it all came."""
    drained = 0
    while drained <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return False
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


class _Guard:
    """Pure ASGI middleware: request log line, API key, request size limit."""

    def __init__(self, app: Any, api_key: str | None, max_request_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_logged(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_logged)
        finally:
            logger.info("%s %s %d %.1fms", scope["method"], scope["path"], status[0],
                        (time.perf_counter() - start) * 1000)

    async def _guarded(self, scope: dict, receive: Callable, send: Callable) -> None:
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"] not in _OPEN_PATHS:
            given = headers.get(API_KEY_HEADER.lower().encode(), b"")
            if not secrets.compare_digest(given, self.api_key.encode()):
                message = ("missing API key" if not given else "wrong API key") + \
                    f"; send it in the {API_KEY_HEADER} header"
                await _send_json(send, 401, _error_body(401, "unauthorized", message),
                                 [(b"www-authenticate", API_KEY_HEADER.encode())])
                return
        limit = self.max_request_bytes
        drain_cap = max(4 * limit, 32 * 2**20)  # read (and drop) this much of a refused body
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            # a client that is still sending would see a reset instead of the answer
            drained = await _drain(receive, drain_cap if int(length) <= drain_cap else 0)
            await _send_json(send, 413, _error_body(
                413, "request_too_large", f"the request body is {int(length)} bytes; the "
                f"limit is {limit}"), [] if drained else [(b"connection", b"close")])
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await _drain(receive, drain_cap)
                    raise HTTPException(413, f"the request body is over the limit of {limit} "
                                             "bytes")
            return message

        await self.app(scope, limited_receive, send)


# -- the app --------------------------------------------------------------------------------


def _open_path(path: Path, compact_every: int, device: str | None) -> SearchIndex:
    """Open an index folder, or the empty index of a model folder (``PATH/index``)."""
    if (path / "manifest.json").exists():
        return SearchIndex.open(path, compact_every=compact_every, device=device)
    config = path / "config.json"
    if config.exists() and json.loads(config.read_text()).get("kind") == "mmmatch.MatchModel":
        folder = path / "index"
        if not (folder / "manifest.json").exists():
            from mmmatch.pipeline import Matcher

            logger.info("%s is a model without items: creating an empty index in %s", path,
                        folder)
            SearchIndex.empty(Matcher(model=path, device=device)).save(folder)
        return SearchIndex.open(folder, compact_every=compact_every, device=device)
    raise FileNotFoundError(f"{path} is neither an mmmatch search index (manifest.json) nor a "
                            "model folder (config.json)")


def _index_kind(path: Path) -> str | None:
    for file, kind in (("manifest.json", "mmmatch.SearchIndex"),
                       ("config.json", "mmmatch.MatchModel")):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads((path / file).read_text()).get("kind") == kind:
                return kind
    return None


def resolve_indexes(paths: Sequence[str | Path]) -> dict[str, Path]:
    """Names and folders of the indexes to serve, from command-line style arguments.

    Args:
        paths: each ``NAME=PATH`` or ``PATH``. ``PATH`` is a saved search index (named
            after its folder), a trained model folder (served as an empty index kept in
            ``PATH/index``, to fill with ``POST /indexes/{name}/items``), or a folder whose
            subfolders are indexes or models (each named after its subfolder).

    Returns:
        ``{name: folder}`` in the order given.

    Raises:
        FileNotFoundError: a path is none of the above.
        ValueError: a name is used twice or is not ``[A-Za-z0-9._-]``.
    """
    out: dict[str, Path] = {}

    def put(name: str, path: Path) -> None:
        if not _NAME.match(name):
            raise ValueError(f"index name {name!r}: use letters, digits, '.', '_' and '-'")
        if name in out:
            raise ValueError(f"index name {name!r} is given twice ({out[name]} and {path})")
        out[name] = path

    for spec in paths:
        text = str(spec)
        name, sep, rest = text.partition("=")
        explicit = bool(sep) and not Path(text).exists()
        path = Path(rest if explicit else text).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no index folder at {path}")
        if _index_kind(path):
            put(name if explicit else path.resolve().name, path)
            continue
        subfolders = sorted(p for p in path.iterdir() if p.is_dir() and _index_kind(p))
        if not subfolders:
            raise FileNotFoundError(
                f"{path} is not an mmmatch search index (manifest.json), a model folder "
                "(config.json), or a folder of them")
        for sub in subfolders:
            put(f"{name}.{sub.name}" if explicit else sub.name, sub)
    return out


@dataclass
class _Served:
    name: str
    index: SearchIndex
    owned: bool  # opened here from a folder: closed (compacted) on shutdown
    batcher: _Batcher


def create_app(
    indexes: Mapping[str, str | Path | SearchIndex],
    api_key: str | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 25.0,
    limits: ServeLimits | None = None,
    compact_every: int = 1000,
    device: str | None = None,
) -> FastAPI:
    """The FastAPI app serving some search indexes.

    Folders are opened with :meth:`SearchIndex.open <mmmatch.search.SearchIndex.open>`
    (changes journaled, compacted on shutdown); :class:`~mmmatch.search.SearchIndex`
    objects are served as they are (durable only if opened that way; the caller closes
    them).

    Args:
        indexes: ``{name: folder or SearchIndex}``; a folder may also be a model folder
            (see :func:`resolve_indexes`).
        api_key: when given, every endpoint but ``/health`` and the docs needs the header
            ``X-API-Key: <api_key>`` (401 otherwise).
        max_batch: most single searches embedded together.
        max_wait_ms: at most how long a batch waits to have as many searches as the
            previous batch had (none when that one was a single search).
        limits: request limits (default :class:`ServeLimits`).
        compact_every: compact an opened folder after this many changes.
        device: torch device of the encoders of the folders opened here (default CUDA
            when available).

    Returns:
        The app; ``app.state.indexes`` is ``{name: SearchIndex}``,
        ``app.state.batch_sizes`` ``{name: Counter(batch size -> batches)}`` and
        ``app.state.batchers`` ``{name: batcher}`` (its ``submit(fn, *args)`` runs a call
        on the thread the searches run on, between batches).

    Raises:
        FileNotFoundError, ConfigMismatchError: a folder cannot be opened.
        ValueError: a bad index name.
    """
    limits = limits or ServeLimits()
    served: dict[str, _Served] = {}
    try:
        for name, spec in indexes.items():
            if not _NAME.match(name):
                raise ValueError(f"index name {name!r}: use letters, digits, '.', '_' and '-'")
            owned = not isinstance(spec, SearchIndex)
            index = _open_path(Path(spec), compact_every, device) if owned else spec
            index.warm()  # encoders loaded, TF-IDF fitted: the first search is not slow
            batcher = _Batcher(name, index, max_batch, max_wait_ms / 1000, limits.image_limits)
            served[name] = _Served(name, index, owned, batcher)
    except BaseException:
        for s in served.values():
            s.batcher.close()
            if s.owned:
                s.index.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for s in served.values():
            s.batcher.close()
            sizes = s.batcher.batch_sizes
            if sizes:  # how well concurrent queries were batched
                queries = sum(n * c for n, c in sizes.items())
                logger.warning("index %s: %d queries in %d batches (mean %.1f, sizes %s)",
                               s.name, queries, sum(sizes.values()),
                               queries / sum(sizes.values()), dict(sorted(sizes.items())))
            if s.owned:
                await run_in_threadpool(s.index.close)
                logger.info("closed index %s", s.name)

    app = FastAPI(
        title="mmmatch search",
        description="Find products in catalogues by photo and / or title. Errors are "
                    '`{"error": {"code", "message", "field"}}`.'
                    + (f" Send the API key in the `{API_KEY_HEADER}` header." if api_key
                       else ""),
        version=_version(),
        lifespan=lifespan,
    )
    app.state.indexes = {name: s.index for name, s in served.items()}
    app.state.batch_sizes = {name: s.batcher.batch_sizes for name, s in served.items()}
    app.state.batchers = {name: s.batcher for name, s in served.items()}
    app.add_middleware(_Guard, api_key=api_key, max_request_bytes=limits.max_request_bytes)
    _add_error_handlers(app)
    key_doc = [Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))] if api_key else []

    def get(name: str) -> _Served:
        s = served.get(name)
        if s is None:
            raise ServiceError(404, "index_not_found", f"no index {name!r}; the indexes are "
                               f"{sorted(served)}", "name")
        return s

    def check_k(k: int) -> None:
        if not 1 <= k <= limits.max_k:
            raise ServiceError(422, "k_out_of_range", f"k must be between 1 and "
                               f"{limits.max_k}, got {k}", "k")

    def clean_title(title: str | None, field: str) -> str | None:
        title = (title or "").strip() or None
        if title is not None and len(title) > limits.max_title_chars:
            raise ServiceError(422, "title_too_long", f"{field} has {len(title)} characters; "
                               f"the limit is {limits.max_title_chars}", field)
        return title

    async def read_file(upload: UploadFile, field: str) -> bytes | None:
        data = await upload.read(limits.max_image_bytes + 1)
        where = f"file {upload.filename!r} (field {field!r})"
        if len(data) > limits.max_image_bytes:
            raise ServiceError(413, "image_too_large", f"{where} is over the limit of "
                               f"{limits.max_image_bytes} bytes", field)
        if not data:
            if not upload.filename:
                return None  # an empty file input
            raise ServiceError(422, "unreadable_image", f"{where} is empty", field)
        return data

    def info(s: _Served) -> dict[str, Any]:
        index = s.index
        meta = index.index.metadata
        return {"name": s.name, "count": len(index),
                "image_encoder": meta.get("image_encoder"),
                "text_encoder": meta.get("text_encoder"),
                "has_images": index.layout.image_dim > 0, "has_text": index.layout.text_dim > 0,
                "model": index.layout.learned_dim > 0, "dim": index.layout.dim,
                "persistent": index.path is not None,
                "pending_changes": index.pending_changes}

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness: always open, even with an API key."""
        return {"status": "ok", "indexes": len(served)}

    @app.get("/indexes", response_model=IndexList, tags=["indexes"], dependencies=key_doc,
             responses=_errors(401))
    async def list_indexes() -> dict[str, Any]:
        """The indexes served: name, item count, encoders, whether photos can be searched."""
        return {"indexes": [info(s) for s in served.values()]}

    @app.get("/indexes/{name}", response_model=IndexInfo, tags=["indexes"],
             dependencies=key_doc, responses=_errors(401, 404))
    async def index_info(name: str) -> dict[str, Any]:
        """One index: item count, encoders, whether photos can be searched."""
        return info(get(name))

    @app.post("/indexes/{name}/search", response_model=SearchResponse, tags=["search"],
              dependencies=key_doc, responses=_errors(400, 401, 404, 413, 422))
    async def search(
        name: str,
        image: Annotated[UploadFile | None, File(description="a photo (JPEG, PNG, WebP...)")]
        = None,
        title: Annotated[str | None, Form(description="a typed title")] = None,
        k: Annotated[int, Form(description="how many results")] = 10,
    ) -> JSONResponse:
        """The top-`k` items for a photo, a title, or both (multipart form).

        Concurrent requests are batched together. Errors: 422 `empty_query` (neither),
        `k_out_of_range`, `unreadable_image`, `images_not_supported` (a text-only index);
        413 `image_too_large` (bytes or pixels); 404 `index_not_found`.
        """
        s = get(name)
        check_k(k)
        title = clean_title(title, "title")
        data = None if image is None else await read_file(image, "image")
        if data is None and title is None:
            raise ServiceError(422, "empty_query", "give an image file, a title, or both")
        where = f"file {image.filename!r} (field 'image')" if image is not None else ""
        query = _Query(data, title, k, where, "image")
        if data is not None and not s.index.layout.image_dim:
            raise _query_error({"problem": "images_not_supported"}, query)
        [result] = await s.batcher.search([query])
        if isinstance(result, ServiceError):
            raise result
        return JSONResponse({"index": name, "k": k, "results": result})

    @app.post("/indexes/{name}/search/batch", response_model=BatchSearchResponse,
              tags=["search"], dependencies=key_doc, responses=_errors(400, 401, 404, 413, 422))
    async def search_batch(
        name: str,
        files: Annotated[list[UploadFile] | None, File(description="the photos")] = None,
        titles: Annotated[list[str] | None, Form(description="titles, paired with `files` "
                                                 "by position")] = None,
        queries: Annotated[str | None, Form(description='JSON list of queries, e.g. '
                                            '`[{"title": "oat milk", "image": "a.jpg"}, '
                                            '{"image": "b.jpg"}, {"title": "green tea"}]`; '
                                            '`image` names the filename of one of `files`')]
        = None,
        k: Annotated[int, Form(description="results per query")] = 10,
    ) -> JSONResponse:
        """Many queries in one multipart request; results come back in query order.

        Two ways to say which photo goes with which title:

        * **`queries`** (a JSON form field): a list of objects with an optional `title` and
          an optional `image`, the *filename* of one of the uploaded `files` (a file may
          serve several queries). Each query needs a title, an image, or both.
        * **positional**: repeated `files` and repeated `titles` fields, paired by
          position (query i = file i + title i). Send the same number of each (an empty
          title makes a photo-only query), or only files, or only titles.

        One query that cannot be searched fails the request (the error names the query
        and its file); at most `max_batch_queries` queries.
        """
        s = get(name)
        check_k(k)
        uploads = [f for f in files or [] if f.filename or f.size]
        batch: list[_Query] = []
        if queries is not None:
            if titles:
                raise ServiceError(422, "invalid_request", "send either `queries` or `titles`, "
                                   "not both", "titles")
            by_name: dict[str, UploadFile] = {}
            for f in uploads:
                if f.filename in by_name:
                    raise ServiceError(422, "duplicate_file", f"two files are named "
                                       f"{f.filename!r}; the queries refer to files by name",
                                       "files")
                by_name[str(f.filename)] = f
            specs = _parse_json_list(queries, "queries", limits.max_batch_queries,
                                     "too_many_queries")
            data: dict[str, bytes | None] = {}
            for i, spec in enumerate(specs):
                unknown = set(spec) - {"title", "image"}
                if unknown:
                    raise ServiceError(422, "invalid_request", f"queries[{i}] has unknown keys "
                                       f"{sorted(unknown)}; use 'title' and 'image'", "queries")
                file = spec.get("image")
                if file is not None:
                    if not isinstance(file, str) or file not in by_name:
                        raise ServiceError(422, "unknown_file", f"queries[{i}] names the image "
                                           f"{file!r}, but no uploaded file has that name "
                                           f"(files: {sorted(by_name)})", "queries")
                    if file not in data:
                        data[file] = await read_file(by_name[file], "files")
                title = spec.get("title")
                if title is not None and not isinstance(title, str):
                    raise ServiceError(422, "invalid_request", f"queries[{i}].title must be "
                                       "a string", "queries")
                batch.append(_Query(None if file is None else data[file],
                                    clean_title(title, f"queries[{i}].title"), k,
                                    f"query {i}, file {file!r} (field 'files')", "files"))
        else:
            titles = titles or []
            if uploads and titles and len(uploads) != len(titles):
                raise ServiceError(422, "invalid_request", f"got {len(uploads)} files but "
                                   f"{len(titles)} titles; send as many of each, or pair them "
                                   "with the `queries` field", "titles")
            n = max(len(uploads), len(titles))
            if n > limits.max_batch_queries:
                raise ServiceError(422, "too_many_queries", f"{n} queries; the limit is "
                                   f"{limits.max_batch_queries}")
            for i in range(n):
                f = uploads[i] if uploads else None
                batch.append(_Query(
                    None if f is None else await read_file(f, "files"),
                    clean_title(titles[i] if titles else None, f"titles[{i}]"), k,
                    f"query {i}, file {f.filename if f else None!r} (field 'files')", "files"))
        if not batch:
            raise ServiceError(422, "empty_query", "no queries: send `files` and / or "
                               "`titles`, or `queries`")
        for i, q in enumerate(batch):
            if q.image is None and q.title is None:
                raise ServiceError(422, "empty_query", f"query {i} has neither an image nor a "
                                   "title")
            if q.image is not None and not s.index.layout.image_dim:
                raise _query_error({"problem": "images_not_supported"}, q)
        results = await s.batcher.search(batch)
        for result in results:
            if isinstance(result, ServiceError):
                raise result
        return JSONResponse({"index": name, "k": k, "queries": [
            {"query": i, "results": r} for i, r in enumerate(results)]})

    @app.post("/indexes/{name}/items", response_model=AddResponse, status_code=201,
              tags=["items"], dependencies=key_doc,
              responses=_errors(400, 401, 404, 409, 413, 422))
    async def add_items(
        name: str,
        items: Annotated[str, Form(description='JSON list of rows (or one row): `{"id": '
                                   '"sku-1", "title": "Oat drink 1 l", "text": "Oatly | '
                                   'dairy-free", "image": "a.jpg", "price": 1.99}`')],
        files: Annotated[list[UploadFile] | None, File(description="photos named by the "
                                                       "rows' `image`")] = None,
    ) -> JSONResponse:
        """Add items (multipart form); the change is durable when the answer comes.

        Each row has an `id` (required, new), a `title` and / or `text` (more text used
        for matching), an `image` naming the *filename* of one of the uploaded `files`,
        and any other keys as metadata (returned with search results; names starting
        with `_` are reserved). Each row needs a title, a text or an image. All rows are
        added or none: 409 `duplicate_id` (an id in the index or repeated),
        422 `invalid_items` / `unknown_file` / `unreadable_image`, 413 `image_too_large`.
        """
        s = get(name)
        rows = _parse_json_list(items, "items", limits.max_items_per_request,
                                "too_many_items")
        uploads = {str(f.filename): f for f in files or [] if f.filename or f.size}
        if len(uploads) != len([f for f in files or [] if f.filename or f.size]):
            raise ServiceError(422, "duplicate_file", "two files have the same name; rows "
                               "refer to files by name", "files")
        if uploads and not s.index.layout.image_dim:
            raise ServiceError(422, "images_not_supported", "this index has no images; add "
                               "items without files", "files")
        frame, images = _item_frame(rows, uploads)
        ids = frame["id"].tolist()
        clash = [i for i in ids if i in s.index] + pd.Series(ids)[
            pd.Series(ids).duplicated()].tolist()
        if clash:
            raise ServiceError(409, "duplicate_id", f"id(s) already in the index or repeated: "
                               f"{sorted(set(clash))[:10]}", "items")
        data: dict[str, bytes] = {}
        for file in sorted(set(images.values())):
            blob = await read_file(uploads[file], "files")
            if blob is None:
                raise ServiceError(422, "unreadable_image", f"file {file!r} is empty", "files")
            try:
                await run_in_threadpool(decode_image, blob, file, limits.image_limits)
            except ImageError as e:
                status, code = _IMAGE_PROBLEMS.get(e.reason, (422, "unreadable_image"))
                raise ServiceError(status, code, f"file {file!r} (field 'files'): {e}",
                                   "files") from None
            data[file] = blob
        # explicit roles: a metadata key such as "photo" or "name" must not be taken for an
        # image reference (the service never reads paths or URLs) or a title
        frame[_UPLOAD] = [data[images[i]] if i in images else None for i in frame["id"]]
        if "title" not in frame:
            frame["title"] = None
        columns = {"id": "id", "title": "title", "image": _UPLOAD,
                   "text": ("text",) if "text" in frame else ()}
        prepared = await run_in_threadpool(s.index.prepare, frame, columns, "raise",
                                           limits.image_limits)
        if not prepared.problems.empty:
            problem = prepared.problems.iloc[0]
            raise ServiceError(422, "invalid_items", f"item {problem['id']!r}: "
                               f"{problem['problem']} ({problem['detail']})", "items")
        for row in prepared.rows:  # the row's `image` (the filename) stays as metadata
            row.pop(_UPLOAD, None)
        await run_in_threadpool(s.index.add, prepared)
        return JSONResponse({"index": name, "added": prepared.ids, "count": len(s.index)},
                            status_code=201)

    @app.get("/indexes/{name}/items/{item_id:path}", response_model=Item, tags=["items"],
             dependencies=key_doc, responses=_errors(401, 404))
    async def get_item(name: str, item_id: str) -> dict[str, Any]:
        """One item's title and metadata."""
        s = get(name)
        rows = await run_in_threadpool(s.index.get_items, [item_id])
        return _item(rows.iloc[0].to_dict())

    @app.delete("/indexes/{name}/items/{item_id:path}", response_model=RemoveResponse,
                tags=["items"], dependencies=key_doc, responses=_errors(401, 404))
    async def remove_item(name: str, item_id: str) -> dict[str, Any]:
        """Remove one item; durable when the answer comes. 404 `item_not_found`."""
        s = get(name)
        await run_in_threadpool(s.index.remove, [item_id])
        return {"index": name, "removed": item_id, "count": len(s.index)}

    return app


def _version() -> str:
    from mmmatch import __version__

    return __version__


def _parse_json_list(text: str, field: str, limit: int, code: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ServiceError(422, "invalid_request", f"{field} is not valid JSON: {e}",
                           field) from None
    rows = [value] if isinstance(value, dict) else value
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ServiceError(422, "invalid_request", f"{field} must be a JSON list of objects",
                           field)
    if len(rows) > limit:
        raise ServiceError(422, code, f"{len(rows)} {field}; the limit is {limit} per request",
                           field)
    return rows


def _item_frame(rows: list[dict[str, Any]], uploads: Mapping[str, Any]
                ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Validated item rows as a catalogue frame, and ``{id: filename}`` of their images."""
    if not rows:
        raise ServiceError(422, "invalid_items", "no items given", "items")
    clean: list[dict[str, Any]] = []
    images: dict[str, str] = {}
    for i, row in enumerate(rows):
        item_id = row.get("id")
        if isinstance(item_id, bool) or not isinstance(item_id, str | int) \
                or not str(item_id).strip():
            raise ServiceError(422, "invalid_items", f"items[{i}] needs an `id` (a non-empty "
                               "string or an integer)", "items")
        reserved = [key for key in row if str(key).startswith("_")]
        if reserved:
            raise ServiceError(422, "invalid_items", f"items[{i}]: names starting with '_' "
                               f"are reserved ({reserved})", "items")
        for key in ("title", "text"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise ServiceError(422, "invalid_items", f"items[{i}].{key} must be a string",
                                   "items")
        image = row.get("image")
        if image is not None:
            if not isinstance(image, str) or image not in uploads:
                raise ServiceError(422, "unknown_file", f"items[{i}] names the image "
                                   f"{image!r}, but no uploaded file has that name (files: "
                                   f"{sorted(uploads)})", "items")
            images[str(item_id)] = image
        if not any(isinstance(row.get(key), str) and row[key].strip()
                   for key in ("title", "text")) and image is None:
            raise ServiceError(422, "invalid_items", f"items[{i}] has neither a title, a text "
                               "nor an image", "items")
        clean.append({str(key): json.dumps(v) if isinstance(v, dict | list) else v
                      for key, v in row.items()} | {"id": str(item_id)})
    return pd.DataFrame(clean), images


def _add_error_handlers(app: FastAPI) -> None:
    def respond(status: int, code: str, message: str, field: str | None = None,
                details: list[Any] | None = None) -> JSONResponse:
        return JSONResponse(_error_body(status, code, message, field, details),
                            status_code=status)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return respond(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                    "type": str(e.get("type", ""))} for e in errors]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p not in ("body", "query", "path"))
        return respond(422, "invalid_request", f"{where or 'request'}: {first['msg']}",
                       where or None, details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        response = respond(exc.status_code, code, str(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(DuplicateIdError)
    async def duplicate(request: Request, exc: DuplicateIdError) -> JSONResponse:
        return respond(409, "duplicate_id", str(exc), "items")

    @app.exception_handler(ItemNotFoundError)
    async def not_found(request: Request, exc: ItemNotFoundError) -> JSONResponse:
        return respond(404, "item_not_found", str(exc), "item_id")

    @app.exception_handler(CatalogueError)
    async def bad_items(request: Request, exc: CatalogueError) -> JSONResponse:
        return respond(422, "invalid_items", str(exc), "items")

    @app.exception_handler(ImageError)
    async def bad_image(request: Request, exc: ImageError) -> JSONResponse:
        status, code = _IMAGE_PROBLEMS.get(exc.reason, (422, "unreadable_image"))
        return respond(status, code, str(exc))

    @app.exception_handler(MmmatchError)
    async def mmmatch_error(request: Request, exc: MmmatchError) -> JSONResponse:
        return respond(422, "invalid_request", str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return respond(500, "internal", "internal error; the server log has the details")


def serve(
    paths: Sequence[str | Path] | Mapping[str, str | Path | SearchIndex],
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 25.0,
    limits: ServeLimits | None = None,
    compact_every: int = 1000,
    device: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve indexes over HTTP with uvicorn until interrupted (Ctrl-C / SIGTERM compact the
    journals on the way out; a crash loses nothing acknowledged either).

    Args:
        paths: ``NAME=PATH`` / ``PATH`` arguments (see :func:`resolve_indexes`), or
            ``{name: folder or SearchIndex}``.
        host: interface to listen on (``0.0.0.0`` for every interface).
        port: TCP port.
        api_key: required ``X-API-Key``; default the ``MMMATCH_API_KEY`` environment
            variable, if set.
        max_batch: see :func:`create_app`.
        max_wait_ms: see :func:`create_app`.
        limits: see :class:`ServeLimits`.
        compact_every: see :func:`create_app`.
        device: see :func:`create_app`.
        log_level: uvicorn's and the request log's level.

    One process serves a folder (the journal is locked): scale with threads of the encoders
    (``torch.set_num_threads``), not with uvicorn workers.
    """
    import uvicorn

    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    indexes = paths if isinstance(paths, Mapping) else resolve_indexes(paths)
    package_logger = logging.getLogger("mmmatch")
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
    package_logger.setLevel(log_level.upper())
    app = create_app(indexes, api_key=api_key, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     limits=limits, compact_every=compact_every, device=device)
    for name, index in app.state.indexes.items():
        logger.info("serving %s: %d items", name, len(index))
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
