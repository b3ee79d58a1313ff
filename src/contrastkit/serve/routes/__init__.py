"""The service's routes, one module per concern; each has ``router(state) -> APIRouter``.

To add a concern (e.g. an OpenAI-compatible ``/v1/embeddings``): write ``routes/NAME.py`` with
``router(state: ServeState) -> APIRouter`` that declares its request models (bounded by
``state.settings``, built from :mod:`contrastkit.serve.requests`, so their errors answer in the
service's one shape) and its routes, and add it to :data:`ROUTERS`; ``create_app`` includes
them in this order.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter

from contrastkit.serve.routes import admin, embed, health, openai, pages, search, tei
from contrastkit.serve.state import ServeState

__all__ = ["ROUTERS", "RouterFactory"]

RouterFactory = Callable[[ServeState], APIRouter]

ROUTERS: tuple[RouterFactory, ...] = (
    search.router,
    embed.router,
    pages.router,
    health.router,
    admin.router,
    openai.router,
    tei.router,
)
