"""The collectives every distributed piece of contrastkit goes through.

Rank and world helpers, the one differentiable all-gather (:func:`all_gather_with_grad`), the
gradient-free gather and all-reduce of labels, ids, masks and statistics, and :class:`Ranks`,
the processes one loss problem is spread over. Every function here is the identity on a single
process (no initialised ``torch.distributed`` process group, or W = 1), so one code path serves
a local and a distributed problem.

This module imports nothing else from contrastkit (only torch and the standard library):
``functional/`` may import it, and it imports nothing back.

Shape notation: B local batch, W world size (the ranks of the group), D embedding dim.

>>> all_gather_with_grad(torch.ones(2, 3)).shape  # one process: identity
torch.Size([2, 3])
>>> Ranks.of(None)
Ranks(group=None, world=1, rank=0)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
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


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any = None) -> int:
    """This process's rank in ``group`` (None: the default group), 0 without a process group."""
    return dist.get_rank(group) if is_distributed() else 0


def get_world_size(group: Any = None) -> int:
    """Number of ranks W of ``group`` (None: the default group), 1 without a process group."""
    return dist.get_world_size(group) if is_distributed() else 1


def world_group() -> Any:
    """The default process group (all ranks) when one is initialised, else None.

    What a loss computed over every rank takes as its ``group`` (the trainer's choice under
    ``torchrun``); None there means this process alone.

    >>> world_group() is None  # one process
    True
    """
    return dist.group.WORLD if is_distributed() else None


def check_same_batch_size(name: str, n: int, group: Any = None) -> None:
    """Raise on every rank if the ranks of ``group`` (None: the default group) disagree on a
    batch size (all-gathers the sizes first).

    Every rank gets the same list of sizes, so every rank raises the same error instead of one
    rank hanging in a later collective.

    >>> check_same_batch_size("query", 8)  # one process: nothing to compare
    """
    world = get_world_size(group)
    if world == 1:
        return
    size = torch.tensor([int(n)], dtype=torch.long, device=_collective_device(group))
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    values = [int(s) for s in sizes]
    if len(set(values)) != 1:
        raise ValueError(
            f"{name} must have the same batch size on every rank of a loss computed over a "
            f"process group (gather_distributed=True), got sizes {values} on ranks "
            f"0..{world - 1}; use drop_last=True in the DataLoader (or a batch sampler with an "
            "exact length) so every rank sees full batches."
        )


def _collective_device(group: Any = None) -> torch.device:
    """Device the process group's backend communicates on (CPU for gloo, CUDA for nccl)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks and keeps the slice.

    Each rank's loss depends on every rank's embeddings, so the gradient of the summed loss with
    respect to this rank's rows is the all-reduced (summed) gradient restricted to those rows.
    A backward that only kept the local gradient (no sum) loses every cross-rank term.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        ctx.rank, ctx.rows, ctx.group = rank, x.shape[0], group
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)  # (W*B, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


_PREGATHERED: contextvars.ContextVar[dict[int, tuple[Tensor, Callable[[], Tensor]]] | None] = (
    contextvars.ContextVar("contrastkit_pregathered", default=None)
)


def all_gather_with_grad(x: Tensor, group: Any = None) -> Tensor:
    """Differentiable all-gather along dim 0: (B, ...) on each rank -> (W*B, ...), rank-major.

    Over the ranks of ``group`` (None: the default group). Backward all-reduces (sums) the
    incoming gradient and returns this rank's slice. Batch sizes must agree across ranks
    (checked with :func:`check_same_batch_size` by the losses). Inside :func:`pregathered`, a
    tensor registered there is answered from its registered gather instead of a new collective.

    >>> all_gather_with_grad(torch.ones(2, 3)).shape  # one process: identity
    torch.Size([2, 3])
    """
    if get_world_size(group) == 1:
        return x
    known = _PREGATHERED.get()
    if known is not None:
        entry = known.get(id(x))
        if entry is not None and entry[0] is x:
            return entry[1]()
    return _AllGatherWithGrad.apply(x, group)


@contextlib.contextmanager
def pregathered(pairs: Sequence[tuple[Tensor, Callable[[], Tensor]]]) -> Iterator[None]:
    """Within the block, ``all_gather_with_grad(local)`` returns ``gathered()`` for every
    registered ``(local, gathered)`` pair (matched by tensor identity) instead of gathering again.

    This is how several losses share one gather: e.g. Matryoshka registers each prefix view
    ``z[:, :d]`` of its embeddings ``z: (B, D)`` with a callable returning the same prefix of one
    gather ``(W*B, D)`` of ``z`` (run on first use), and every prefix loss reads its keys from
    that one gather. The gradient stays exact: the prefix gradients add up on the one gathered
    tensor, whose backward all-reduces them once. ``gathered()`` must return what
    :func:`all_gather_with_grad` of ``local`` would. Being a callable, the shared gather runs
    only if a loss asks for it: a loss that gathers a concatenation of its inputs instead (like
    NT-Xent) costs no extra collective.

    >>> z = torch.randn(4, 8)
    >>> view = z[:, :2]
    >>> with pregathered([(view, lambda: view)]):
    ...     all_gather_with_grad(view) is view
    True
    """
    previous = _PREGATHERED.get()
    table = dict(previous or {})
    table.update({id(local): (local, gathered) for local, gathered in pairs})
    token = _PREGATHERED.set(table)
    try:
        yield
    finally:
        _PREGATHERED.reset(token)


@torch.no_grad()
def all_gather(x: Tensor, group: Any = None) -> Tensor:
    """All-gather without gradient along dim 0 over ``group`` (None: the default group), for
    labels, ids and masks (any dtype, bool too).

    >>> all_gather(torch.tensor([1, 2]))
    tensor([1, 2])
    """
    world = get_world_size(group)
    if world == 1:
        return x
    send = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo has no bool collectives
    send = send.contiguous()
    parts = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(parts, send, group=group)
    out = torch.cat(parts, dim=0)
    return out.bool() if x.dtype == torch.bool else out


_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


@torch.no_grad()
def all_reduce_(x: Tensor, op: str = "sum", group: Any = None) -> Tensor:
    """All-reduce ``x`` in place over the ranks of ``group`` (None: the default group; ``op``:
    ``"sum"``, ``"max"``, ``"min"``) and return it; one process: ``x`` unchanged. The library's
    loose collectives (Sinkhorn's balance, DINO's centre, the streaming monitors, the symmetric
    loss's column statistics) all go through here.

    >>> all_reduce_(torch.tensor([1.0, 2.0]), "max")
    tensor([1., 2.])
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"op must be one of {sorted(_REDUCE_OPS)}, got {op!r}.")
    if not is_distributed() or dist.get_world_size(group) == 1:
        return x
    dist.all_reduce(x, op=getattr(dist.ReduceOp, _REDUCE_OPS[op]), group=group)
    return x


@dataclass(frozen=True)
class Ranks:
    """The processes one loss problem is spread over: this process's rows are block ``rank`` of
    ``world`` equal blocks, rank-major.

    ``Ranks.of(group)`` resolves a loss's ``group`` argument: None (or no initialised process
    group) is this process alone, ``world = 1``, where every method is the identity; a
    ``torch.distributed`` process group (e.g. ``torch.distributed.group.WORLD``, see
    :func:`world_group`) is its ranks. A loss runs the same code either way: its keys go through
    :meth:`gather_with_grad`, its labels, ids and masks through :meth:`gather`.

    >>> r = Ranks.of(None)
    >>> r.world, r.rank, r.gather(torch.arange(3)).tolist()
    (1, 0, [0, 1, 2])
    """

    group: Any
    world: int
    rank: int

    @classmethod
    def of(cls, group: Any) -> Ranks:
        """The ranks of ``group``; None or no process group: this process alone."""
        if group is None or not is_distributed():
            return cls(None, 1, 0)
        return cls(group, dist.get_world_size(group), dist.get_rank(group))

    def gather_with_grad(self, x: Tensor) -> Tensor:
        """(B, ...) -> (W*B, ...) rank-major, differentiable (:func:`all_gather_with_grad`)."""
        return x if self.world == 1 else all_gather_with_grad(x, self.group)

    def gather(self, x: Tensor) -> Tensor:
        """(B, ...) -> (W*B, ...) rank-major, no gradient (:func:`all_gather`)."""
        return x if self.world == 1 else all_gather(x, self.group)

    def all_reduce_(self, x: Tensor, op: str = "sum") -> Tensor:
        """In-place all-reduce over the ranks (:func:`all_reduce_`), returns ``x``."""
        return x if self.world == 1 else all_reduce_(x, op, self.group)

    def check_same_batch_size(self, name: str, n: int) -> None:
        """Raise on every rank if the ranks disagree on ``n`` (:func:`check_same_batch_size`)."""
        if self.world > 1:
            check_same_batch_size(name, n, self.group)

    def ring_pass(self, tensors: Sequence[Tensor], tag: int = 0) -> Callable[[], list[Tensor]]:
        """Start one step of a ring: send each tensor to rank ``rank + 1`` and receive tensors
        of the same shapes and dtypes from rank ``rank - 1`` (mod W), without waiting.

        Returns ``wait()``, which blocks until the step is done and returns the received
        tensors. The sends read ``tensors`` until then, so do not modify them before
        ``wait()``; compute on them meanwhile (that is how the ring of
        :mod:`contrastkit.functional.ring` hides the transfer). Tags ``tag, tag + 1, ...``
        (one per tensor) keep two steps in flight at once apart. Every rank must call it with
        the same shapes. One process: ``wait()`` returns ``tensors`` (a ring of one).

        >>> Ranks.of(None).ring_pass([torch.ones(2)])()[0].tolist()
        [1.0, 1.0]
        """
        if self.world == 1:
            return lambda: list(tensors)
        to = dist.get_global_rank(self.group, (self.rank + 1) % self.world)
        frm = dist.get_global_rank(self.group, (self.rank - 1) % self.world)
        sends = [t.contiguous() for t in tensors]  # referenced until wait()
        received = [torch.empty_like(t) for t in sends]
        ops = []
        for i, (out, into) in enumerate(zip(sends, received)):
            ops.append(dist.P2POp(dist.isend, out.contiguous(), to, self.group, tag + i))
            ops.append(dist.P2POp(dist.irecv, into, frm, self.group, tag + i))
        works = dist.batch_isend_irecv(ops)

        def wait() -> list[Tensor]:
            for work in works:
                work.wait()
            del sends[:]
            return received

        return wait
