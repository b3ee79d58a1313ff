"""Micro-batching: concurrent requests wait a few milliseconds and are embedded together.

Every request puts one job (a kind and its items) on a bounded asyncio queue; one consumer task
takes the first job and everything queued behind it (up to ``max_batch`` items), and runs each
kind's items as one model call in a single worker thread (the model is never called from two
threads at once).

Batching adapts to load: a job that finds the worker idle and the queue empty runs at once (at
one client the latency is that of no batching); requests that arrive while a batch runs queue
and form the next batch. Only under load (the previous batch held more than one job) does the
consumer wait, up to ``max_wait_ms``, for as many jobs as the previous batch held: closed-loop
clients whose answers left together come back together, and waiting for them keeps the batches
full instead of alternating one small and one large batch. A full queue refuses the job at once with
:class:`Overloaded` (the app answers 503 with ``Retry-After``), so the backlog stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batcher", "Overloaded"]


class Overloaded(RuntimeError):
    """The request queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, queue: int, retry_after: int = 1) -> None:
        super().__init__(
            f"the server queue is full ({queue} requests waiting); retry after {retry_after} s."
        )
        self.retry_after = retry_after


@dataclass
class _Job:
    kind: str
    items: list[Any]  # N texts, or N image tensors (C, H, W)
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Queue jobs, embed them in micro-batches on one worker thread.

    Args:
        embed: ``(kind, items) -> (N, D)`` where items is a list of N texts or an
            (N, C, H, W) tensor.
        max_batch: most items per model call (a single larger job runs alone).
        max_wait_ms: under load, how long a batch waits for as many jobs as the previous one
            held (an idle worker takes a lone job at once).
        queue: most jobs waiting; beyond it :meth:`submit` raises :class:`Overloaded`.
        threads: torch intra-op threads in the worker (None: leave torch's setting).
        on_batch: called with the size of every model call (the batch-size histogram).

    Start it inside the running event loop with :meth:`start`, stop it with :meth:`stop`.
    """

    def __init__(
        self,
        embed: Callable[[str, Any], Tensor],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        queue: int = 256,
        threads: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("queue", queue)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}.")
        self.embed = embed
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue
        self.threads = threads
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    def _init_worker(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    async def start(self) -> None:
        """Create the queue, the worker thread and the consumer task (call inside the loop)."""
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._pool = ThreadPoolExecutor(1, "contrastkit-model", initializer=self._init_worker)
        self._task = asyncio.get_running_loop().create_task(self._consume())

    async def stop(self) -> None:
        """Stop the consumer; jobs still queued fail with an error, the worker thread exits."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._task = self._queue = self._pool = None

    @property
    def waiting(self) -> int:
        """Jobs in the queue now."""
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, kind: str, items: list[Any]) -> Tensor:
        """Embed ``items`` (N texts or N (C, H, W) images) with others; returns (N, D)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started; call `await batcher.start()` first.")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(kind, list(items), future))
        except asyncio.QueueFull:
            raise Overloaded(self.queue_size) from None
        return await future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model's worker thread (between batches: the model is never
        called from two threads at once), e.g. a cross-encoder's scores for ``/rerank``."""
        if self._pool is None:
            raise RuntimeError("the batcher is not started; call `await batcher.start()` first.")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _consume(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Job | None = None  # a job that did not fit the previous batch goes first
        last_jobs = 1  # jobs in the previous batch: the load seen
        while True:
            jobs = [carry if carry is not None else await self._queue.get()]
            carry = None
            size = len(jobs[0].items)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:  # take what is queued already; wait (up to the deadline) only when empty
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0 or len(jobs) >= last_jobs:  # idle, or as many as last time
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                if size + len(job.items) > self.max_batch:
                    carry = job
                    break
                jobs.append(job)
                size += len(job.items)
            last_jobs = len(jobs)
            await self._run(loop, jobs)

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # a cancelled request needs no work
        for kind in dict.fromkeys(j.kind for j in jobs):
            group = [j for j in jobs if j.kind == kind]
            items = [x for j in group for x in j.items]
            batch: Any = torch.stack(items) if kind == "image" else items  # (N, C, H, W)
            try:
                out = await loop.run_in_executor(self._pool, self.embed, kind, batch)  # (N, D)
            except Exception as err:  # the model failed: every request of the batch hears it
                for j in group:
                    if not j.future.done():
                        j.future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(len(items))
            start = 0
            for j in group:
                n = len(j.items)
                if not j.future.done():
                    j.future.set_result(out[start : start + n])
                start += n
