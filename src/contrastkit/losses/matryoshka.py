"""Matryoshka representation learning: one loss on every prefix of the embedding.

Matryoshka Representation Learning, Kusupati et al. 2022, https://arxiv.org/abs/2205.13147:
train so that the first ``d`` coordinates of an embedding are a good embedding on their own, for
each ``d`` in a small set (e.g. 32, 64, 128, 256). The loss is

    L = sum_i w_i * loss(z[..., :d_i], ...)

with the wrapped loss applied unchanged to every prefix slice. At search time the embedding can
then be truncated to any trained ``d_i`` (and renormalised) at a graceful loss of quality:
``contrastkit index RUN --dim 64``.

Which inputs are sliced: every floating tensor argument (positional or keyword) with at least two
dimensions whose last dimension equals ``D``, the width of the first argument (queries, keys,
extra negatives ``(M, D)`` or ``(B, M, D)``); labels, masks and anything else pass unchanged.

Normalisation: losses whose metric is cosine L2-normalise their inputs themselves, so each prefix
is renormalised by the loss (the Matryoshka recipe); ``matryoshka`` never normalises on its own.
With ``dot`` or ``euclidean`` metrics the raw prefixes are compared, as the loss would compare them.

Distributed: with ``gather_distributed=True`` on the wrapped loss each prefix problem is the
global-batch problem of that prefix (slicing commutes with the all-gather), so the result equals
the single-process global batch. The prefix problems share one gather of each full embedding
input: ``matryoshka`` gathers it once and registers its prefixes with
:func:`contrastkit.collectives.pregathered`, so the wrapped loss's own gather of ``z[:, :d]`` is
answered from it (labels and ids, which are small, are still gathered per prefix). A loss that
gathers a concatenation of its inputs instead (``nt_xent`` gathers ``[z1; z2]``) still does one
gather per prefix.

Relations: a wrapper, not a loss of its own: it composes with every embedding loss of the
registry (:func:`contrastkit.losses.list_losses`) except those whose inputs are not embeddings
(``dino`` and ``swav`` take prototype scores, ``preference`` takes scalar scores). Its
truncation counterpart at inference is :func:`truncate_embeddings`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from contrastkit.collectives import all_gather_with_grad, get_world_size, pregathered
from contrastkit.functional.similarity import normalize

__all__ = [
    "NOT_EMBEDDING_LOSSES",
    "Matryoshka",
    "matryoshka",
    "truncate_embeddings",
    "wrap_matryoshka",
]

#: Registered losses whose inputs are not embeddings, so a prefix of them means nothing.
NOT_EMBEDDING_LOSSES = frozenset(
    {"dino", "swav", "preference", "listwise_ce", "pointwise_bce"}  # rerankers: logits in
)


def check_dims(dims: Sequence[int]) -> tuple[int, ...]:
    """``dims`` as a strictly increasing tuple of positive ints, or a ValueError saying how."""
    if isinstance(dims, (int, str)) or not isinstance(dims, Sequence) or not dims:
        raise ValueError(
            f"dims must be a non-empty sequence of embedding widths, e.g. (32, 64, 128), got "
            f"{dims!r}."
        )
    bad = [d for d in dims if not isinstance(d, int) or isinstance(d, bool) or d <= 0]
    if bad:
        raise ValueError(f"dims must be positive ints, got {list(dims)!r} (bad: {bad!r}).")
    if list(dims) != sorted(set(dims)):
        raise ValueError(
            f"dims must be strictly increasing without repeats, got {list(dims)!r}; pass "
            f"{sorted(set(dims))!r}."
        )
    return tuple(dims)


def truncate_embeddings(embeddings: Tensor, dim: int, *, renormalize: bool = True) -> Tensor:
    """The first ``dim`` coordinates of ``embeddings: (..., D)``, L2-renormalised by default.

    >>> import torch
    >>> truncate_embeddings(torch.tensor([[3.0, 4.0, 12.0]]), 2)
    tensor([[0.6000, 0.8000]])
    """
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}.")
    width = embeddings.shape[-1]
    if dim > width:
        raise ValueError(
            f"dim={dim} is larger than the embedding width {width}; pick dim <= {width} "
            "(ideally one of the trained Matryoshka dims)."
        )
    prefix = embeddings[..., :dim]  # (..., dim)
    return normalize(prefix) if renormalize else prefix


def _slice(x: Any, width: int, d: int) -> Any:
    if isinstance(x, Tensor) and x.is_floating_point() and x.ndim >= 2 and x.shape[-1] == width:
        return x[..., :d]  # (..., d) prefix
    return x


class Matryoshka(nn.Module):
    """Weighted sum of ``loss`` over the prefix slices ``z[..., :d]`` for ``d`` in ``dims``.

    Args:
        loss: any embedding loss module (its hyperparameters, temperature and distributed switch
            are used as they are for every prefix).
        dims: strictly increasing prefix widths; the largest may be below the full width (the
            remaining coordinates then get no gradient from this loss).
        weights: one non-negative weight per dim (default 1 each, as in the paper).

    Forward takes exactly the wrapped loss's arguments and returns a scalar.

    >>> import torch
    >>> from contrastkit.losses import InfoNCE
    >>> g = torch.Generator().manual_seed(0)
    >>> q, k = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    >>> loss = matryoshka(InfoNCE(temperature=0.1), dims=(2, 4, 8), weights=(1.0, 1.0, 2.0))
    >>> base = InfoNCE(temperature=0.1)
    >>> expected = base(q[:, :2], k[:, :2]) + base(q[:, :4], k[:, :4]) + 2 * base(q, k)
    >>> torch.allclose(loss(q, k), expected)
    True
    """

    def __init__(
        self, loss: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(
                f"loss must be an nn.Module embedding loss (e.g. create_loss('info_nce')), got "
                f"{type(loss).__name__}."
            )
        name = _registered_name(loss)
        if name in NOT_EMBEDDING_LOSSES:
            raise TypeError(
                f"loss {name!r} does not take embeddings (its inputs are prototype or scalar "
                "scores), so its prefixes mean nothing; wrap an embedding loss such as info_nce."
            )
        if isinstance(loss, Matryoshka):
            raise TypeError("loss is already a Matryoshka wrapper; pass all dims to one wrapper.")
        self.loss = loss
        self.dims = check_dims(dims)
        if weights is None:
            weights = [1.0] * len(self.dims)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.dims) or any(w < 0 or w != w for w in weights):
            raise ValueError(
                f"weights must be {len(self.dims)} non-negative numbers (one per dim of "
                f"{list(self.dims)}), got {weights!r}."
            )
        self.weights = tuple(weights)

    def __getattr__(self, name: str) -> Any:
        # Attributes the trainer reads from a loss (metric, gather_distributed, stop-gradient
        # declarations) are the wrapped loss's.
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("loss")
            if inner is None:
                raise
            return getattr(inner, name)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        first = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(first, Tensor) or first.ndim < 2:
            raise TypeError(
                "matryoshka: the first argument must be the (B, D) embeddings of the wrapped loss, "
                f"got {type(first).__name__}."
            )
        width = first.shape[-1]
        if self.dims[-1] > width:
            raise ValueError(
                f"dims={list(self.dims)} go up to {self.dims[-1]} but the embeddings are {width} "
                f"wide; use dims <= {width} (e.g. {[d for d in self.dims if d <= width]})."
            )
        shared = bool(getattr(self.loss, "gather_distributed", False)) and get_world_size() > 1
        gathered: dict[int, Tensor] = {}  # id(input) -> its one gather (W*B, ..., D)
        total: Tensor | None = None
        for d, w in zip(self.dims, self.weights):
            part_args = [_slice(a, width, d) for a in args]
            part_kwargs = {key: _slice(v, width, d) for key, v in kwargs.items()}
            pairs = []
            if shared:  # the prefix losses read their keys from one gather of each full input
                originals = [*args, *kwargs.values()]
                for full, part in zip(originals, [*part_args, *part_kwargs.values()]):
                    if part is full or not isinstance(part, Tensor):
                        continue
                    pairs.append((part, _gathered_prefix(full, d, gathered)))
            with pregathered(pairs):
                term = w * self.loss(*part_args, **part_kwargs)
            total = term if total is None else total + term
        assert total is not None  # dims is non-empty
        return total

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}"


def _gathered_prefix(full: Tensor, d: int, cache: dict[int, Tensor]) -> Callable[[], Tensor]:
    """The prefix ``[..., :d]`` of one all-gather of ``full``, gathered on first use."""

    def prefix() -> Tensor:
        if id(full) not in cache:
            cache[id(full)] = all_gather_with_grad(full)  # (W*B, ..., D)
        return cache[id(full)][..., :d]

    return prefix


def _registered_name(loss: nn.Module) -> str | None:
    from contrastkit.losses.registry import LOSSES

    for name in LOSSES.list():
        if type(loss) is LOSSES.get(name):
            return name
    return None


def matryoshka(
    loss: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None
) -> Matryoshka:
    """Wrap ``loss`` so it is applied to every prefix ``z[..., :d]``, ``d`` in ``dims``
    (Kusupati et al. 2022, https://arxiv.org/abs/2205.13147); see :class:`Matryoshka`."""
    return Matryoshka(loss, dims, weights)


def wrap_matryoshka(loss_module: nn.Module, dims: Sequence[int] | None) -> nn.Module:
    """For the trainer: ``loss_module`` itself when ``dims`` is ``None`` or empty (config key
    ``loss.matryoshka_dims`` unset), else ``matryoshka(loss_module, dims)``.

    >>> from contrastkit.losses import NTXent
    >>> wrap_matryoshka(NTXent(), None)
    NTXent(temperature=0.5, metric='cosine')
    >>> wrap_matryoshka(NTXent(), [8, 16]).dims
    (8, 16)
    """
    if dims is None or (isinstance(dims, Sequence) and not isinstance(dims, str) and not dims):
        return loss_module
    return matryoshka(loss_module, dims)
