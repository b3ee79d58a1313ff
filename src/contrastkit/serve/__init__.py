"""``contrastkit serve``: a trained run and its index as a web service with a search page.

Reads runs only through :class:`~contrastkit.serve.embedder.Embedder` (an adapter over
``contrastkit.train.run.load_run``) and indexes through :func:`contrastkit.index.load_index`.
FastAPI and uvicorn are the optional extra ``contrastkit[serve]``; they are imported when an app
is built, not when this package is.
"""

from __future__ import annotations

from contrastkit.serve.app import ServeSettings, check_bind, create_app, create_app_from_run
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
