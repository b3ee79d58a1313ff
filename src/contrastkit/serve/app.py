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
import io
import json
import os
import time
from collections.abc import AsyncIterator
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
from contrastkit.serve.errors import BadInput
from contrastkit.serve.guard import Guard
from contrastkit.serve.live_index import IndexHolder, LoadedIndex, search_batch
from contrastkit.serve.metrics import Metrics

__all__ = ["LOOPBACK", "ServeSettings", "check_bind", "create_app", "create_app_from_run"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_PIXELS = 25_000_000  # an upload larger than this (e.g. 5000 x 5000) is refused undecoded


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


def _check_filter(flt: Any, loaded: LoadedIndex) -> dict[str, Any]:
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
    searcher = Batcher(search_batch, max_batch=settings.max_batch, max_wait_ms=0,
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
        docs_url=None,  # served below from local files: the page works without a network
    )
    app.openapi_version = "3.0.3"  # the packaged Swagger UI (4.x) renders 3.0 documents
    _add_offline_docs(app)
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

    async def _index_and_filter(flt: Any) -> tuple[LoadedIndex, dict[str, Any]]:
        """The index this request searches, and its filter checked against it (before the
        model runs, so a bad filter costs no model call)."""
        loaded = await holder.current()
        return loaded, _check_filter(flt, loaded)

    async def _search(vector: Any, k: int, loaded: LoadedIndex, flt: dict) -> dict[str, Any]:
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

    return Guard(app, settings.api_key, max_body, metrics)


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


DOCS_ASSETS = "/docs-assets"


def _add_offline_docs(app: Any) -> None:
    """``GET /docs``: FastAPI's Swagger UI page with its JavaScript and CSS served from the
    ``swagger-ui-bundle`` package instead of a CDN (a service on a closed network still
    documents itself)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="contrastkit serve - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )
