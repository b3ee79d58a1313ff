"""The trainer's negatives options around a loss: a MoCo queue, hard-negative mining and
similarity-threshold false-negative masking (the pieces of :mod:`contrastkit.negatives`).

:class:`ExtraNegatives` wraps a loss called as ``loss(query, key, negatives, ignore_mask=...)``
(:class:`~contrastkit.losses.InfoNCE`); the tasks keep calling ``loss_fn(query, key)`` (with an
optional (B, B) in-batch ``ignore_mask``) and do not know it is there. At every call:

1. ``loss.queue_size``: the keys of previous batches, oldest first, join the candidates as (M, D)
   extra negatives (MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722; with
   ``loss.key_momentum`` the keys come from a momentum copy of the encoder). Queue entries with
   the query's id (the same image, or the same pair group, seen in an earlier batch) are ignored
   (:meth:`contrastkit.negatives.EmbeddingQueue.mask`). After the loss the batch's keys are
   pushed; the queue is training state, saved in the checkpoint's ``state.pt``.
2. ``loss.false_negative_threshold``: candidates more similar to the query than the threshold are
   ignored as likely false negatives (:func:`contrastkit.negatives.mask_from_threshold`).
3. ``loss.hard_negatives: K``: each query's softmax keeps its positive and only its K most
   similar remaining candidates, in-batch keys and queue entries alike
   (:func:`contrastkit.negatives.hard_negatives_in_batch`, run under ``no_grad``).

The candidates' layout is InfoNCE's: B in-batch keys, then M queue entries, so masks are
(B, B + M). Shapes: B batch, D embedding dim, M queue entries, K mined negatives.

>>> import torch
>>> from contrastkit.losses import create_loss
>>> loss = ExtraNegatives(create_loss("info_nce", temperature=0.1), queue_size=6)
>>> g = torch.Generator().manual_seed(0)
>>> for step in range(3):
...     loss.batch_ids = torch.arange(4) + 4 * step
...     value = loss(torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g))
>>> len(loss.queue), bool(torch.isfinite(value))
(6, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.negatives import (
    EmbeddingQueue,
    hard_negatives_in_batch,
    mask_from_threshold,
)


class ExtraNegatives(nn.Module):
    """``loss(query, key)`` with queue negatives, a threshold mask and hard-negative mining.

    Args:
        loss: a loss module whose forward takes ``(query, key, negatives, *, ignore_mask)``.
        queue_size: keys of previous batches kept as extra negatives (0: no queue).
        hard_negatives: keep only the K hardest negatives of each query (None: all).
        false_negative_threshold: ignore candidates more similar than this (None: off).

    Set ``batch_ids`` ((B,) integer ids of the batch's items, or None) before each call: they
    are stored with the keys, and queue entries sharing a query's id are never its negatives.
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
        self.loss = loss
        self.queue_size = int(queue_size)
        self.hard_negatives = hard_negatives
        self.threshold = false_negative_threshold
        self.metric = str(getattr(loss, "metric", "cosine"))
        self.queue: EmbeddingQueue | None = None  # built at the first push (D = the keys' width)
        self.batch_ids: Tensor | None = None

    def forward(self, query: Tensor, key: Tensor, *, ignore_mask: Tensor | None = None) -> Tensor:
        """query: (B, D), key: (B, D) (row i the positive of query i), ignore_mask: optional
        (B, B) bool of in-batch false negatives. Returns the loss of ``self.loss``."""
        b = query.shape[0]
        ids = self.batch_ids
        if ids is not None and ids.shape != (b,):
            raise ValueError(
                f"batch_ids must be (B,) = ({b},) like the batch, got {tuple(ids.shape)}."
            )
        negatives = None
        if self.queue is not None and len(self.queue) > 0:
            negatives = self.queue.negatives().to(query)  # (M, D)
        m = 0 if negatives is None else negatives.shape[0]
        ignore = torch.zeros(b, b + m, dtype=torch.bool, device=query.device)  # (B, B + M)
        if ignore_mask is not None:
            ignore[:, :b] |= ignore_mask
        if m and ids is not None:
            ignore[:, b:] |= self.queue.mask(ids.to(query.device))
        if self.threshold is not None:
            ignore |= mask_from_threshold(
                query.detach(),
                key.detach(),
                negatives,
                threshold=self.threshold,
                metric=self.metric,
            )
        if self.hard_negatives is not None:
            ignore |= self._not_hardest(query, key, negatives, ignore)
        value = self.loss(query, key, negatives, ignore_mask=ignore if bool(ignore.any()) else None)
        if self.queue_size:
            if self.queue is None:
                self.queue = EmbeddingQueue(self.queue_size, key.shape[1]).to(key.device)
            self.queue.push(key.detach().float(), None if ids is None else ids.to(key.device))
        return value

    @torch.no_grad()
    def _not_hardest(
        self, query: Tensor, key: Tensor, negatives: Tensor | None, ignore: Tensor
    ) -> Tensor:
        """(B, B + M) bool: True for every candidate outside the query's K hardest negatives
        (never the positive); already ignored candidates are not mined."""
        candidates = key if negatives is None else torch.cat([key, negatives])  # (B + M, D)
        b, n = query.shape[0], candidates.shape[0]
        k = min(int(self.hard_negatives or 0), n - 1)
        if k >= n - 1:  # every candidate is among the K hardest: nothing to drop
            return torch.zeros(b, n, dtype=torch.bool, device=query.device)
        idx = hard_negatives_in_batch(
            query.detach().float(),
            candidates.detach().float(),
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
        """The queue's buffers (for the checkpoint), or None before the first push."""
        if self.queue is None:
            return None
        return {k: v.detach().cpu().clone() for k, v in self.queue.state_dict().items()}

    def load_queue_state(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`queue_state` (None: an empty queue)."""
        if state is None:
            self.queue = None
            return
        size, dim = state["embeddings"].shape
        self.queue = EmbeddingQueue(int(size), int(dim))
        self.queue.load_state_dict(state)

    def extra_repr(self) -> str:
        return (
            f"queue_size={self.queue_size}, hard_negatives={self.hard_negatives}, "
            f"false_negative_threshold={self.threshold}"
        )
