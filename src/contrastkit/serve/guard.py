"""The ASGI layer in front of the app: the API key, the body-size limit (413) and the request
metrics, for every request including the ones the app never sees.

Without an API key the service is loopback-only (``check_bind``), and a web page on another site
must not be able to use it through the visitor's browser:

* the ``Host`` header must name this machine (``127.0.0.1``, ``localhost`` or ``[::1]``, with
  any port), else 421: a DNS-rebinding page (``evil.example`` resolved to 127.0.0.1) is refused;
* a ``POST`` from a browser must come from this origin: ``Sec-Fetch-Site`` (sent by browsers)
  must be ``same-origin`` or ``none`` and ``Origin``, when sent, must be this server's own
  (``http://`` + ``Host``), else 403. A cross-site form post (``/admin/reload``,
  ``/search/upload``) carries ``Origin: https://other.site``; the search page's own ``fetch``
  calls carry this origin; ``curl`` and other programs send neither header and pass.

With a key both checks are left to the key (a browser cannot send it cross-site without CORS,
which the service does not grant).
"""

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
PUBLIC_PATHS = ("/", "/health", "/docs", "/docs/oauth2-redirect", "/openapi.json")
PUBLIC_PREFIXES = ("/docs-assets/",)  # the API page's local JavaScript and CSS
UNCAPPED_PATHS = ("/metrics", "/info")  # what an operator reads is never refused as busy
RETRY_AFTER_S = 1  # the Retry-After of a 429 (--max-concurrency)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # Host header names of this machine
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")
SAME_ORIGIN_FETCH = (b"same-origin", b"none")  # Sec-Fetch-Site values of this site's own requests


def loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine (a loopback name, any port).

    >>> [loopback_host(h) for h in ("127.0.0.1:8000", "localhost", "[::1]:80", "evil.example:8000")]
    [True, True, True, False]
    """
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name or not port.isdigit():  # no port, or an IPv6 literal without one
        name = host
    return name.lower() in LOOPBACK_HOSTS


_SAME_ORIGIN = "a request from this server's own page (same origin) or a program, not another site"


class Guard:
    """ASGI wrapper around the app: API key (or, without one, the Host and same-origin checks:
    421 / 403), the concurrency cap (429 + ``Retry-After``), body-size limit (413) and request
    metrics. ``request.state.authorised`` tells a
    route whether the caller sent the key (always True without a key).

    The body is read here up to the limit before the app sees it, so an oversized or endless
    upload costs at most ``max_body`` bytes of memory.
    """

    def __init__(
        self,
        app: Any,
        api_key: str | None,
        max_body: int,
        metrics: Metrics,
        max_concurrency: int | None = None,
    ) -> None:
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics
        self.state = app.state
        self.max_concurrency = max_concurrency  # None: no cap
        self.in_flight = 0  # API requests in progress (the event loop is one thread: no lock)

    def _foreign(self, scope: dict, headers: dict[bytes, bytes]) -> BadInput | None:
        """Without a key: the answer for a request from another site (see the module doc)."""
        host = headers.get(b"host", b"").decode("latin-1")
        if not loopback_host(host):
            allowed = "this machine's name (127.0.0.1, localhost or [::1]); pass --api-key KEY"
            return BadInput("Host", host, f"{allowed} to serve other names", 421)
        if scope.get("method", "GET").encode() in SAFE_METHODS:
            return None
        fetch_site = headers.get(b"sec-fetch-site")
        origin = headers.get(b"origin")
        if fetch_site is not None and fetch_site.lower() not in SAME_ORIGIN_FETCH:
            return BadInput("Sec-Fetch-Site", fetch_site.decode("latin-1"), _SAME_ORIGIN, 403)
        if origin is not None and origin.decode("latin-1").lower() not in (
            f"http://{host}".lower(),
            f"https://{host}".lower(),
        ):
            return BadInput("Origin", origin.decode("latin-1"), _SAME_ORIGIN, 403)
        return None

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
            foreign = self._foreign(scope, headers) if self.api_key is None else None
            if foreign is not None:
                await _json(send_and_record, foreign.status, foreign.body())
                return
            authorised = self._authorised(headers)
            scope.setdefault("state", {})["authorised"] = authorised  # request.state.authorised
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
            if not public and not authorised:
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
            capped = not public and path not in UNCAPPED_PATHS and self.max_concurrency is not None
            if capped and self.in_flight >= self.max_concurrency:  # type: ignore[operator]
                self.metrics.observe_rejected()
                busy = BadInput(
                    "concurrency",
                    f"{self.in_flight} requests in progress",
                    f"at most {self.max_concurrency} at once (--max-concurrency); retry after "
                    f"{RETRY_AFTER_S} s",
                    429,
                )
                await _json(send_and_record, 429, busy.body(),
                            {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
                return
            if capped:
                self.in_flight += 1
            try:
                await self._admitted(scope, receive, headers, send_and_record)
            finally:
                if capped:
                    self.in_flight -= 1
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or ("/" if path == "/" else "other")
            self.metrics.observe_request(endpoint, status["code"], time.perf_counter() - start)

    async def _admitted(
        self, scope: dict, receive: Callable, headers: dict[bytes, bytes], send: Callable
    ) -> None:
        """An admitted request: its body read up to the limit (413 past it), then the app."""
        body = await self._read_body(scope, receive, headers)
        if body is None:
            too_large = BadInput(
                "body",
                f"more than {self.max_body} bytes",
                f"at most {self.max_body / 2**20:g} MiB (--max-body-mb)",
                413,
            )
            await _json(send, 413, too_large.body())
            return
        await self.app(scope, _replay(body, receive), send)

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
