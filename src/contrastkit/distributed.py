"""Distribution over ``torch.distributed`` ranks: the collectives, re-exported, and
:class:`GlobalBatchLoss` for losses that need every row of the global batch.

The collectives themselves live in :mod:`contrastkit.collectives` (a leaf module the losses
import); this module keeps the old import path. The softmax and sigmoid losses of
:mod:`contrastkit.functional` have no distributed twin: each takes ``group`` (the process group
its batch is spread over, :func:`~contrastkit.collectives.world_group` for all ranks) and runs
the same code on one process or many.

On W ranks with a local batch of B pairs, every local query is compared with the keys of all
ranks (W * B candidates, rank-major: the keys of rank 0, then of rank 1, ...). The positive of
local query ``i`` on rank ``r`` is global key ``r * B + i``. Extra negatives join the candidates
*after* the W * B keys, so positives are never interleaved with them.

Each rank returns the mean over its *local* anchors. The mean of these values over ranks is the
single-process loss on the concatenated global batch, and because
:func:`~contrastkit.collectives.all_gather_with_grad` sums the gradient of every rank in its
backward, the gradients that DDP averages over ranks are exactly the gradients of that global
loss::

    grad_DDP(theta) = 1/W sum_r d loss_r / d theta = d loss_global / d theta

Without an initialised process group (or with W = 1) everything reduces to the local
computation, so the same script runs on one process.

>>> from contrastkit.functional import info_nce
>>> q = torch.eye(4)
>>> float(info_nce(q, q, temperature=0.05, group=world_group())) < 1e-6  # one process
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from contrastkit.collectives import (
    Ranks,
    all_gather,
    all_gather_with_grad,
    all_reduce_,
    check_same_batch_size,
    get_rank,
    get_world_size,
    is_distributed,
    pregathered,
    world_group,
)
from contrastkit.collectives import (
    _collective_device as _collective_device,
)

__all__ = [
    "GlobalBatchLoss",
    "Ranks",
    "all_gather",
    "all_gather_with_grad",
    "all_reduce_",
    "check_same_batch_size",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "pregathered",
    "world_group",
]


class GlobalBatchLoss(torch.nn.Module):
    """A loss that needs every row of the global batch at once, under ``torch.distributed``.

    For losses that declare ``distributed = "global_batch"`` (batch statistics such as VICReg's
    covariance or Barlow Twins' cross-correlation, in-batch triplet mining): every tensor input
    is gathered with :func:`all_gather_with_grad` and the loss is computed on the global batch
    on every rank. Each rank's backward then carries ``W`` times the gradient of its own rows
    (the gather's backward sums the ranks' identical losses), so after DistributedDataParallel
    averages the ranks' parameter gradients they equal the single-process global-batch
    gradient exactly. The work is the whole batch's on every rank; the softmax losses avoid that
    with a ``group`` (local rows against gathered columns).

    Without a process group it is the loss itself.

    >>> from contrastkit.losses import create_loss
    >>> loss = GlobalBatchLoss(create_loss("vicreg"))
    >>> z = torch.randn(8, 4)
    >>> bool(torch.isclose(loss(z, z + 0.1), create_loss("vicreg")(z, z + 0.1)))
    True
    """

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *inputs: Tensor, **kwargs: Any) -> Tensor:
        if get_world_size() == 1:
            return self.loss(*inputs, **kwargs)
        for i, x in enumerate(inputs):
            check_same_batch_size(f"input {i}", x.shape[0])
        gathered = [all_gather_with_grad(x) if x.requires_grad else all_gather(x) for x in inputs]
        return self.loss(*gathered, **kwargs)
