"""What an operator reads: ``GET /health`` and the Prometheus ``GET /metrics``.

(No ``from __future__ import annotations``: see ``routes/search.py``.)
"""

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from contrastkit.serve.metrics import CONTENT_TYPE
from contrastkit.serve.state import ServeState

__all__ = ["router"]


def router(state: ServeState) -> APIRouter:
    """The health and metrics routes of ``state``'s service; registers the scrape-time gauges."""
    metrics = state.metrics
    metrics.gauge("contrastkit_queue_depth", "Requests waiting for the model.",
                  lambda: state.batcher.waiting)  # fmt: skip
    metrics.gauge("contrastkit_index_size", "Vectors in the served index.",
                  lambda: len(state.holder.loaded.index))  # fmt: skip
    metrics.gauge("contrastkit_uptime_seconds", "Seconds since start.",
                  lambda: time.time() - state.started)  # fmt: skip
    api = APIRouter(tags=["status"])

    @api.get("/health", summary="Model, index and uptime")
    async def health(request: Request) -> dict[str, Any]:
        """Public (a load balancer's probe); the run folder and index file are shown as absolute
        paths only to a caller that sent the API key, by name otherwise."""
        loaded = await state.holder.current()
        index, embedder = loaded.index, state.embedder
        shown = getattr(request.state, "authorised", False)

        def path(value: Any) -> Any:
            return value if value is None or shown else Path(value).name

        return {
            "status": "ok",
            "model": embedder.name,
            "run": path(state.run),
            "query_kinds": list(embedder.kinds),
            "corpus": "image"
            if embedder.thumbnails is not None
            else "audio"
            if embedder.n_clips
            else "text",
            "index_path": None  # a cross-encoder run is served without an index
            if state.holder.path is None
            else str(state.holder.path)
            if state.holder.remote
            else path(str(state.holder.path)),
            "index_size": len(index),
            "index_version": loaded.version,
            "index_backend": index.backend,
            "dimension": index.dim,
            "metric": index.metric,
            "filter_fields": list(loaded.fields),
            "max_k": state.settings.max_k,
            "auth": state.settings.api_key is not None,
            "uptime_s": round(time.time() - state.started, 3),
        }

    @api.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return api
