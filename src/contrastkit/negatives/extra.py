"""Extra negatives around a loss: a MoCo queue, hard-negative mining and similarity-threshold
false-negative masking, composed from the pieces of :mod:`contrastkit.negatives`.

:class:`ExtraNegatives` wraps a loss that declares ``takes_negatives`` (called as
``loss(query, key, negatives, ignore_mask=...)``, e.g. :class:`~contrastkit.losses.InfoNCE`).
At every call:

1. ``queue_size``: the keys of previous batches, oldest first, join the candidates as (M, D)
   extra negatives (MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722). Queue entries with
   the query's id (the same image or pair group, seen in an earlier batch) are ignored
   (:meth:`contrastkit.negatives.EmbeddingQueue.mask`). After the loss the batch's keys are
   pushed.
2. ``false_negative_threshold``: candidates more similar to the query than the threshold are
   ignored as likely false negatives (:func:`contrastkit.negatives.mask_from_threshold`).
3. ``hard_negatives: K``: each query's softmax keeps its positive and only its K most similar
   remaining candidates (:func:`contrastkit.negatives.hard_negatives_in_batch`, ``no_grad``).

Under ``torch.distributed`` with a loss built with ``gather_distributed=True`` the candidates
are the keys of all ranks then the queues of all ranks (``[W*B keys, W*M queue entries]``):
every mask is built against those gathered columns, and every rank runs the same collectives
whatever its data (a rank whose batch has nothing to mask still gathers).

Shapes: B batch, W ranks, D embedding dim, M queue entries, K mined negatives.

>>> import torch
>>> from contrastkit.losses import create_loss
>>> loss = ExtraNegatives(create_loss("info_nce", temperature=0.1), queue_size=6)
>>> g = torch.Generator().manual_seed(0)
>>> for step in range(3):
...     value = loss(torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g),
...                  ids=torch.arange(4) + 4 * step)
>>> len(loss.queue), bool(torch.isfinite(value))
(6, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.collectives import all_gather, get_rank, get_world_size
from contrastkit.negatives.false_negatives import mask_from_threshold
from contrastkit.negatives.miners import hard_negatives_in_batch
from contrastkit.negatives.queue import EmbeddingQueue


class ExtraNegatives(nn.Module):
    """``loss(query, key)`` with queue negatives, a threshold mask and hard-negative mining.

    Args:
        loss: a loss module that declares ``takes_negatives`` (forward
            ``(query, key, negatives, *, ignore_mask)``).
        queue_size: keys of previous batches kept as extra negatives (0: no queue).
        hard_negatives: keep only the K hardest negatives of each query (None: all).
        false_negative_threshold: ignore candidates more similar than this (None: off).

    The metric is the loss's own (``loss.metric``, cosine by default).
    """

    def __init__(
        self,
        loss: nn.Module,
        *,
        queue_size: int = 0,
        hard_negatives: int | None = None,
        false_negative_threshold: float | None = None,
    ) -> None:
        super().__init__()
        if not getattr(loss, "takes_negatives", False):
            raise TypeError(
                f"ExtraNegatives needs a loss that takes negatives and an ignore mask (e.g. "
                f"InfoNCE), got {type(loss).__name__}."
            )
        self.loss = loss
        self.queue_size = int(queue_size)
        self.hard_negatives = hard_negatives
        self.threshold = false_negative_threshold
        self.metric = str(getattr(loss, "metric", "cosine"))
        self.queue: EmbeddingQueue | None = None  # built at the first push (D = the keys' width)

    @property
    def _gathers(self) -> bool:
        return bool(getattr(self.loss, "gather_distributed", False)) and get_world_size() > 1

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        *,
        ids: Tensor | None = None,
        ignore_mask: Tensor | None = None,
    ) -> Tensor:
        """query: (B, D), key: (B, D) (row i the positive of query i); ids: optional (B,) ids of
        the batch's items (stored with the keys; queue entries sharing a query's id are never its
        negatives); ignore_mask: optional (B, W*B) bool of in-batch false negatives (W = 1
        without a process group). Returns the loss of ``self.loss``."""
        b = query.shape[0]
        if ids is not None and ids.shape != (b,):
            raise ValueError(f"ids must be (B,) = ({b},) like the batch, got {tuple(ids.shape)}.")
        world = get_world_size() if self._gathers else 1
        negatives = None
        if self.queue is not None and len(self.queue) > 0:
            negatives = self.queue.negatives().to(query)  # (M, D), this rank's queue
        m = 0 if negatives is None else negatives.shape[0]
        n_keys = world * b
        ignore = torch.zeros(b, n_keys + world * m, dtype=torch.bool, device=query.device)
        if ignore_mask is not None:
            ignore[:, :n_keys] |= ignore_mask
        if m and ids is not None:
            stored = self.queue.ids_in_order().to(query.device)  # (M,)
            stored = all_gather(stored) if world > 1 else stored  # (W*M,)
            ignore[:, n_keys:] |= (ids.to(query.device)[:, None] == stored[None, :]) & (
                stored[None, :] >= 0
            )
        if self.threshold is not None or self.hard_negatives is not None:
            ignore |= self._mined(query, key, negatives, ignore, world)
        value = self.loss(query, key, negatives, ignore_mask=ignore if bool(ignore.any()) else None)
        if self.queue_size:
            if self.queue is None:
                self.queue = EmbeddingQueue(self.queue_size, key.shape[1]).to(key.device)
            self.queue.push(key.detach().float(), None if ids is None else ids.to(key.device))
        return value

    @torch.no_grad()
    def _mined(
        self, query: Tensor, key: Tensor, negatives: Tensor | None, ignore: Tensor, world: int
    ) -> Tensor:
        """(B, W*B + W*M) bool: candidates to drop by the threshold and by hard-negative mining.

        The gathered key columns are rotated so this rank's block comes first (query i's
        positive on the diagonal, as the library's maskers expect), then rotated back.
        """
        b = query.shape[0]
        shift = get_rank() * b if world > 1 else 0
        keys = key.detach()
        if world > 1:
            keys = all_gather(keys).roll(-shift, 0)  # (W*B, D), this rank's keys first
            negatives = None if negatives is None else all_gather(negatives)  # (W*M, D)
        n_keys = keys.shape[0]
        order = ignore.clone()
        order[:, :n_keys] = ignore[:, :n_keys].roll(-shift, 1)
        drop = torch.zeros_like(order)
        if self.threshold is not None:
            drop |= mask_from_threshold(
                query.detach(), keys, negatives, threshold=self.threshold, metric=self.metric
            )
        if self.hard_negatives is not None:
            drop |= self._not_hardest(query, keys, negatives, order | drop)
        drop[:, :n_keys] = drop[:, :n_keys].roll(shift, 1)
        return drop

    def _not_hardest(
        self, query: Tensor, keys: Tensor, negatives: Tensor | None, ignore: Tensor
    ) -> Tensor:
        """True for every candidate outside the query's K hardest negatives (never the positive,
        column i); already ignored candidates are not mined."""
        candidates = keys if negatives is None else torch.cat([keys, negatives])  # (N, D)
        b, n = query.shape[0], candidates.shape[0]
        k = min(int(self.hard_negatives or 0), n - 1)
        if k >= n - 1:  # every candidate is among the K hardest: nothing to drop
            return torch.zeros(b, n, dtype=torch.bool, device=query.device)
        idx = hard_negatives_in_batch(
            query.detach().float(),
            candidates.float(),
            k,
            metric=self.metric,
            ignore_mask=ignore,
        )  # (B, K), -1 where fewer candidates were left
        rows = torch.arange(b, device=query.device)[:, None].expand_as(idx)  # (B, K)
        found = idx >= 0
        hard = torch.zeros(b, n, dtype=torch.bool, device=query.device)
        hard[rows[found], idx[found]] = True
        diagonal = torch.arange(b, device=query.device)
        hard[diagonal, diagonal] = True  # the positive stays in the softmax
        return ~hard

    def queue_state(self) -> dict[str, Any] | None:
        """The queue's buffers for a checkpoint (every rank's, stacked, under a process group),
        or None before the first push."""
        if self.queue is None:
            return None
        state = {k: v.detach().clone() for k, v in self.queue.state_dict().items()}
        if get_world_size() > 1:
            state = {k: all_gather(v.unsqueeze(0)) for k, v in state.items()}  # (W, ...)
        return {k: v.cpu() for k, v in state.items()}

    def load_queue_state(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`queue_state` (None: an empty queue)."""
        if state is None:
            self.queue = None
            return
        if get_world_size() > 1:
            state = {k: v[get_rank()] for k, v in state.items()}
        size, dim = state["embeddings"].shape
        self.queue = EmbeddingQueue(int(size), int(dim))
        self.queue.load_state_dict(state)

    def extra_repr(self) -> str:
        return (
            f"queue_size={self.queue_size}, hard_negatives={self.hard_negatives}, "
            f"false_negative_threshold={self.threshold}"
        )
