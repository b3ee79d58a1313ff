"""``contrastkit serve``: a trained run and its index as a web service with a search page.

Reads runs only through :class:`~contrastkit.serve.embedder.Embedder` (an adapter over
``contrastkit.train.run.load_run``) and indexes through :func:`contrastkit.index.load_index`.
FastAPI, uvicorn and prometheus_client are the optional extra ``contrastkit[serve]``: they are
imported when the app or the metrics are first used (``create_app``, ``Metrics`` and friends),
so the batcher and the embedder import without them.
"""

from __future__ import annotations

from typing import Any

from contrastkit.serve.batcher import Batcher, Overloaded
from contrastkit.serve.embedder import Embedder

__all__ = [
    "Batcher",
    "Embedder",
    "Metrics",
    "Overloaded",
    "ServeSettings",
    "check_bind",
    "create_app",
    "create_app_from_run",
    "resolve_api_key",
]

# names that need the serve extra: imported on first use, with the install hint
_LAZY = {
    "Metrics": "metrics",
    "ServeSettings": "app",
    "check_bind": "app",
    "create_app": "app",
    "create_app_from_run": "app",
    "resolve_api_key": "app",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"contrastkit.serve.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'contrastkit.serve' has no attribute {name!r}")
