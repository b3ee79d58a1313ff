"""The one validation layer: field types for request models, and pydantic's errors as the
service's one error answer.

Every request model (``routes/*.py``) bounds its values with these types and ``Field`` limits,
so pydantic is the only place a request is checked; :func:`bad_input` turns the first error of a
:class:`~fastapi.exceptions.RequestValidationError` into :class:`~contrastkit.serve.errors.BadInput`
(400, ``{"error", "field", "value", "allowed"}``), taking ``allowed`` from the field's
``description``. What needs the model or the index to answer (an image that does not decode, a
filter field the index lacks) raises ``BadInput`` in the route, with the same status and shape.

>>> from pydantic import BaseModel, Field, ValidationError
>>> class Body(BaseModel):
...     k: StrictInt = Field(10, ge=1, le=100, description="an integer from 1 to 100")
>>> try:
...     Body.model_validate({"k": 0})
... except ValidationError as err:
...     bad_input(err.errors(), Body)
BadInput('k: got 0; allowed: an integer from 1 to 100')
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic_core import PydanticCustomError

from contrastkit.serve.errors import BadInput

__all__ = [
    "FILTER_HINT",
    "Base64Audio",
    "Base64Image",
    "FilterValue",
    "NonBlank",
    "StrictInt",
    "bad_input",
    "check_kind",
    "count_between",
    "exactly_one",
    "one_or_many",
    "reject",
]

FilterValue = StrictStr | StrictInt | StrictFloat | StrictBool
FILTER_HINT = 'an object of metadata field -> string/number/boolean, e.g. {"label": "x"}'
# the other field to send when the model does not embed this one's kind
_KIND = {"query": "text", "texts": "text", "image": "image", "images": "image", "file": "image",
         "audio": "audio"}  # fmt: skip
_INSTEAD = {
    "query": "image",
    "texts": "images",
    "image": "query",
    "images": "texts",
    "file": "query",
    "audio": "query",
}


def reject(field: str | None, value: Any, allowed: str) -> PydanticCustomError:
    """A validation error carrying its own answer: ``field`` (None: where pydantic found it),
    the value to show and what is allowed."""
    ctx = {"allowed": allowed, "field": field, "value": value}
    return PydanticCustomError("bad_input", "{allowed}", ctx)


def _nonblank(text: str) -> str:
    if not text.strip():
        raise reject(None, text, "a non-empty string")
    return text


def _base64(text: str, what: str = "image") -> bytes:
    if text.startswith("data:") and "," in text:  # a data: URL, as a browser makes it
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise reject(None, text, f"a base64-encoded {what} (standard alphabet)") from None


def _base64_audio(text: str) -> bytes:
    return _base64(text, "audio file (WAV, FLAC, OGG or MP3)")


NonBlank = Annotated[StrictStr, AfterValidator(_nonblank)]
"""A string with something but whitespace in it."""
Base64Image = Annotated[StrictStr, AfterValidator(_base64)]
"""A base64 string (or a ``data:`` URL), validated to its bytes (decoded as an image later)."""
Base64Audio = Annotated[StrictStr, AfterValidator(_base64_audio)]
"""A base64 string (or a ``data:`` URL), validated to its bytes (decoded as audio later)."""


def count_between(low: int, high: int, what: str) -> BeforeValidator:
    """A list of ``low..high`` items, counted before the items are validated (a list of a
    million images is refused unread); the answer shows ``"N items"``."""

    def check(value: Any) -> Any:
        if isinstance(value, list) and not low <= len(value) <= high:
            raise reject(None, f"{len(value)} items", f"a list of {low}..{high} {what}")
        return value

    return BeforeValidator(check)


def one_or_many(value: Any) -> Any:
    """A ``BeforeValidator`` body for OpenAI's ``input`` and TEI's ``inputs``: a string is a list
    of one; token arrays (lists of ints) are refused.

    >>> one_or_many("a text")
    ['a text']
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
        raise reject(None, value, "a string or a list of strings (token arrays are not taken)")
    return value


def check_kind(field: str, value: Any, kinds: Sequence[str]) -> None:
    """Refuse ``field`` when the model does not embed its kind of query (a text to an
    image-only model, an image to a text-only one)."""
    if _KIND[field] not in kinds:
        raise reject(field, value, f"this model embeds {' and '.join(kinds)} queries only; send "
                                   f"{_INSTEAD[field]!r} instead")  # fmt: skip


def exactly_one(fields: tuple[str, ...], kinds: Sequence[str]) -> Callable[[Any], Any]:
    """A ``model_validator(mode="before")`` body: exactly one of ``fields`` is given (not None),
    and the model embeds its kind; runs before the fields are validated, so ``{"image": "@@@",
    "query": "x"}`` is answered as "both", not as bad base64."""

    def check(data: Any) -> Any:
        if not isinstance(data, dict):  # pydantic's own type error answers, naming the body
            return data
        given = [name for name in fields if data.get(name) is not None]
        if len(given) != 1:
            many = "both" if len(fields) == 2 else "several"
            one = "exactly one of the two" if len(fields) == 2 else "exactly one of them"
            raise reject("/".join(fields), many if given else "neither", one)
        check_kind(given[0], data[given[0]], kinds)
        return data

    return check


# pydantic names the union member it tried after the field, e.g. ("filter", "label", "str")
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|(list|dict|function-\w+)\[.*\])$")


def field_name(loc: Sequence[str | int]) -> str:
    """A pydantic location -> the field as the answer names it: ``texts[1]``, ``filter.label``.

    >>> field_name(("body", "texts", 1))
    'texts[1]'
    >>> field_name(("body", "filter", "label", "str"))
    'filter.label'
    """
    parts = list(loc[1:] if loc and loc[0] in ("body", "path", "query", "header") else loc)
    name = ""
    for i, part in enumerate(parts):
        if isinstance(part, int):
            name += f"[{part}]"
        elif not (i > 0 and _UNION_TAG.match(part)):
            name += f".{part}" if name else part
    return name


def bad_input(errors: Sequence[Any], model: type[BaseModel] | None) -> BadInput:
    """The first of pydantic's ``errors`` as the service's answer (400).

    ``model``: the request model that failed (None for a path parameter): its field names answer
    an unknown field, its field descriptions say what is allowed, and its ``example`` (a class
    variable) what a whole body looks like.
    """
    first = dict(errors[0])
    kind, loc, value = first.get("type"), tuple(first.get("loc", ())), first.get("input")
    ctx = first.get("ctx") or {}
    example = getattr(model, "example", "a JSON object")
    whole_body = len(loc) <= 1 or isinstance(loc[1], int)  # json_invalid: ("body", offset)
    if whole_body and (kind == "json_invalid" or isinstance(value, bytes) or value is None):
        return BadInput("body", value, f"a JSON object, e.g. {example}")
    field = field_name(loc) or "body"
    if kind == "bad_input":  # our own checks carry their answer
        return BadInput(ctx.get("field") or field, ctx["value"], ctx["allowed"])
    fields = tuple(model.model_fields) if model is not None else ()
    if kind == "extra_forbidden":
        return BadInput(field, value, f"only the fields {fields}")
    top = field.split(".", 1)[0].split("[", 1)[0]
    described = model.model_fields[top].description if top in fields else None  # type: ignore[union-attr]
    if described is None and model is not None:  # a body of the wrong shape
        described = f"{first.get('msg')}; e.g. {example}"
    return BadInput(field, value, described or str(first.get("msg")))
