"""What a browser reads: the search page ``GET /``, corpus thumbnails ``GET /thumb/{position}``
and corpus clips ``GET /audio/{position}`` (audio runs).

(No ``from __future__ import annotations``: see ``routes/search.py``.)
"""

import asyncio
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from contrastkit.serve.audio import audio_media_type
from contrastkit.serve.errors import BadInput
from contrastkit.serve.images import png
from contrastkit.serve.state import ServeState

__all__ = ["router"]

MAX_THUMBS = 4096  # PNGs kept in memory; the cache starts over past this
THUMB_THREADS = 4  # thumbnails decoded and encoded at once, in worker threads


def router(state: ServeState) -> APIRouter:
    """The page and thumbnail routes of ``state``'s service."""
    api = APIRouter(tags=["page"])
    # a corpus image is read (from disk, for an image folder) and encoded off the event loop,
    # a few at a time: a page of thumbnails never stalls the other requests
    slots = asyncio.Semaphore(THUMB_THREADS)

    @api.get("/thumb/{position}", summary="A corpus image as PNG")
    async def thumb(position: int) -> Response:
        """The corpus image at index position `position` (image corpora only)."""
        images = state.embedder.thumbnails
        n = len(images) if images is not None else 0
        if not 0 <= position < n:
            allowed = f"an index position from 0 to {n - 1}" if n else "none: this corpus is text"
            raise BadInput("position", position, allowed, 404)
        if position not in state.thumbs:
            if len(state.thumbs) > MAX_THUMBS:
                state.thumbs.clear()
            async with slots:
                encoded = await asyncio.to_thread(lambda: png(images[position]))  # type: ignore[index]
            state.thumbs[position] = encoded
        return Response(
            state.thumbs[position],
            media_type="image/png",
            headers={"Cache-Control": "max-age=3600"},
        )

    @api.get("/audio/{position}", summary="A corpus clip, as its file's bytes")
    async def audio(position: int) -> Response:
        """The corpus clip at index position `position` (audio corpora only): the bytes of the
        run's own corpus file at that position (a position, never a path, is taken)."""
        clip_path, n = state.embedder.clip_path, state.embedder.n_clips
        if clip_path is None or not 0 <= position < n:
            allowed = (
                f"an index position from 0 to {n - 1}" if n else "none: this corpus is not audio"
            )
            raise BadInput("position", position, allowed, 404)
        path = clip_path(position)
        async with slots:
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError:  # the corpus file went away since the run was indexed
                raise BadInput("position", position, f"a clip whose file exists ({path.name} "
                               "is missing)", 404) from None  # fmt: skip
        return Response(data, media_type=audio_media_type(path),
                        headers={"Cache-Control": "max-age=3600"})  # fmt: skip

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        page = resources.files("contrastkit.serve").joinpath("page.html")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    return api
