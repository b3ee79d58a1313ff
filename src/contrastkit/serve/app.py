"""The FastAPI app, assembled: the service's parts (:class:`~contrastkit.serve.state.ServeState`),
its routers (:data:`contrastkit.serve.routes.ROUTERS`), the error handlers and the guard.

Built on an :class:`~contrastkit.serve.embedder.Embedder` and an index file, never on the training
code. Requests are embedded in micro-batches (:mod:`contrastkit.serve.batcher`); the index is
re-read when its file changes (``contrastkit index RUN`` replaces it by an atomic rename), and a
request already searching keeps the index it started with, so a swap never fails one.

Every bad input gets a 400 (404 for a thumbnail outside the corpus or an unknown model, 413 for
a body, token or pixel budget exceeded, 429 past ``--max-concurrency``)
whose JSON body names the field, the value received and what is allowed:
``{"error": ..., "field": ..., "value": ..., "allowed": ...}``; the request models of the routes
are the one place inputs are checked (:mod:`contrastkit.serve.requests`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
except ImportError as err:  # pragma: no cover - the optional extra
    raise ImportError(
        f"contrastkit serve needs FastAPI ({err.name} missing); "
        "install it with `pip install 'contrastkit[serve]'`."
    ) from None

from contrastkit.serve.batcher import Batcher, Overloaded
from contrastkit.serve.embedder import Embedder
from contrastkit.serve.errors import BadInput
from contrastkit.serve.guard import Guard
from contrastkit.serve.live_index import IndexHolder, NoIndexHolder, search_batch
from contrastkit.serve.metrics import Metrics
from contrastkit.serve.requests import bad_input
from contrastkit.serve.routes import ROUTERS
from contrastkit.serve.state import ServeSettings, ServeState

__all__ = [
    "API_KEY_ENV",
    "LOOPBACK",
    "ServeSettings",
    "check_bind",
    "create_app",
    "create_app_from_run",
    "resolve_api_key",
]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DOCS_ASSETS = "/docs-assets"
API_KEY_ENV = "CONTRASTKIT_API_KEY"


def resolve_api_key(
    api_key: str | None,
    api_key_file: str | os.PathLike | None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The service's API key: ``--api-key KEY`` (visible to other local users in ``ps``),
    ``--api-key-file PATH`` (one line, readable by its owner only) or the environment variable
    ``CONTRASTKIT_API_KEY``, in that order; None when none is given. Raises ``ValueError`` for
    both options at once, a file others may read, or an empty or multi-line key.

    >>> resolve_api_key(None, None, {"CONTRASTKIT_API_KEY": "s3cret"})
    's3cret'
    >>> resolve_api_key(None, None, {}) is None
    True
    """
    environ = os.environ if environ is None else environ
    if api_key is not None and api_key_file is not None:
        raise ValueError("--api-key and --api-key-file both given; pass one of them.")
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"--api-key-file {path}: no such file.") from None
        if mode & 0o077:
            raise ValueError(
                f"--api-key-file {path}: mode {mode & 0o777:o} lets other users read it; "
                f"`chmod 600 {path}` (readable by you only)."
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) != 1 or not lines[0].strip():
            got = "is empty" if not "".join(lines).strip() else f"holds {len(lines)} lines"
            raise ValueError(f"--api-key-file {path}: {got}; write the key alone on one line.")
        return lines[0].strip()
    if api_key is not None:
        return api_key
    key = environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ValueError(f"{API_KEY_ENV} is set but empty; set it to the key or unset it.")
    return key.strip() if key is not None else None


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to bind beyond loopback without an API key.

    >>> check_bind("127.0.0.1", None)
    >>> check_bind("0.0.0.0", None)
    Traceback (most recent call last):
    ...
    ValueError: --host '0.0.0.0' is not loopback: give an API key (--api-key-file PATH, CONTRASTKIT_API_KEY or --api-key KEY) to serve beyond this machine, or bind --host 127.0.0.1.
    """
    if host not in LOOPBACK and not api_key:
        raise ValueError(
            f"--host {host!r} is not loopback: give an API key (--api-key-file PATH, "
            f"{API_KEY_ENV} or --api-key KEY) to serve beyond this machine, or bind --host "
            "127.0.0.1."
        )


def create_app(
    embedder: Embedder,
    index_path: str | os.PathLike,
    settings: ServeSettings | None = None,
    *,
    run: str | os.PathLike | None = None,
) -> Any:
    """The service for ``embedder`` over the index file ``index_path``.

    Use it with uvicorn (``contrastkit serve``) or FastAPI's ``TestClient`` (as a context
    manager, so the batchers start). Its parts are ``app.state.serve`` (a ``ServeState``).

    A model that embeds nothing (``embedder.kinds == ()``: a cross-encoder run) is served with
    no index (``index_path`` is not read): ``/rerank``, ``/info``, ``/health``, ``/metrics``,
    ``/v1/models`` and the docs answer, the embedding routes answer 404 naming why
    (:func:`_refuse_embedding_routes`).
    """
    if not embedder.kinds and embedder.rerank is None:
        raise ValueError(f"{embedder.name}: the model neither embeds queries nor reranks texts; "
                         "serve a run trained with an encoder or a cross-encoder (task: rerank).")  # fmt: skip
    state = _serve_state(embedder, index_path, settings or ServeSettings(), run)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await state.batcher.start()
        await state.searcher.start()
        try:
            yield
        finally:
            await state.searcher.stop()
            await state.batcher.stop()

    app = FastAPI(
        title="contrastkit serve",
        description=f"Embed and search with the run {embedder.name!r} "
        f"({', '.join(embedder.kinds)} queries).",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by _add_offline_docs: the page works without a network
        redoc_url=None,  # ReDoc would load its script from a CDN, on the origin of the API key
    )
    app.openapi_version = "3.0.3"  # the packaged Swagger UI (4.x) renders 3.0 documents
    app.state.serve = state
    _add_error_handlers(app, state.metrics)
    _add_offline_docs(app)
    routers = [build(state) for build in ROUTERS]
    for api in routers:
        app.include_router(api)
    if not embedder.kinds:
        _refuse_embedding_routes(app, embedder.name, [r for api in routers for r in api.routes])
    max_body = int(state.settings.max_body_mb * 1024 * 1024)
    return Guard(app, state.settings.api_key, max_body, state.metrics,
                 max_concurrency=state.settings.max_concurrency)  # fmt: skip


def _serve_state(
    embedder: Embedder,
    index_path: str | os.PathLike,
    settings: ServeSettings,
    run: str | os.PathLike | None,
) -> ServeState:
    """The model, the index (checked against the model's width), the two batchers, the metrics."""
    metrics = Metrics()
    holder: Any = (
        IndexHolder(index_path, on_reload=metrics.observe_reload, dim=_model_dim(embedder))
        if embedder.kinds
        else NoIndexHolder()  # a cross-encoder embeds nothing: no index to search
    )
    batcher = Batcher(
        embedder.embed,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        queue=settings.queue,
        threads=settings.threads,
        on_batch=metrics.observe_batch,
    )
    # searches are batched too (one index call for the queries that arrive together), on their
    # own thread, adapting to load as the model's batches do: a search of a flat index costs one
    # pass over the corpus whatever the batch (276 MB for the demo's), so under load it waits
    # (at most --max-wait-ms) for the rest of the model batch its queries came from
    searcher = Batcher(search_batch, max_batch=settings.max_batch,
                       max_wait_ms=settings.max_wait_ms, queue=settings.queue,
                       on_batch=metrics.observe_search_batch)  # fmt: skip
    return ServeState(embedder, settings, holder, batcher, searcher, metrics,
                      run=str(run) if run is not None else None)  # fmt: skip


def _add_error_handlers(app: Any, metrics: Metrics) -> None:
    """Bad input of any kind answers as :class:`BadInput`; a full queue as 503 + Retry-After."""

    @app.exception_handler(BadInput)
    async def _bad_input(request: Request, err: BadInput) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        body_field = getattr(request.scope.get("route"), "body_field", None)
        model = getattr(getattr(body_field, "field_info", None), "annotation", None)
        bad = bad_input(err.errors(), model if isinstance(model, type) else None)
        return JSONResponse(bad.body(), status_code=bad.status)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, err: Overloaded) -> JSONResponse:
        metrics.observe_rejected()
        return JSONResponse(
            {"error": str(err), "retry_after": err.retry_after},
            status_code=503,
            headers={"Retry-After": str(err.retry_after)},
        )


def _model_dim(embedder: Embedder) -> int:
    """D of the model's embeddings, from one probe query (checked against every index read)."""
    import torch

    if "image" in embedder.kinds and embedder.image_shape is not None:
        probe = embedder.embed("image", torch.zeros(1, *embedder.image_shape))  # (1, D)
    elif "text" not in embedder.kinds and embedder.clip_samples is not None:  # audio only
        n = embedder.clip_samples
        probe = embedder.embed("audio", [(torch.zeros(n), torch.ones(n, dtype=torch.bool))])
    else:
        probe = embedder.embed("text", ["probe"])  # (1, D)
    return int(probe.shape[1])


# what a run that embeds nothing (a cross-encoder) still answers; every other route of ROUTERS
# answers 404 naming why
RERANK_ROUTES = ("/rerank", "/info", "/health", "/metrics", "/v1/models", "/docs", "/openapi.json")


def _refuse_embedding_routes(app: Any, name: str, routes: list[Any]) -> None:
    """Answer the ``routes`` that embed or search (``/embed``, ``/search``, ``/v1/embeddings``,
    ``/similarity``, the page, ...) with the service's one 404 body: this run embeds nothing."""
    refused = [route.path_regex for route in routes
               if getattr(route, "path", None) not in RERANK_ROUTES]  # fmt: skip
    bad = BadInput("model", name, "a run that embeds texts or images; this run is a "
                   "cross-encoder (task: rerank): it scores (query, text) pairs and embeds "
                   "nothing, so it has no embeddings or index; use POST /rerank", 404)  # fmt: skip

    @app.middleware("http")
    async def _embeds_nothing(request: Request, call_next: Any) -> Any:
        if any(pattern.match(request.url.path) for pattern in refused):
            return JSONResponse(bad.body(), status_code=bad.status)
        return await call_next(request)


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

    if index is None and not (run / INDEX_FILE).is_file():  # a cross-encoder run has no index
        embedder = Embedder.from_run(run)
        if not embedder.kinds:
            return create_app(embedder, run / INDEX_FILE, settings, run=run)
    if index is not None and str(index).startswith("milvus://"):  # a Milvus collection
        return create_app(_indexed_embedder(run, index), str(index), settings, run=run)
    path = Path(index) if index is not None else run / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no index file; build it with `contrastkit index {run}` or pass --index PATH."
        )
    return create_app(_indexed_embedder(run, path), path, settings, run=run)


def _indexed_embedder(run: Path, index: str | os.PathLike) -> Embedder:
    """The run's :class:`Embedder`, refused (one line) when it embeds nothing: a cross-encoder
    run searches no index."""
    embedder = Embedder.from_run(run)
    if not embedder.kinds:
        raise ValueError(
            f"--index {index}: {run} is a cross-encoder run (task: rerank); it embeds nothing and "
            "searches no index. Serve it without --index (it answers POST /rerank)."
        )
    return embedder


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
