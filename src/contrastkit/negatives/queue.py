"""A FIFO queue of past key embeddings with their ids: MoCo's extra negatives.

MoCo (He et al. 2020, https://arxiv.org/abs/1911.05722) keeps the keys of the last few batches,
encoded by a momentum copy of the encoder (:class:`contrastkit.encoders.MomentumEncoder`), as
negatives for the current queries. Storing an id with every key lets the loss ignore queue entries
that are the query's own positive or a duplicate of it (the same image or document seen in an
earlier batch), which would otherwise be pushed away as negatives.

Use with :func:`contrastkit.functional.info_nce`::

    ignore = torch.cat([in_batch_ignore, queue.mask(ids)], dim=1)  # (B, B + M)
    loss = info_nce(q, k, queue.negatives(), temperature=0.2, roles=KeyRoles(ignore_mask=ignore))
    queue.push(k, ids)  # after the loss: the current keys become negatives for the next batches

Under DDP, push each rank's local keys: ``info_nce(..., group=world_group())`` gathers the
(M, D) negatives of all ranks, so the W queues together act as one queue of W * size keys.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit._checks import check_embeddings

__all__ = ["EmbeddingQueue"]


class EmbeddingQueue(nn.Module):
    """FIFO queue of ``size`` embeddings of width ``dim`` with integer ids (-1 = no id).

    Buffers (saved in ``state_dict``): ``embeddings: (size, dim)``, ``ids: (size,)``, and the write
    position and fill level. Entries are detached: the queue never carries gradients.

    Args:
        size: capacity (number of negatives M once full), > 0.
        dim: embedding width D.
        dtype: storage dtype (default float32).

    >>> queue = EmbeddingQueue(size=4, dim=2)
    >>> queue.push(torch.ones(3, 2), ids=torch.tensor([10, 11, 12]))
    >>> queue.negatives().shape
    torch.Size([3, 2])
    >>> queue.mask(torch.tensor([11, 99])).tolist()  # query with id 11 ignores its own entry
    [[False, True, False], [False, False, False]]
    >>> queue.push(torch.zeros(2, 2), ids=torch.tensor([13, 14]))  # wraps: oldest (10) drops out
    >>> queue.ids_in_order().tolist()
    [11, 12, 13, 14]
    """

    def __init__(self, size: int, dim: int, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        for name, value in (("size", size), ("dim", dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be an int > 0, got {value!r}.")
        self.size, self.dim = size, dim
        self.register_buffer("embeddings", torch.zeros(size, dim, dtype=dtype))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))  # next write slot
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.filled)

    @torch.no_grad()
    def push(self, keys: Tensor, ids: Tensor | None = None) -> None:
        """Append ``keys: (B, D)`` (and ``ids: (B,)``), overwriting the oldest entries.

        With B > size only the last ``size`` keys are kept.
        """
        check_embeddings("keys", keys)
        if keys.shape[1] != self.dim:
            raise ValueError(
                f"keys must have width {self.dim} like the queue (EmbeddingQueue(dim={self.dim})), "
                f"got shape {tuple(keys.shape)}; project the keys to {self.dim} or build the queue "
                f"with dim={keys.shape[1]}."
            )
        b = keys.shape[0]
        if ids is None:
            ids = torch.full((b,), -1, dtype=torch.long, device=keys.device)
        elif not isinstance(ids, Tensor) or ids.shape != (b,) or ids.dtype.is_floating_point:
            raise ValueError(
                f"ids must be an integer tensor of shape ({b},) like keys, got "
                f"{getattr(ids, 'shape', type(ids).__name__)}."
            )
        if b > self.size:
            keys, ids, b = keys[-self.size :], ids[-self.size :], self.size
        slots = (torch.arange(b, device=self.embeddings.device) + self.position) % self.size
        self.embeddings[slots] = keys.detach().to(self.embeddings)
        self.ids[slots] = ids.to(self.ids)
        self.position.copy_((self.position + b) % self.size)
        self.filled.copy_(torch.clamp(self.filled + b, max=self.size))

    def _order(self) -> Tensor:
        """Slots from oldest to newest."""
        n = int(self.filled)
        start = int(self.position) - n
        return (torch.arange(n, device=self.embeddings.device) + start) % self.size

    def negatives(self) -> Tensor:
        """The stored keys, oldest first: (M, D) with M = ``len(self)`` (a copy)."""
        return self.embeddings[self._order()]

    def ids_in_order(self) -> Tensor:
        """The stored ids, aligned with :meth:`negatives`: (M,)."""
        return self.ids[self._order()]

    def mask(self, query_ids: Tensor) -> Tensor:
        """(B, M) bool: True where a queue entry has the query's id (ignore it as a negative).

        Entries without an id (-1) are never masked.
        """
        if not isinstance(query_ids, Tensor) or query_ids.ndim != 1:
            raise ValueError(
                f"query_ids must be a 1-D integer tensor (B,), got "
                f"{getattr(query_ids, 'shape', type(query_ids).__name__)}."
            )
        stored = self.ids_in_order().to(query_ids.device)
        return (query_ids[:, None] == stored[None, :]) & (stored[None, :] >= 0)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, filled={len(self)}"
