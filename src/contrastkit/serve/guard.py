"""The ASGI layer in front of the app: the API key, the body-size limit (413) and the request
metrics, for every request including the ones the app never sees."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from contrastkit.serve.errors import BadInput
from contrastkit.serve.metrics import Metrics

__all__ = ["PUBLIC_PATHS", "Guard"]

# Paths anyone may read: the page, health and the API documentation.
PUBLIC_PATHS = ("/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
PUBLIC_PREFIXES = ("/docs-assets/",)  # the API page's local JavaScript and CSS


class Guard:
    """ASGI wrapper around the app: API key, body-size limit (413) and request metrics.

    The body is read here up to the limit before the app sees it, so an oversized or endless
    upload costs at most ``max_body`` bytes of memory.
    """

    def __init__(self, app: Any, api_key: str | None, max_body: int, metrics: Metrics) -> None:
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics
        self.state = app.state

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        if self.api_key is None:
            return True
        key = self.api_key.encode()
        given = headers.get(b"x-api-key", b"")
        bearer = headers.get(b"authorization", b"")
        if bearer[:7].lower() == b"bearer ":
            given = given or bearer[7:].strip()
        return hmac.compare_digest(given, key)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        path = scope.get("path", "")
        headers = dict(scope.get("headers", ()))
        try:
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
            if not public and not self._authorised(headers):
                await _json(
                    send_and_record,
                    401,
                    {
                        "error": "missing or wrong API key; send `Authorization: Bearer KEY` or "
                        "`X-API-Key: KEY`",
                        "field": "Authorization",
                        "value": "(hidden)",
                        "allowed": "the key the server was started with (--api-key)",
                    },
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            body = await self._read_body(scope, receive, headers)
            if body is None:
                await _json(
                    send_and_record,
                    413,
                    BadInput(
                        "body",
                        f"more than {self.max_body} bytes",
                        f"at most {self.max_body / 2**20:g} MiB (--max-body-mb)",
                        413,
                    ).body(),
                )
                return
            await self.app(scope, _replay(body, receive), send_and_record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or ("/" if path == "/" else "other")
            self.metrics.observe_request(endpoint, status["code"], time.perf_counter() - start)

    async def _read_body(
        self, scope: dict, receive: Callable, headers: dict[bytes, bytes]
    ) -> bytes | None:
        """The whole request body, or None once it passes ``max_body`` bytes."""
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict]]:
    """A ``receive`` that hands the app the body already read, then the client's own messages
    (a later ``http.disconnect``)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(send: Callable, status: int, body: dict, headers: dict | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
