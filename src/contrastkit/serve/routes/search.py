"""Search: ``POST /search`` (a text, a base64 image or base64 audio) and ``POST /search/upload``
(multipart: an image, or an audio file for an audio run).

(No ``from __future__ import annotations`` in route modules: FastAPI reads the endpoints'
annotations at runtime, and the request models are classes local to :func:`router`, bounded by
this service's limits.)
"""

from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Form, UploadFile
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Json, model_validator

from contrastkit.serve.errors import BadInput
from contrastkit.serve.live_index import LoadedIndex
from contrastkit.serve.requests import (
    FILTER_HINT,
    Base64Audio,
    Base64Image,
    FilterValue,
    NonBlank,
    StrictInt,
    check_kind,
    exactly_one,
)
from contrastkit.serve.state import ServeState

__all__ = ["router"]


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value  # a form's empty filter box


def router(state: ServeState) -> APIRouter:
    """The search routes of ``state``'s service."""
    kinds, max_k = state.embedder.kinds, state.settings.max_k
    k_hint = f"an integer from 1 to {max_k}"
    hears = "audio" in kinds
    fields = ("query", "image", "audio") if hears else ("query", "image")
    upload_kind = "audio" if hears and "image" not in kinds else "image"

    def _one_query(data: Any) -> Any:
        if isinstance(data, dict) and data.get("audio") is not None and not hears:
            check_kind("audio", "(audio)", kinds)  # refused: this model hears nothing
        return exactly_one(fields, kinds)(data)

    class SearchRequest(BaseModel):
        """``/search``: exactly one of ``query`` (text), ``image`` (base64) or ``audio`` (base64,
        audio runs), ``k`` and an optional exact-match ``filter`` on the index metadata (e.g.
        ``{"label": "Ankle boot"}``)."""

        model_config = ConfigDict(extra="forbid")
        example: ClassVar[str] = '{"query": "a text", "k": 5}'
        query: NonBlank | None = Field(None, description="a non-empty string (a text query)")
        image: Base64Image | None = Field(None, description="a base64-encoded image")
        audio: Base64Audio | None = Field(
            None, description="a base64-encoded audio file (WAV, FLAC, OGG or MP3)"
        )
        k: StrictInt = Field(10, ge=1, le=max_k, description=k_hint)
        filter: dict[str, FilterValue] | None = Field(None, description=FILTER_HINT)

        one_query = model_validator(mode="before")(_one_query)

    class UploadForm(BaseModel):
        """``/search/upload``: a multipart form with ``file`` (an image), ``k`` and ``filter``
        (a JSON object)."""

        model_config = ConfigDict(extra="forbid")
        example: ClassVar[str] = "a multipart form with file=<image>, k=5"
        file: UploadFile = Field(
            description=f"a multipart file field named 'file' holding an {upload_kind}"
            + (" (WAV, FLAC, OGG or MP3)" if upload_kind == "audio" else "")
        )
        k: int = Field(10, ge=1, le=max_k, description=k_hint)  # a form sends text: "5" is 5
        filter: Annotated[Json[dict[str, FilterValue]] | None, BeforeValidator(_empty_is_none)] = (
            Field(None, description=f"{FILTER_HINT}, as JSON text")
        )

        @model_validator(mode="before")
        @classmethod
        def _image_model(cls, data: Any) -> Any:
            if isinstance(data, dict) and data.get("file") is not None and upload_kind == "image":
                check_kind("file", getattr(data["file"], "filename", data["file"]), kinds)
            return data

    api = APIRouter(tags=["search"])

    @api.post("/search", summary="Search the index with a text, a base64 image or base64 audio")
    async def search(body: SearchRequest) -> dict[str, Any]:
        """`{"query": "text"}`, `{"image": base64}` or `{"audio": base64}`, `k`, optional
        `filter` -> ranked hits (id, position in the index, score, metadata, thumbnail URL for
        image corpora, clip URL for audio corpora)."""
        if body.query is not None:
            kind, item = "text", body.query
        elif body.audio is not None:  # decoded to the run's rate and clip length
            (item,) = await state.decode_audio([body.audio], ["audio"])
            kind = "audio"
        else:  # the image arrives validated to its bytes; decoding needs the model's shape
            (item,) = await state.decode_images([body.image], ["image"])
            kind = "image"
        return {"tower": kind, **await _search(state, kind, item, body.k, body.filter)}

    @api.post("/search/upload", summary="Search with an uploaded image or audio file (multipart)")
    async def search_upload(form: Annotated[UploadForm, Form()]) -> dict[str, Any]:
        """Multipart form: `file` (an image; an audio file for an audio run), optional `k` and
        `filter` (a JSON object)."""
        data = await form.file.read()
        if upload_kind == "audio":
            (item,) = await state.decode_audio([data], ["file"])
        else:
            (item,) = await state.decode_images([data], ["file"])
        kind = upload_kind
        return {"tower": kind, **await _search(state, kind, item, form.k, form.filter)}

    return api


async def _search(
    state: ServeState, kind: str, item: Any, k: int, flt: dict[str, Any] | None
) -> dict[str, Any]:
    """One query (a text, or a (C, H, W) image) -> the answer's ``k``, ``results`` and
    ``index_version``. The filter is checked against the index before the model runs, so a bad
    filter costs no model call; the request keeps the index it started with."""
    loaded = await state.holder.current()
    flt = _check_filter(flt or {}, loaded)
    vector = await state.embed(kind, [item])  # (1, D)
    job = (loaded, fit_to_index(vector, loaded.index.dim)[0], k, flt)
    (hits,) = await state.searcher.submit(f"search@{loaded.version}", [job])
    thumbs = state.embedder.thumbnails
    n_thumbs = len(thumbs) if thumbs is not None else 0
    n_clips = state.embedder.n_clips
    for rank, hit in enumerate(hits, 1):
        hit["rank"] = rank
        hit["thumb"] = f"/thumb/{hit['position']}" if hit["position"] < n_thumbs else None
        if n_clips:
            hit["audio"] = f"/audio/{hit['position']}" if hit["position"] < n_clips else None
    return {"k": k, "results": hits, "index_version": loaded.version}


def fit_to_index(vector: Any, dim: int) -> Any:
    """A query embedding ``vector: (1, D)`` at the index's width ``dim <= D``: its first ``dim``
    coordinates, renormalised, for an index built with ``contrastkit index RUN --dim`` (as
    ``contrastkit search`` does); unchanged at the model's own width."""
    if vector.shape[-1] > dim:
        from contrastkit.losses.matryoshka import truncate_embeddings

        return truncate_embeddings(vector, dim)  # (1, dim)
    return vector


def _check_filter(flt: dict[str, Any], loaded: LoadedIndex) -> dict[str, Any]:
    """The filter's fields must be metadata of the index searched (which a reload may change)."""
    for key in flt:
        if key not in loaded.fields:
            raise BadInput(f"filter.{key}", key, f"a metadata field of this index: {loaded.fields}")
    return flt
