"""The one error answer of the service: a 4xx naming the field, the value and what is allowed.

>>> BadInput("k", 0, "an integer from 1 to 100").body()["error"]
'k: got 0; allowed: an integer from 1 to 100'
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BadInput"]


class BadInput(Exception):
    """A 4xx answer naming the field, the value received and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str, status: int = 400) -> None:
        self.field, self.value, self.allowed, self.status = field, value, allowed, status
        super().__init__(f"{field}: got {_show(value)}; allowed: {allowed}")

    def body(self) -> dict[str, Any]:
        return {
            "error": str(self),
            "field": self.field,
            "value": _show(self.value),
            "allowed": self.allowed,
        }


def _show(value: Any, limit: int = 80) -> str:
    """A short printable form of a received value (never echo a whole upload)."""
    text = repr(value) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
