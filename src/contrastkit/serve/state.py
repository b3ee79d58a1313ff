"""What the routes share: the service's limits (:class:`ServeSettings`) and its parts
(:class:`ServeState`: the model, the index, the two batchers, the metrics).

No web framework here: ``create_app`` builds one ``ServeState`` and hands it to every router.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from contrastkit.serve.batcher import Batcher
from contrastkit.serve.embedder import Embedder
from contrastkit.serve.errors import BadInput
from contrastkit.serve.images import decode_image, image_pixels
from contrastkit.serve.live_index import IndexHolder
from contrastkit.serve.metrics import Metrics

__all__ = ["INLINE_PIXELS", "ServeSettings", "ServeState"]

INLINE_PIXELS = 128 * 128
"""Images of at most this many pixels (a 28 x 28 Fashion-MNIST query: 784) are decoded on the
event loop (about 0.2 ms): handing them to a decoding thread and back costs as much, and under
load the hop waits for the GIL. Larger ones take a ``decode_threads`` slot."""


@dataclass
class ServeSettings:
    """Service limits (the ``contrastkit serve`` options).

    Attributes:
        max_batch: most items per model call; 1 turns micro-batching off.
        max_wait_ms: how long a request waits for others to share its batch.
        queue: most requests waiting for the model; beyond it 503 with ``Retry-After``.
        max_body_mb: largest request body (JSON or upload) in MiB; larger gets 413.
        max_k: largest ``k`` a search may ask for.
        max_items: most texts or images in one ``/embed`` request.
        threads: torch threads of the model worker (None: torch's default).
        api_key: when set, every request but the page, ``/health`` and the docs must send
            ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
        max_concurrency: most API requests in progress at once; beyond it 429 with
            ``Retry-After`` (as text-embeddings-inference's ``--max-concurrent-requests``);
            ``/health``, ``/metrics``, the page and the docs are never refused.
        max_tokens: most tokens (the model's tokenizer) all texts of one request may hold,
            counted before the model runs; beyond it 413.
        max_pixels: most pixels all images of one request may hold, read from their headers
            before any is decoded; beyond it 413.
        decode_threads: images (and audio clips) decoded at once; the others wait their turn,
            so a burst of large uploads keeps at most this many threads busy.
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue: int = 256
    max_body_mb: float = 8.0
    max_k: int = 100
    max_items: int = 64
    threads: int | None = 1
    api_key: str | None = None
    max_concurrency: int = 512
    max_tokens: int = 16384
    max_pixels: int = 64_000_000
    decode_threads: int = 2

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue", "max_k", "max_items", "max_concurrency",
                     "max_tokens", "max_pixels", "decode_threads"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not self.max_body_mb > 0:
            raise ValueError(f"max_body_mb must be > 0 (MiB), got {self.max_body_mb!r}.")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}.")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must be a non-empty string; pass --api-key KEY or omit it.")


@dataclass
class ServeState:
    """One service: what every router reads (``app.state.serve``).

    Attributes:
        embedder: the run's model (query kinds, image shape, corpus thumbnails).
        settings: the limits.
        holder: the served index, re-read when its file changes.
        batcher: micro-batches model calls (``kind``, items) -> (N, D).
        searcher: batches index searches, per index version.
        metrics: the Prometheus registry of this app.
        run: the run folder served, if any (shown by ``/health``).
        started: ``time.time()`` at start (uptime).
        thumbs: PNG bytes of corpus images already served, by index position.
    """

    embedder: Embedder
    settings: ServeSettings
    holder: IndexHolder
    batcher: Batcher
    searcher: Batcher
    metrics: Metrics
    run: str | None = None
    started: float = field(default_factory=time.time)
    thumbs: dict[int, bytes] = field(default_factory=dict)
    decoding: asyncio.Semaphore | None = None

    async def embed(self, kind: str, items: list[Any]) -> Any:
        """``items`` (N texts, or N (C, H, W) images) -> (N, D) through the model batcher."""
        return await self.batcher.submit(kind, items)  # (N, D)

    def check_tokens(self, texts: list[str], field: str) -> list[int]:
        """Each text's token count; :class:`BadInput` (413) naming ``field`` when together they
        pass ``settings.max_tokens``."""
        counts = self.embedder.tokens(texts)
        total, budget = sum(counts), self.settings.max_tokens
        if total > budget:
            raise BadInput(field, f"{total} tokens", f"at most {budget} tokens per request "
                           "(--max-tokens); split the inputs over several requests", 413)  # fmt: skip
        return counts

    async def decode_images(self, datas: list[bytes], fields: list[str]) -> list[Any]:
        """Encoded images -> (C, H, W) each at the model's input shape. The pixels of all of them
        are read from their headers and checked against ``settings.max_pixels`` (413) before any
        is decoded; an image larger than :data:`INLINE_PIXELS` is decoded in a thread, at most
        ``settings.decode_threads`` at once, a smaller one on the event loop."""
        if self.decoding is None:
            self.decoding = asyncio.Semaphore(self.settings.decode_threads)
        pixels = [image_pixels(data, name) for data, name in zip(datas, fields)]
        total = sum(pixels)
        if total > self.settings.max_pixels:
            raise BadInput(fields[0] if len(fields) == 1 else fields[0].split("[")[0],
                           f"{total:,} pixels", f"at most {self.settings.max_pixels:,} pixels per "
                           "request (--max-pixels); send fewer or smaller images", 413)  # fmt: skip
        shape = self.embedder.image_shape
        assert shape is not None, "decode_images is called for image models only"
        out = []
        for data, name, size in zip(datas, fields, pixels):
            if size <= INLINE_PIXELS:  # a thumbnail-sized query decodes faster than a thread hop
                out.append(decode_image(data, shape, name))
                continue
            async with self.decoding:
                out.append(await asyncio.to_thread(decode_image, data, shape, name))
        return out

    async def decode_audio(self, datas: list[bytes], fields: list[str]) -> list[Any]:
        """Encoded audio -> ``(clip (S,), mask (S,))`` each at the run's sample rate and clip
        length (:func:`contrastkit.serve.audio.decode_audio`); decoding runs in a thread, in the
        same ``settings.decode_threads`` slots as images."""
        from contrastkit.serve.audio import decode_audio

        if self.decoding is None:
            self.decoding = asyncio.Semaphore(self.settings.decode_threads)
        rate, samples = self.embedder.sample_rate, self.embedder.clip_samples
        assert rate is not None and samples is not None, "decode_audio is for audio models only"
        out = []
        for data, name in zip(datas, fields):
            async with self.decoding:
                out.append(await asyncio.to_thread(decode_audio, data, rate, samples, name))
        return out
