"""text-embeddings-inference (TEI) compatible routes: ``POST /similarity``, ``POST /rerank``,
``GET /info``; TEI's ``POST /embed`` body (``inputs``, ``normalize``, ``truncate``) is taken by
``routes/embed.py`` through :func:`tei_embed`.

A TEI client (``huggingface_hub.InferenceClient(model="http://HOST:PORT")``'s
``feature_extraction``, ``sentence_similarity``, or plain HTTP) gets TEI's answers:

* ``POST /embed {"inputs": "text" | ["text", ...], "normalize": true, "truncate": false}``
  -> ``[[float, ...], ...]`` (one row per input; ``normalize`` L2-normalises, ``truncate:
  false`` refuses a text longer than the model reads with 413, as TEI does);
* ``POST /similarity {"inputs": {"source_sentence": "...", "sentences": ["...", ...]}}``
  -> ``[float, ...]`` cosine similarities;
* ``POST /rerank {"query": "...", "texts": ["...", ...], "return_text": false}``
  -> ``[{"index": i, "score": s[, "text": ...]}, ...]`` best first, only for a run that is or
  has a cross-encoder: the :class:`~contrastkit.serve.embedder.Embedder`'s ``rerank``
  (``(query, texts) -> (N,)`` scores, from the task's ``rerank_scores``); any other run
  answers 404 in the service's one error shape;
* ``GET /info`` -> the model id, type, dtype and the service's limits.

Errors keep the service's one 4xx shape (``{"error", "field", "value", "allowed"}``), not TEI's.

(No ``from __future__ import annotations``: see ``routes/search.py``.)
"""

from typing import Annotated, Any, ClassVar

import torch
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from contrastkit.serve.errors import BadInput
from contrastkit.serve.requests import NonBlank, count_between
from contrastkit.serve.state import ServeState

__all__ = ["router", "tei_embed"]

VERSION = "1"


def router(state: ServeState) -> APIRouter:
    """The TEI-compatible routes of ``state``'s service (``/embed`` lives in ``routes/embed.py``)."""
    n = state.settings.max_items
    texts_hint = f"a list of 1..{n} non-empty strings"

    class SimilarityInputs(BaseModel):
        model_config = ConfigDict(extra="forbid")
        source_sentence: NonBlank = Field(description="a non-empty string")
        sentences: Annotated[list[NonBlank], count_between(1, n, "non-empty strings")] = Field(
            description=texts_hint
        )

    class SimilarityRequest(BaseModel):
        """``/similarity``: TEI's body."""

        model_config = ConfigDict(extra="forbid")
        example: ClassVar[str] = '{"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}'
        inputs: SimilarityInputs = Field(
            description='{"source_sentence": a string, "sentences": a list of strings}'
        )
        parameters: dict[str, Any] | None = Field(None, description="an object (not used)")

    class RerankRequest(BaseModel):
        """``/rerank``: TEI's body."""

        model_config = ConfigDict(extra="forbid")
        example: ClassVar[str] = '{"query": "a question", "texts": ["a passage", "another"]}'
        query: NonBlank = Field(description="a non-empty string")
        texts: Annotated[list[NonBlank], count_between(1, n, "non-empty strings")] = Field(
            description=texts_hint
        )
        return_text: StrictBool = Field(False, description="true or false")
        raw_scores: StrictBool = Field(False, description="true or false")
        truncate: StrictBool = Field(False, description="true or false")

    api = APIRouter(tags=["text-embeddings-inference"])

    @api.get("/info", summary="Model and limits (TEI's /info)")
    async def info() -> dict[str, Any]:
        embedder, settings = state.embedder, state.settings
        kind = "reranker" if embedder.rerank is not None else "embedding"
        return {
            "model_id": embedder.name,
            "model_sha": None,
            "model_dtype": "float32",
            "model_type": {kind: {"query_kinds": list(embedder.kinds)}},
            "max_concurrent_requests": settings.max_concurrency,
            "max_input_length": embedder.max_tokens,
            "max_batch_tokens": settings.max_tokens,
            "max_client_batch_size": settings.max_items,
            "max_batch_requests": settings.max_batch,
            "tokenization_workers": 1,
            "version": VERSION,
        }

    @api.post("/similarity", summary="Cosine similarity of a sentence to others (TEI)")
    async def similarity(body: SimilarityRequest) -> list[float]:
        _needs_text(state, "inputs.source_sentence", body.inputs.source_sentence)
        texts = [body.inputs.source_sentence, *body.inputs.sentences]
        state.check_tokens(texts, "inputs")
        out = torch.nn.functional.normalize(await state.embed("text", texts), dim=1)  # (1+N, D)
        return (out[1:] @ out[0]).tolist()  # (N,)

    @api.post("/rerank", summary="Score texts against a query with a cross-encoder (TEI)")
    async def rerank(body: RerankRequest) -> list[dict[str, Any]]:
        scorer = state.embedder.rerank
        if scorer is None:
            raise BadInput("model", state.embedder.name, "a run that is or has a cross-encoder "
                           "(`task: rerank`); this one embeds: use /similarity or /embed",
                           404)  # fmt: skip
        texts = list(body.texts)
        state.check_tokens([body.query, *texts], "texts")
        scores = await state.batcher.call(scorer, body.query, texts)  # (N,)
        scores = torch.as_tensor(scores, dtype=torch.float32).flatten()
        if not body.raw_scores:
            scores = scores.sigmoid()  # TEI's default: scores in (0, 1)
        order = scores.argsort(descending=True, stable=True).tolist()
        return [
            {
                "index": i,
                "score": float(scores[i]),
                **({"text": texts[i]} if body.return_text else {}),
            }
            for i in order
        ]

    return api


def _needs_text(state: ServeState, field: str, value: Any) -> None:
    if "text" not in state.embedder.kinds:
        raise BadInput(field, value, "this model embeds images only; send them to POST /embed "
                       'as {"images": [base64, ...]}')  # fmt: skip


async def tei_embed(
    state: ServeState, inputs: list[str], normalize: bool, truncate: bool
) -> list[list[float]]:
    """TEI's ``/embed``: N texts -> N rows; ``normalize`` L2-normalises them; without
    ``truncate`` a text longer than the model reads (``Embedder.max_tokens``) answers 413."""
    _needs_text(state, "inputs", inputs[0])
    tokens = state.check_tokens(inputs, "inputs")
    limit = state.embedder.max_tokens
    if not truncate and limit is not None:
        for i, count in enumerate(tokens):
            if count > limit:
                raise BadInput(f"inputs[{i}]", f"{count} tokens", f"at most {limit} tokens, or "
                               '"truncate": true to cut it to that', 413)  # fmt: skip
    out = await state.embed("text", inputs)  # (N, D)
    if normalize:
        out = torch.nn.functional.normalize(out, dim=1)
    return out.tolist()
