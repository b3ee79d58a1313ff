"""``POST /embed``: texts, base64 images or base64 audio (audio runs) -> float32 embeddings (N, D); or, with
text-embeddings-inference's body (``inputs``, ``normalize``, ``truncate``), TEI's answer
(a list of rows; :func:`contrastkit.serve.routes.tei.tei_embed`).

(No ``from __future__ import annotations``: see ``routes/search.py``.)
"""

from typing import Annotated, Any, ClassVar

from fastapi import APIRouter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, model_validator

from contrastkit.serve.requests import (
    Base64Audio,
    Base64Image,
    NonBlank,
    check_kind,
    count_between,
    exactly_one,
    one_or_many,
    reject,
)
from contrastkit.serve.routes.tei import tei_embed
from contrastkit.serve.state import ServeState

_TEI_ONLY = ("normalize", "truncate", "truncation_direction", "prompt_name", "parameters")

__all__ = ["router"]


def router(state: ServeState) -> APIRouter:
    """The embedding route of ``state``'s service."""
    n = state.settings.max_items
    kinds = state.embedder.kinds
    hears = "audio" in kinds
    fields = ("texts", "images", "audio") if hears else ("texts", "images")

    class EmbedRequest(BaseModel):
        """``/embed``: exactly one of ``texts`` (N strings), ``images`` (N base64 images) or
        ``audio`` (N base64 audio files, audio runs)."""

        model_config = ConfigDict(extra="forbid")
        example: ClassVar[str] = '{"texts": ["a text"]}'
        texts: Annotated[list[NonBlank] | None, count_between(1, n, "non-empty strings")] = Field(
            None, description=f"a list of 1..{n} non-empty strings"
        )
        images: Annotated[
            list[Base64Image] | None, count_between(1, n, "base64-encoded images")
        ] = Field(None, description=f"a list of 1..{n} base64-encoded images")
        audio: Annotated[
            list[Base64Audio] | None, count_between(1, n, "base64-encoded audio files")
        ] = Field(None, description=f"a list of 1..{n} base64-encoded audio files (WAV, FLAC, "
                  "OGG or MP3)")  # fmt: skip

        inputs: Annotated[
            list[NonBlank] | None,
            BeforeValidator(one_or_many),
            count_between(1, n, "non-empty strings"),
        ] = Field(None, description=f"TEI's body: a string or a list of 1..{n} non-empty strings")
        normalize: StrictBool = Field(True, description="true or false (with inputs)")
        truncate: StrictBool = Field(False, description="true or false (with inputs)")
        truncation_direction: str | None = Field(None, description="'Right' (with inputs)")
        prompt_name: None = Field(None, description="null: this service has no prompts")
        parameters: dict[str, Any] | None = Field(
            None,
            description="an object (with inputs; huggingface_hub's InferenceClient sends "
            "normalize/truncate here)",
        )

        @model_validator(mode="before")
        @classmethod
        def _one_body(cls, data: Any) -> Any:
            """Today's body (``texts`` or ``images``) or TEI's (``inputs`` and its options)."""
            if not isinstance(data, dict) or "inputs" not in data:
                tei = [key for key in _TEI_ONLY if key in data] if isinstance(data, dict) else []
                if tei:
                    raise reject(tei[0], data[tei[0]], 'only with TEI\'s body, {"inputs": ...}')
                if isinstance(data, dict) and data.get("audio") is not None and not hears:
                    check_kind("audio", "(audio)", kinds)  # refused: this model hears nothing
                return exactly_one(fields, kinds)(data)
            given = [key for key in ("texts", "images", "audio") if data.get(key) is not None]
            if given:
                raise reject("inputs/" + given[0], "both", "one of texts, images or inputs")
            return data

    api = APIRouter(tags=["embed"])

    @api.post("/embed", summary="Embed texts, images or audio")
    async def embed(body: EmbedRequest) -> Any:
        """`{"texts": [...]}` or `{"images": [base64, ...]}` -> float32 embeddings (N, D);
        TEI's `{"inputs": ..., "normalize": true, "truncate": false}` -> `[[...], ...]`."""
        if body.inputs is not None:
            extra = body.parameters or {}
            normalize = extra.get("normalize", body.normalize) is not False
            truncate = extra.get("truncate", body.truncate) is True
            return await tei_embed(state, list(body.inputs), normalize, truncate)
        if body.texts is not None:
            kind, batch = "text", list(body.texts)
            state.check_tokens(batch, "texts")
        elif body.audio is not None:  # decoded to the run's sample rate and clip length
            kind = "audio"
            names = [f"audio[{i}]" for i in range(len(body.audio))]
            batch = await state.decode_audio(list(body.audio), names)
        else:  # the images arrive validated to their bytes; decoding needs the model's shape
            images = body.images or []
            kind = "image"
            batch = await state.decode_images(images, [f"images[{i}]" for i in range(len(images))])
        out = await state.embed(kind, batch)  # (N, D)
        return {"tower": kind, "dim": int(out.shape[1]), "embeddings": out.tolist()}

    return api
