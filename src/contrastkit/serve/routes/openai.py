"""OpenAI-compatible embeddings: ``POST /v1/embeddings`` and ``GET /v1/models``.

Any OpenAI client (the ``openai`` Python package, LangChain's ``OpenAIEmbeddings``, vector
database integrations) points at the service with ``base_url="http://HOST:PORT/v1"`` and the
service's API key as its ``api_key``::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")
    client.embeddings.create(model="MODEL", input=["a text", "another"]).data[0].embedding

``model`` is the run's name (``GET /v1/models`` lists it); ``encoding_format`` ``"float"``
(lists) or ``"base64"`` (little-endian float32 bytes, what the ``openai`` client asks for by
default); ``dimensions`` is accepted for a Matryoshka-trained run (``loss.matryoshka_dims``):
the first ``dimensions`` coordinates, renormalised; any other run answers 400. ``usage`` counts
tokens with the model's own tokenizer. The embeddings are those of ``POST /embed``.

(No ``from __future__ import annotations``: see ``routes/search.py``.)
"""

import base64
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from contrastkit.serve.errors import BadInput
from contrastkit.serve.requests import NonBlank, StrictInt, count_between, one_or_many
from contrastkit.serve.state import ServeState

__all__ = ["router"]


def router(state: ServeState) -> APIRouter:
    """The OpenAI-compatible routes of ``state``'s service."""
    name, n = state.embedder.name, state.settings.max_items
    dims = state.embedder.trained_dims

    class EmbeddingsRequest(BaseModel):
        """``/v1/embeddings``, as OpenAI's API takes it."""

        model_config = ConfigDict(extra="forbid")
        example: ClassVar[str] = f'{{"model": "{name}", "input": ["a text"]}}'
        input: Annotated[
            list[NonBlank],
            BeforeValidator(one_or_many),
            count_between(1, n, "non-empty strings"),
        ] = Field(description=f"a non-empty string or a list of 1..{n} non-empty strings")
        model: StrictStr = Field(description=f"the served model, {name!r} (GET /v1/models)")
        encoding_format: Literal["float", "base64"] = Field(
            "float", description="'float' or 'base64'"
        )
        dimensions: StrictInt | None = Field(
            None,
            description=f"one of the Matryoshka widths this run was trained at, {list(dims)}"
            if dims
            else "omitted: this run was not trained with Matryoshka (loss.matryoshka_dims)",
        )
        user: StrictStr | None = Field(None, description="a string (accepted, not used)")

    api = APIRouter(tags=["openai"])

    @api.get("/v1/models", summary="The served model (OpenAI's list)")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(state)]}

    @api.get("/v1/models/{model}", summary="One model (OpenAI's retrieve)")
    async def model(model: str) -> dict[str, Any]:
        check_model(state, model)
        return _model_card(state)

    @api.post("/v1/embeddings", summary="Embed texts (OpenAI-compatible)")
    async def embeddings(body: EmbeddingsRequest) -> dict[str, Any]:
        """`{"model": ..., "input": "text" | ["text", ...]}` -> OpenAI's embedding list."""
        check_model(state, body.model)
        if "text" not in state.embedder.kinds:
            raise BadInput("input", body.input[0], "this model embeds images only; send them to "
                           "POST /embed as {\"images\": [base64, ...]}")  # fmt: skip
        if body.dimensions is not None and body.dimensions not in (dims or ()):
            allowed = (
                f"one of {list(dims)} (the Matryoshka widths of this run) or omitted"
                if dims
                else "omitted: this run was not trained with Matryoshka (loss.matryoshka_dims)"
            )
            raise BadInput("dimensions", body.dimensions, allowed)
        texts = list(body.input)
        tokens = state.check_tokens(texts, "input")
        out = await state.embed("text", texts)  # (N, D)
        if body.dimensions is not None and body.dimensions < out.shape[1]:
            from contrastkit.losses.matryoshka import truncate_embeddings

            out = truncate_embeddings(out, body.dimensions)  # (N, dimensions)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(row, body.encoding_format)}
            for i, row in enumerate(out.numpy())
        ]
        total = sum(tokens)
        return {
            "object": "list",
            "data": data,
            "model": name,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }

    return api


def check_model(state: ServeState, model: str) -> None:
    """404 naming ``model`` unless it is the served model's name."""
    if model != state.embedder.name:
        raise BadInput("model", model, f"the served model {state.embedder.name!r}", 404)


def _model_card(state: ServeState) -> dict[str, Any]:
    return {
        "id": state.embedder.name,
        "object": "model",
        "created": int(state.started),
        "owned_by": "contrastkit",
    }


def _encode(row: np.ndarray, encoding: str) -> Any:
    """One (D,) embedding as OpenAI sends it: a list of floats, or base64 of little-endian
    float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return row.tolist()
