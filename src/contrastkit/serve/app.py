"""The FastAPI app: embed, search (JSON or an uploaded image), health, metrics, the search page.

Built on an :class:`~contrastkit.serve.embedder.Embedder` and an index file, never on the training
code. Requests are embedded in micro-batches (:mod:`contrastkit.serve.batcher`); the index is
re-read when its file changes (``contrastkit index RUN`` replaces it by an atomic rename), and a
request already searching keeps the index it started with, so a swap never fails one.

Every bad input gets a 4xx whose JSON body names the field, the value received and what is
allowed: ``{"error": ..., "field": ..., "value": ..., "allowed": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

try:
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr
except ImportError as err:  # pragma: no cover - the optional extra
    raise ImportError(
        f"contrastkit serve needs FastAPI ({err.name} missing); "
        "install it with `pip install 'contrastkit[serve]'`."
    ) from None

from contrastkit.serve.batcher import Batcher, Overloaded
from contrastkit.serve.embedder import Embedder
from contrastkit.serve.metrics import Metrics

__all__ = ["LOOPBACK", "ServeSettings", "check_bind", "create_app", "create_app_from_run"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_PIXELS = 25_000_000  # an upload larger than this (e.g. 5000 x 5000) is refused undecoded
# Paths anyone may read: the page, health and the API documentation.
PUBLIC_PATHS = ("/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


@dataclass
class ServeSettings:
    """Service limits (the ``contrastkit serve`` options).

    Attributes:
        max_batch: most items per model call; 1 turns micro-batching off.
        max_wait_ms: how long a request waits for others to share its batch.
        queue: most requests waiting for the model; beyond it 503 with ``Retry-After``.
        max_body_mb: largest request body (JSON or upload) in MiB; larger gets 413.
        max_k: largest ``k`` a search may ask for.
        max_items: most texts or images in one ``/embed`` request.
        threads: torch threads of the model worker (None: torch's default).
        api_key: when set, every request but the page, ``/health`` and the docs must send
            ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue: int = 256
    max_body_mb: float = 8.0
    max_k: int = 100
    max_items: int = 64
    threads: int | None = 1
    api_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue", "max_k", "max_items"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not self.max_body_mb > 0:
            raise ValueError(f"max_body_mb must be > 0 (MiB), got {self.max_body_mb!r}.")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}.")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must be a non-empty string; pass --api-key KEY or omit it.")


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to bind beyond loopback without an API key.

    >>> check_bind("127.0.0.1", None)
    >>> check_bind("0.0.0.0", None)
    Traceback (most recent call last):
    ...
    ValueError: --host '0.0.0.0' is not loopback: pass --api-key KEY to serve beyond this machine, or bind --host 127.0.0.1.
    """
    if host not in LOOPBACK and not api_key:
        raise ValueError(
            f"--host {host!r} is not loopback: pass --api-key KEY to serve beyond this machine, "
            "or bind --host 127.0.0.1."
        )


class BadInput(Exception):
    """A 4xx answer naming the field, the value received and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str, status: int = 400) -> None:
        self.field, self.value, self.allowed, self.status = field, value, allowed, status
        super().__init__(f"{field}: got {_show(value)}; allowed: {allowed}")

    def body(self) -> dict[str, Any]:
        return {
            "error": str(self),
            "field": self.field,
            "value": _show(self.value),
            "allowed": self.allowed,
        }


def _show(value: Any, limit: int = 80) -> str:
    """A short printable form of a received value (never echo a whole upload)."""
    text = repr(value) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


FilterValue = StrictStr | StrictInt | StrictFloat | StrictBool


class EmbedRequest(BaseModel):
    """``/embed``: exactly one of ``texts`` (N strings) or ``images`` (N base64 images)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = None
    images: list[StrictStr] | None = None


class SearchRequest(BaseModel):
    """``/search``: exactly one of ``query`` (text) or ``image`` (base64), ``k`` and an optional
    exact-match ``filter`` on the index metadata (e.g. ``{"label": "Ankle boot"}``)."""

    model_config = ConfigDict(extra="forbid")
    query: StrictStr | None = None
    image: StrictStr | None = None
    k: StrictInt = 10
    filter: dict[str, FilterValue] | None = None


# -- the index, re-read when its file changes ------------------------------------------------
@dataclass(frozen=True)
class _Loaded:
    index: Any
    signature: tuple[int, int, int]  # (inode, mtime_ns, size) of the file it was read from
    fields: tuple[str, ...]  # metadata keys a filter may use (plus "id")
    version: int
    loaded_at: float


class IndexHolder:
    """The current index of ``path``; :meth:`current` swaps in a newer file when it appears.

    A swap replaces one reference: a request holds the ``_Loaded`` it started with until it is
    done. While a new file is being read, requests keep getting the old index.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        on_reload: Callable[[], None] | None = None,
        dim: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.dim = dim  # the model's embedding width: a file of another width is refused
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path}: no index file; build it with `contrastkit index RUN` or pass "
                "--index PATH."
            )
        self.on_reload = on_reload
        self.loaded = self._read(version=1)
        self._lock = asyncio.Lock()
        self._bad: tuple[int, int, int] | None = None  # a file that failed to load

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self, version: int) -> _Loaded:
        from contrastkit.index import load_index

        signature = self._signature()
        index = load_index(self.path)
        if self.dim is not None and index.dim != self.dim:
            raise ValueError(
                f"{self.path}: the index holds {index.dim}-d vectors but the model embeds "
                f"{self.dim}-d; build the index from this run (`contrastkit index RUN`) or pass "
                "its --index."
            )
        fields = sorted(
            {key for meta in index.metadata if isinstance(meta, dict) for key in meta} | {"id"}
        )
        return _Loaded(index, signature or (0, 0, 0), tuple(fields), version, time.time())

    async def current(self, force: bool = False) -> _Loaded:
        """The index to search now; re-read first when the file changed (or ``force``).

        A new file that cannot be read (written in place, not renamed; truncated) leaves the
        loaded index in service and is not retried until the file changes again; with ``force``
        the error is raised for the caller to report.
        """
        signature = self._signature()
        unchanged = signature is None or signature in (self.loaded.signature, self._bad)
        if not force and (unchanged or self._lock.locked()):
            return self.loaded  # (while another request reads the new file: the old index)
        async with self._lock:
            signature = self._signature()
            if force or signature not in (self.loaded.signature, self._bad):
                try:
                    loaded = await asyncio.to_thread(self._read, self.loaded.version + 1)
                except Exception as err:
                    self._bad = signature
                    if force:
                        raise
                    warnings.warn(
                        f"{self.path}: the new index file is not readable ({err}); still "
                        f"serving version {self.loaded.version}.",
                        RuntimeWarning,
                        stacklevel=1,
                    )
                    return self.loaded
                self.loaded, self._bad = loaded, None
                if self.on_reload is not None:
                    self.on_reload()
        return self.loaded


# -- request handling helpers ----------------------------------------------------------------
def _decode_image(data: bytes, embedder: Embedder, field: str) -> Any:
    """Encoded image bytes -> (C, H, W) float in [0, 1] at the model's size."""
    from PIL import Image

    from contrastkit.data.images import load_image

    assert embedder.image_shape is not None
    c, h, w = embedder.image_shape
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    except Exception:  # not an image at all
        width = height = 0
    if width * height > MAX_PIXELS:  # refuse before decoding: a small file can be a huge image
        raise BadInput(field, f"{width}x{height} pixels", f"at most {MAX_PIXELS:,} pixels")
    try:
        return load_image(data, channels=c, size=(h, w), name=field)
    except Exception:  # not an image, a truncated file, a decompression bomb
        raise BadInput(
            field, data[:16], "the bytes of a PNG, JPEG, BMP, GIF, WebP or TIFF image"
        ) from None


def _b64(value: str, field: str) -> bytes:
    if value.startswith("data:") and "," in value:  # a data: URL, as a browser makes it
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(field, value, "a base64-encoded image (standard alphabet)") from None


def _check_kind(embedder: Embedder, kind: str, field: str, value: Any) -> None:
    if kind not in embedder.kinds:
        other = "image" if kind == "text" else "query"
        raise BadInput(
            field,
            value,
            f"this model embeds {' and '.join(embedder.kinds)} queries only; send "
            f"{other!r} instead",
        )


def _check_k(k: Any, max_k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise BadInput("k", k, f"an integer from 1 to {max_k}")
    return k


def _check_filter(flt: Any, loaded: _Loaded) -> dict[str, Any]:
    if flt is None:
        return {}
    if not isinstance(flt, dict):
        raise BadInput("filter", flt, 'an object of metadata field -> value, e.g. {"label": "x"}')
    for key, value in flt.items():
        if key not in loaded.fields:
            raise BadInput(f"filter.{key}", key, f"a metadata field of this index: {loaded.fields}")
        if not isinstance(value, (str, int, float, bool)):
            raise BadInput(f"filter.{key}", value, "a string, number or boolean to match exactly")
    return flt


def search_many(
    loaded: _Loaded, vectors: Any, ks: list[int], filters: list[dict[str, Any]]
) -> list[list[dict]]:
    """The best hits of each query ``vectors: (Q, D)``: ``ks[i]`` of them, matching
    ``filters[i]`` exactly, searched in one call per round.

    A filtered query asks the index for more neighbours (x4 each round, from ``max(4k, 64)``)
    until ``k`` match or the whole index was ranked, so a rare label is still found.
    """
    index = loaded.index
    n = len(index)
    wants = [min(n, k if not f else max(4 * k, 64)) for k, f in zip(ks, filters)]
    out: list[list[dict]] = [[] for _ in ks]
    todo = list(range(len(ks)))
    while todo:
        want = max(wants[i] for i in todo)
        result = index.search(vectors[todo], want)  # (len(todo), K)
        scores, positions = result.scores.tolist(), result.indices.tolist()
        ids, metadata = result.ids, result.metadata
        again = []
        for row, i in enumerate(todo):
            flt, hits = filters[i], []
            for score, pos, id_, meta in zip(scores[row], positions[row], ids[row], metadata[row]):
                if pos < 0:
                    continue
                record = meta if isinstance(meta, dict) else {}
                if all((id_ if key == "id" else record.get(key)) == v for key, v in flt.items()):
                    hits.append(
                        {"id": id_, "position": int(pos), "score": float(score), "metadata": meta}
                    )
            if len(hits) >= ks[i] or want >= n:
                out[i] = hits[: ks[i]]
            else:
                wants[i] = min(n, want * 4)
                again.append(i)
        todo = again
    return out


def search_index(loaded: _Loaded, vector: Any, k: int, flt: dict[str, Any]) -> list[dict]:
    """:func:`search_many` for one query ``vector: (1, D)``."""
    return search_many(loaded, vector, [k], [flt])[0]


def _search_batch(kind: str, items: list[tuple[_Loaded, Any, int, dict]]) -> list[list[dict]]:
    """The search batcher's call: queries of one index version, each ``(loaded, vector: (D,),
    k, filter)``, searched together."""
    import torch

    vectors = torch.stack([item[1] for item in items])  # (Q, D)
    return search_many(items[0][0], vectors, [i[2] for i in items], [i[3] for i in items])


# -- the app ---------------------------------------------------------------------------------
def create_app(
    embedder: Embedder,
    index_path: str | os.PathLike,
    settings: ServeSettings | None = None,
    *,
    run: str | os.PathLike | None = None,
) -> Any:
    """The service for ``embedder`` over the index file ``index_path``.

    Use it with uvicorn (``contrastkit serve``) or FastAPI's ``TestClient`` (as a context
    manager, so the batcher starts).
    """
    settings = settings or ServeSettings()
    metrics = Metrics()
    holder = IndexHolder(index_path, on_reload=metrics.observe_reload, dim=_model_dim(embedder))
    batcher = Batcher(
        embedder.embed,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        queue=settings.queue,
        threads=settings.threads,
        on_batch=metrics.observe_batch,
    )
    # searches are batched too (one index call for the queries that arrive together), on their
    # own thread; no extra wait: they gather while the previous search runs
    searcher = Batcher(_search_batch, max_batch=settings.max_batch, max_wait_ms=0,
                       queue=settings.queue)  # fmt: skip
    started = time.time()
    thumbs: dict[int, bytes] = {}
    max_body = int(settings.max_body_mb * 1024 * 1024)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await batcher.start()
        await searcher.start()
        try:
            yield
        finally:
            await searcher.stop()
            await batcher.stop()

    app = FastAPI(
        title="contrastkit serve",
        description=f"Embed and search with the run {embedder.name!r} "
        f"({', '.join(embedder.kinds)} queries).",
        version="1",
        lifespan=lifespan,
    )
    app.state.metrics, app.state.holder = metrics, holder
    app.state.batcher, app.state.searcher = batcher, searcher

    allowed = {
        "texts": f"a list of 1..{settings.max_items} non-empty strings",
        "images": f"a list of 1..{settings.max_items} base64-encoded images",
        "query": "a non-empty string (a text query)",
        "image": "a base64-encoded image",
        "k": f"an integer from 1 to {settings.max_k}",
        "filter": 'an object of metadata field -> string/number/boolean, e.g. {"label": "x"}',
        "file": "a multipart file field named 'file' holding an image",
    }

    def _error(err: BadInput) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(BadInput)
    async def _bad_input(request: Request, err: BadInput) -> JSONResponse:
        return _error(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "form")]
        loc = [p for p in loc if p not in _UNION_TAGS]  # pydantic names the union member tried
        fields = _FIELDS.get(request.url.path, ())
        example = _EXAMPLES.get(request.url.path, "")
        if first.get("type") == "json_invalid" or isinstance(first.get("input"), bytes):
            bad = BadInput("body", first.get("input"), f"a JSON object, e.g. {example}", 422)
        elif first.get("type") == "extra_forbidden":
            bad = BadInput(".".join(loc), first.get("input"), f"only the fields {fields}", 422)
        else:
            field = ".".join(loc) or "body"
            hint = allowed.get(loc[0] if loc else "", f"a JSON object, e.g. {example}")
            bad = BadInput(field, first.get("input"), f"{hint} ({first.get('msg')})", 422)
        return _error(bad)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, err: Overloaded) -> JSONResponse:
        metrics.observe_rejected()
        return JSONResponse(
            {"error": str(err), "retry_after": err.retry_after},
            status_code=503,
            headers={"Retry-After": str(err.retry_after)},
        )

    async def _embed(kind: str, items: list[Any]) -> Any:
        return await batcher.submit(kind, items)  # (N, D)

    async def _index_and_filter(flt: Any) -> tuple[_Loaded, dict[str, Any]]:
        """The index this request searches, and its filter checked against it (before the
        model runs, so a bad filter costs no model call)."""
        loaded = await holder.current()
        return loaded, _check_filter(flt, loaded)

    async def _search(vector: Any, k: int, loaded: _Loaded, flt: dict) -> dict[str, Any]:
        job = (loaded, vector[0], k, flt)  # vector: (1, D)
        (hits,) = await searcher.submit(f"search@{loaded.version}", [job])
        n_thumbs = len(embedder.thumbnails) if embedder.thumbnails is not None else 0
        for rank, hit in enumerate(hits, 1):
            hit["rank"] = rank
            hit["thumb"] = f"/thumb/{hit['position']}" if hit["position"] < n_thumbs else None
        return {"k": k, "results": hits, "index_version": loaded.version}

    @app.post("/embed", summary="Embed texts or images")
    async def embed(body: EmbedRequest) -> dict[str, Any]:
        """`{"texts": [...]}` or `{"images": [base64, ...]}` -> float32 embeddings (N, D)."""
        if (body.texts is None) == (body.images is None):
            raise BadInput(
                "texts/images", "both" if body.texts else "neither", "exactly one of the two"
            )
        field, items = ("texts", body.texts) if body.texts is not None else ("images", body.images)
        assert items is not None
        if not 1 <= len(items) <= settings.max_items:
            raise BadInput(field, f"{len(items)} items", allowed[field])
        kind = "text" if field == "texts" else "image"
        _check_kind(embedder, kind, field, items[0])
        if kind == "text":
            for i, text in enumerate(items):
                if not text.strip():
                    raise BadInput(f"texts[{i}]", text, "a non-empty string")
            batch: list[Any] = list(items)
        else:
            batch = await asyncio.to_thread(
                lambda: [
                    _decode_image(_b64(x, f"images[{i}]"), embedder, f"images[{i}]")
                    for i, x in enumerate(items)
                ]
            )
        out = await _embed(kind, batch)
        return {"tower": kind, "dim": int(out.shape[1]), "embeddings": out.tolist()}

    @app.post("/search", summary="Search the index with a text or a base64 image")
    async def search(body: SearchRequest) -> dict[str, Any]:
        """`{"query": "text"}` or `{"image": base64}`, `k`, optional `filter` -> ranked hits
        (id, position in the index, score, metadata, thumbnail URL for image corpora)."""
        if (body.query is None) == (body.image is None):
            raise BadInput(
                "query/image", "both" if body.query is not None else "neither", "exactly one"
            )
        k = _check_k(body.k, settings.max_k)
        if body.query is not None:
            _check_kind(embedder, "text", "query", body.query)
            if not body.query.strip():
                raise BadInput("query", body.query, allowed["query"])
            kind, item = "text", body.query
        else:
            _check_kind(embedder, "image", "image", body.image)
            assert body.image is not None
            data = _b64(body.image, "image")
            kind, item = "image", await asyncio.to_thread(_decode_image, data, embedder, "image")
        loaded, flt = await _index_and_filter(body.filter)
        vector = await _embed(kind, [item])  # (1, D)
        return {"tower": kind, **await _search(vector, k, loaded, flt)}

    @app.post("/search/upload", summary="Search with an uploaded image file (multipart)")
    async def search_upload(
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
        k: int = Form(10),
        filter: str | None = Form(None),
    ) -> dict[str, Any]:
        """Multipart form: `file` (an image), optional `k` and `filter` (a JSON object)."""
        _check_kind(embedder, "image", "file", file.filename)
        k = _check_k(k, settings.max_k)
        flt = None
        if filter:
            try:
                flt = json.loads(filter)
            except json.JSONDecodeError:
                raise BadInput("filter", filter, allowed["filter"]) from None
        data = await file.read()
        item = await asyncio.to_thread(_decode_image, data, embedder, "file")
        loaded, checked = await _index_and_filter(flt)
        vector = await _embed("image", [item])  # (1, D)
        return {"tower": "image", **await _search(vector, k, loaded, checked)}

    @app.get("/thumb/{position}", summary="A corpus image as PNG")
    async def thumb(position: int) -> Response:
        """The corpus image at index position `position` (image corpora only)."""
        images = embedder.thumbnails
        n = len(images) if images is not None else 0
        if not 0 <= position < n:
            raise BadInput(
                "position",
                position,
                f"an index position from 0 to {n - 1}" if n else "none: this corpus is text",
                404,
            )
        if position not in thumbs:
            if len(thumbs) > 4096:
                thumbs.clear()
            thumbs[position] = _png(images[position])  # type: ignore[index]
        return Response(
            thumbs[position], media_type="image/png", headers={"Cache-Control": "max-age=3600"}
        )

    @app.get("/health", summary="Model, index and uptime")
    async def health() -> dict[str, Any]:
        loaded = await holder.current()
        index = loaded.index
        return {
            "status": "ok",
            "model": embedder.name,
            "run": str(run) if run is not None else None,
            "query_kinds": list(embedder.kinds),
            "corpus": "image" if embedder.thumbnails is not None else "text",
            "index_path": str(holder.path),
            "index_size": len(index),
            "index_version": loaded.version,
            "index_backend": index.backend,
            "dimension": index.dim,
            "metric": index.metric,
            "filter_fields": list(loaded.fields),
            "max_k": settings.max_k,
            "auth": settings.api_key is not None,
            "uptime_s": round(time.time() - started, 3),
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        loaded = holder.loaded
        gauges = {
            "contrastkit_queue_depth": ("Requests waiting for the model.", batcher.waiting),
            "contrastkit_index_size": ("Vectors in the served index.", len(loaded.index)),
            "contrastkit_uptime_seconds": ("Seconds since start.", time.time() - started),
        }
        return PlainTextResponse(
            metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.post("/admin/reload", summary="Re-read the index file now")
    async def reload() -> dict[str, Any]:
        try:
            loaded = await holder.current(force=True)
        except Exception as err:  # a broken file: keep serving the old index
            raise BadInput(
                "index", str(holder.path), f"a readable index file ({err})", 409
            ) from None
        return {"index_version": loaded.version, "index_size": len(loaded.index)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page())

    return _Guard(app, settings.api_key, max_body, metrics)


_UNION_TAGS = {"str", "int", "float", "bool", "list[str]", "dict[str,union[str,int,float,bool]]"}
_FIELDS = {
    "/embed": ("texts", "images"),
    "/search": ("query", "image", "k", "filter"),
    "/search/upload": ("file", "k", "filter"),
}
_EXAMPLES = {
    "/embed": '{"texts": ["a text"]}',
    "/search": '{"query": "a text", "k": 5}',
    "/search/upload": "a multipart form with file=<image>, k=5",
}


def _model_dim(embedder: Embedder) -> int:
    """D of the model's embeddings, from one probe query (checked against every index read)."""
    import torch

    if "image" in embedder.kinds and embedder.image_shape is not None:
        probe = embedder.embed("image", torch.zeros(1, *embedder.image_shape))  # (1, D)
    else:
        probe = embedder.embed("text", ["probe"])  # (1, D)
    return int(probe.shape[1])


def _png(image: Any) -> bytes:
    """(C, H, W) in [0, 1] -> PNG bytes."""
    from PIL import Image

    pixels = (image.float().clamp(0, 1) * 255).round().byte()  # (C, H, W)
    array = pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0)  # (H, W[, C])
    buf = io.BytesIO()
    Image.fromarray(array.contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def _page() -> str:
    return resources.files("contrastkit.serve").joinpath("page.html").read_text(encoding="utf-8")


class _Guard:
    """ASGI wrapper around the app: API key, body-size limit (413) and request metrics.

    The body is read here up to the limit before the app sees it, so an oversized or endless
    upload costs at most ``max_body`` bytes of memory.
    """

    def __init__(self, app: Any, api_key: str | None, max_body: int, metrics: Metrics) -> None:
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics
        self.state = app.state

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        if self.api_key is None:
            return True
        key = self.api_key.encode()
        given = headers.get(b"x-api-key", b"")
        bearer = headers.get(b"authorization", b"")
        if bearer[:7].lower() == b"bearer ":
            given = given or bearer[7:].strip()
        return hmac.compare_digest(given, key)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        path = scope.get("path", "")
        headers = dict(scope.get("headers", ()))
        try:
            if path not in PUBLIC_PATHS and not self._authorised(headers):
                await _json(
                    send_and_record,
                    401,
                    {
                        "error": "missing or wrong API key; send `Authorization: Bearer KEY` or "
                        "`X-API-Key: KEY`",
                        "field": "Authorization",
                        "value": "(hidden)",
                        "allowed": "the key the server was started with (--api-key)",
                    },
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            body = await self._read_body(scope, receive, headers)
            if body is None:
                await _json(
                    send_and_record,
                    413,
                    BadInput(
                        "body",
                        f"more than {self.max_body} bytes",
                        f"at most {self.max_body / 2**20:g} MiB (--max-body-mb)",
                        413,
                    ).body(),
                )
                return
            await self.app(scope, _replay(body, receive), send_and_record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or ("/" if path == "/" else "other")
            self.metrics.observe_request(endpoint, status["code"], time.perf_counter() - start)

    async def _read_body(
        self, scope: dict, receive: Callable, headers: dict[bytes, bytes]
    ) -> bytes | None:
        """The whole request body, or None once it passes ``max_body`` bytes."""
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict]]:
    """A ``receive`` that hands the app the body already read, then the client's own messages
    (a later ``http.disconnect``)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(send: Callable, status: int, body: dict, headers: dict | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def create_app_from_run(
    run: str | os.PathLike,
    index: str | os.PathLike | None = None,
    settings: ServeSettings | None = None,
) -> Any:
    """:func:`create_app` on a run folder and its index (default ``RUN/index/corpus.ckindex``)."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{run}: not a run folder (no config.yaml); pass the folder `contrastkit train` printed."
        )
    from contrastkit.train.search import INDEX_FILE

    path = Path(index) if index is not None else run / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no index file; build it with `contrastkit index {run}` or pass --index PATH."
        )
    return create_app(Embedder.from_run(run), path, settings, run=run)
