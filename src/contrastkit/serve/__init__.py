"""``contrastkit serve``: a trained run and its index as a web service with a search page.

Reads runs only through :class:`~contrastkit.serve.embedder.Embedder` (an adapter over
``contrastkit.train.run.load_run``) and indexes through :func:`contrastkit.index.load_index`.
FastAPI and uvicorn are the optional extra ``contrastkit[serve]``: they are imported when the app
module is first used (``create_app`` and friends), so the batcher, the metrics and the embedder
import without them.
"""

from __future__ import annotations

from typing import Any

from contrastkit.serve.batcher import Batcher, Overloaded
from contrastkit.serve.embedder import Embedder
from contrastkit.serve.metrics import Metrics

__all__ = [
    "Batcher",
    "Embedder",
    "Metrics",
    "Overloaded",
    "ServeSettings",
    "check_bind",
    "create_app",
    "create_app_from_run",
]

_APP_NAMES = ("ServeSettings", "check_bind", "create_app", "create_app_from_run")


def __getattr__(name: str) -> Any:
    if name in _APP_NAMES:  # needs FastAPI: import on first use, with the install hint
        from contrastkit.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'contrastkit.serve' has no attribute {name!r}")
