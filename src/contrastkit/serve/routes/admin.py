"""Operations on the running service: ``POST /admin/reload`` (behind the API key when one is set).

(No ``from __future__ import annotations``: see ``routes/search.py``.)
"""

from typing import Any

from fastapi import APIRouter

from contrastkit.serve.errors import BadInput
from contrastkit.serve.state import ServeState

__all__ = ["router"]


def router(state: ServeState) -> APIRouter:
    """The admin routes of ``state``'s service."""
    api = APIRouter(prefix="/admin", tags=["admin"])

    @api.post("/reload", summary="Re-read the index file now")
    async def reload() -> dict[str, Any]:
        try:
            loaded = await state.holder.current(force=True)
        except Exception as err:  # a broken file: keep serving the old index
            raise BadInput(
                "index", str(state.holder.path), f"a readable index file ({err})", 409
            ) from None
        return {"index_version": loaded.version, "index_size": len(loaded.index)}

    return api
