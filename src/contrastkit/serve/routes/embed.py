"""``POST /embed``: texts or base64 images -> float32 embeddings (N, D).

(No ``from __future__ import annotations``: see ``routes/search.py``.)
"""

import asyncio
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contrastkit.serve.images import decode_image
from contrastkit.serve.requests import Base64Image, NonBlank, count_between, exactly_one
from contrastkit.serve.state import ServeState

__all__ = ["router"]


def router(state: ServeState) -> APIRouter:
    """The embedding route of ``state``'s service."""
    n = state.settings.max_items

    class EmbedRequest(BaseModel):
        """``/embed``: exactly one of ``texts`` (N strings) or ``images`` (N base64 images)."""

        model_config = ConfigDict(extra="forbid")
        example: ClassVar[str] = '{"texts": ["a text"]}'
        texts: Annotated[list[NonBlank] | None, count_between(1, n, "non-empty strings")] = Field(
            None, description=f"a list of 1..{n} non-empty strings"
        )
        images: Annotated[
            list[Base64Image] | None, count_between(1, n, "base64-encoded images")
        ] = Field(None, description=f"a list of 1..{n} base64-encoded images")

        one_kind = model_validator(mode="before")(
            exactly_one(("texts", "images"), state.embedder.kinds)
        )

    api = APIRouter(tags=["embed"])

    @api.post("/embed", summary="Embed texts or images")
    async def embed(body: EmbedRequest) -> dict[str, Any]:
        """`{"texts": [...]}` or `{"images": [base64, ...]}` -> float32 embeddings (N, D)."""
        if body.texts is not None:
            kind, batch = "text", list(body.texts)
        else:  # the images arrive validated to their bytes; decoding needs the model's shape
            kind, shape, images = "image", state.embedder.image_shape, body.images or []
            batch = await asyncio.to_thread(
                lambda: [decode_image(x, shape, f"images[{i}]") for i, x in enumerate(images)]
            )
        out = await state.embed(kind, batch)  # (N, D)
        return {"tower": kind, "dim": int(out.shape[1]), "embeddings": out.tolist()}

    return api
