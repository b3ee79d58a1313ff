"""Class logits without the (B, C) matrix: the memory-linear engine of the margin-softmax losses.

A softmax over ``C`` classes (ArcFace, CosFace, Sub-center ArcFace, normalized softmax) needs,
per embedding row ``i``, the log-sum-exp of its logits over all classes and the logit of its own
class. Both are computed here with the class centres ``weight: (C * K, D)`` streamed in blocks
of ``block_size`` classes: the forward keeps a running max and sum of exponentials per row
(online log-sum-exp), the backward recomputes each block's logits and writes that block's
gradient. The logits ``(B, C)`` and their gradient are never stored: the extra memory is
``O(B * block_size * K)`` whatever ``C`` is (at C = 10^6, B = 1,024 the dense float32 logits and
their gradient alone are 8 GiB); the centres' gradient is written block by block into one
``(C * K, D)`` tensor (the target column's share added into it too), the only centre-sized
allocation. The margin touches the target column only: it is any elementwise function ``f`` of
the ``(B,)`` target cosines, differentiated by autograd on those:

    loss_i = logsumexp_j(z_ij) - z_{i y_i},   z_ij = s * cos_ij (j != y_i),   z_{i y_i} = s * f(cos_{i y_i})

with ``cos_ij`` the cosine between embedding ``i`` and centre ``j`` (the max over the ``K``
sub-centres of class ``j``), ``s`` the scale and ``f`` the margin (:func:`arcface_margin`,
:func:`cosface_margin`, identity for normalized softmax).

**Half precision.** bf16 / fp16 embeddings take the half path: each block of centres is
rounded to the half dtype (as autocast rounds a layer's weight), normalized in float32 and
rounded again for the product, so are the unit embeddings; the logits, the running statistics,
the loss and the centres' gradient are float32
(:func:`contrastkit.functional.tiled.block_logits`). Float64 embeddings compute in float64 (the
centres are upcast). Under autocast these losses own their precision as ``"float32"``
(:mod:`contrastkit.functional.precision`), not ``"half"``: the ``"half"`` mode rounds every
float32 matrix argument to bf16, and here that is the centres as a whole, a half copy of them
and of their gradient (1 GiB each at C = 10^6, D = 512, beyond this engine's memory budget), and
rounding the centres as well as the embeddings misses the half contract against float64 (1.2e-3
relative at scale 20, measured). Pass bf16 embeddings to take the half path.

**Partial FC** (``sample_fraction < 1``; An et al., Partial FC, 2021,
https://arxiv.org/abs/2203.15565): each call keeps every class present in the batch and a
uniformly drawn ``sample_fraction`` of the others; the softmax runs over the kept classes only.
Its bias: the denominator misses the dropped negatives, so the loss is lower than the full
softmax loss and the negatives' gradient is the softmax over the sample, not an unbiased estimate
of the full gradient (dropped classes get no gradient that step). In practice (the paper) a
fraction of 0.1 trains as well as the full softmax on million-class face sets; a small C or a
fraction near 1 makes the difference vanish. The kept centres are copied (``fraction * C * K *
D``), their gradient scattered back into ``weight``'s gradient.

**Sharding by class** (``shard_classes=True`` under ``torch.distributed``): rank ``r`` holds
the centres of a contiguous range of classes (:func:`class_shard`), every rank computes the
logits of the whole gathered batch against its own classes, and the log-sum-exp (max and sum of
exponentials) and the target logits are combined by all-reduce. Each rank returns the mean over
its *local* rows (their mean over ranks is the single-process loss, as for the library's other
distributed losses); the gradients are exact under DDP's averaging of the encoder, and each
rank's centres get exactly the single-process gradient of their rows (keep them out of DDP's
averaging: they are not replicated).

Shape notation: B batch, D embedding dim, C classes, K sub-centres per class.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import contrastkit.collectives as cd
from contrastkit._checks import check_embeddings, check_labels, check_reduction, reduce
from contrastkit.functional import bf16_gemm
from contrastkit.functional.precision import own_precision
from contrastkit.functional.tiled import block_logits

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "arcface_margin",
    "centre_prefix",
    "class_shard",
    "cosface_margin",
    "margin_softmax_loss",
    "sample_classes",
]

DEFAULT_BLOCK_SIZE = 2048  # classes per block: (1024, 2048) float32 logits are 8 MiB, cache-sized
_EPS = 1e-12  # torch.nn.functional.normalize's


def arcface_margin(
    cos: Tensor, margin: float, *, easy_margin: bool = False, threshold: bool = True
) -> Tensor:
    """ArcFace's target cosine ``cos(theta + m)`` (additive angular margin ``m`` in radians).

    ``cos(theta + m)`` stops decreasing in ``theta`` once ``theta + m > pi``; two conventions
    keep the target logit monotone (insightface's, also pytorch-metric-learning's):

    * ``threshold=True`` (default): for ``theta > pi - m`` use ``cos(theta) - m * sin(m)``
      instead (CosFace-like penalty, continuous at the switch);
    * ``easy_margin=True``: apply the margin only where ``cos > 0`` (``theta < pi / 2``), the
      plain cosine elsewhere (takes precedence over ``threshold``);
    * neither: ``cos(theta + m)`` everywhere.

    ``cos(theta + m) = cos * cos(m) - sin(theta) * sin(m)`` with ``sin(theta) = sqrt(1 - cos^2)``
    clamped away from 0, so the gradient stays finite at ``cos = +-1``. ``cos: (B,)``.

    >>> round(float(arcface_margin(torch.tensor([0.0]), math.pi / 6)), 4)  # cos(90 + 30 deg)
    -0.5
    """
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(_EPS))
    phi = cos * math.cos(margin) - sin * math.sin(margin)
    if easy_margin:
        return torch.where(cos > 0, phi, cos)
    if threshold:
        return torch.where(cos > math.cos(math.pi - margin), phi, cos - margin * math.sin(margin))
    return phi


def cosface_margin(cos: Tensor, margin: float) -> Tensor:
    """CosFace's target cosine ``cos - m`` (additive cosine margin). ``cos: (B,)``.

    >>> cosface_margin(torch.tensor([0.5]), 0.35)
    tensor([0.1500])
    """
    return cos - margin


def class_shard(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """The classes ``[start, stop)`` that rank ``rank`` of ``world`` holds: contiguous ranges
    whose sizes differ by at most one (the first ``C mod W`` ranks hold one more; never empty).

    >>> [class_shard(10, r, 3) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    if num_classes < world:
        raise ValueError(
            f"num_classes ({num_classes}) must be >= the world size ({world}) to shard the "
            "classes over the ranks; use shard_classes=False."
        )
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def sample_classes(
    labels: Tensor, num_classes: int, fraction: float, generator: torch.Generator | None = None
) -> Tensor:
    """Partial FC's class sample: every class in ``labels`` and a uniform random
    ``fraction`` of the others, ``max(ceil(fraction * C), #batch classes)`` sorted ids ``(S,)``.

    ``labels: (B,)`` class ids in ``[0, C)``; ids ``< 0`` (rows of another shard) are ignored.

    >>> s = sample_classes(torch.tensor([7, 2]), 10, 0.3, torch.Generator().manual_seed(0))
    >>> len(s), bool(torch.isin(torch.tensor([2, 7]), s).all())
    (3, True)
    """
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"sample_fraction must be in (0, 1], got {fraction!r}.")
    positive = torch.unique(labels[labels >= 0])
    count = max(math.ceil(fraction * num_classes), int(positive.numel()))
    if count >= num_classes:
        return torch.arange(num_classes, device=labels.device)
    score = torch.rand(num_classes, generator=generator, device="cpu").to(labels.device)
    score[positive] = 2.0  # always kept
    return torch.topk(score, count).indices.sort().values


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _unit_rows(w: Tensor, acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(w / |w|, |w|)`` per row in ``acc``; ``w: (R, D)``."""
    w = w.to(acc)
    norm = w.norm(dim=1).clamp_min(_EPS)  # (R,)
    return w / norm[:, None], norm


def _mm_acc(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """``a @ b`` in ``acc`` with ``a`` in ``acc`` (gradient weights) and ``b`` the operand
    dtype: half ``b`` uses a half x half -> float32 GEMM where one exists, else float32."""
    if b.dtype == acc:
        return a @ b
    if b.device.type == "cuda" and hasattr(torch.ops.aten.mm, "dtype"):
        return torch.mm(a.to(b.dtype), b, out_dtype=acc)
    if acc == torch.float32 and bf16_gemm.available(b):
        out = torch.empty(a.shape[0], b.shape[1], dtype=acc, device=a.device)
        return bf16_gemm.addmm_(out, a.to(b.dtype), b, beta=0.0)
    return a @ b.to(acc)


def _compute_operand(x: Tensor, operand_dtype: torch.dtype) -> Tensor:
    """``x`` rounded to ``operand_dtype``, kept there where a fast half x half -> float32 GEMM
    exists (CUDA's ``out_dtype``, oneDNN's bf16 on a CPU with bf16 dot products), else upcast
    (exactly) to float32 for the products."""
    xo = x.to(operand_dtype)
    if xo.dtype == x.dtype:
        return xo
    fast = (x.device.type == "cuda" and hasattr(torch.ops.aten.mm, "dtype")) or (
        bf16_gemm.available(xo)
    )
    return xo if fast else xo.to(x.dtype)


class _Block:
    """One block of classes ``[start, stop)``: its cosines with every row, recomputed on demand.

    ``x`` is in the compute dtype: the half operand dtype where a half x half -> float32 GEMM
    exists, else ``acc`` holding the half-rounded values (a CPU without bf16 dot products
    multiplies bf16 slower than float32: 11.4 s against 2.5 s for one ArcFace step at
    C = 16,384, measured); either way the products are of half-rounded operands.
    """

    def __init__(
        self,
        x: Tensor,
        weight: Tensor,
        start: int,
        stop: int,
        k: int,
        acc: torch.dtype,
        operand_dtype: torch.dtype,
    ) -> None:
        w = weight[start * k : stop * k]  # (c*K, D)
        if operand_dtype != acc:  # half path: the centres as half operands
            w = w.to(operand_dtype)
        self.unit, self.norm = _unit_rows(w, acc)  # (c*K, D), (c*K,)
        self.operand = self.unit.to(operand_dtype).to(x.dtype)  # rounded to half, compute dtype
        cos = block_logits(x, self.operand, torch.empty(x.shape[0], self.unit.shape[0], dtype=acc))
        self.argmax: Tensor | None = None
        if k > 1:
            cos, self.argmax = cos.view(x.shape[0], stop - start, k).max(dim=2)  # (B, c)
        self.cos = cos  # (B, c)


class _MarginSoftmax(torch.autograd.Function):
    """Per-row ``loss_i = lse_i - t_i`` with the classes of ``weight`` streamed in blocks.

    Inputs: ``x (N, D)`` unit rows in the accumulation dtype, ``weight (C*K, D)`` raw centres,
    ``scale_tensor`` the scale ``s`` (0-d; a learnable one gets its gradient), ``labels (N,)``
    this shard's class ids (``-1``: the target is on another rank's shard), ``margin_fn`` the
    elementwise target margin ``f``. The target logit ``t_i = s * f(cos_{i y_i})`` is computed
    here too, so that its gradient to the centres is added into the one centre gradient (an
    autograd path through ``weight[labels]`` would allocate a second ``(C*K, D)`` gradient);
    ``f'`` comes from autograd on the ``(N,)`` target cosines. Output ``(N,)``, combined over
    ranks when ``sharded``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        scale_tensor: Tensor,
        labels: Tensor,
        margin_fn: Callable[[Tensor], Tensor],
        k: int,
        block: int,
        operand_dtype: torch.dtype,
        sharded: bool,
    ) -> Tensor:
        acc = x.dtype
        scale = float(scale_tensor.detach())
        xo = _compute_operand(x, operand_dtype)
        owned = (labels >= 0).nonzero().squeeze(1)  # rows whose class is on this shard
        cos_y = _target_geometry(xo, weight, labels[owned], owned, k, operand_dtype, acc)[0]
        with torch.enable_grad():
            c = cos_y.detach().requires_grad_()
            f = margin_fn(c)
            (df,) = torch.autograd.grad(f.sum(), c)  # f is elementwise: its derivative
        target = torch.zeros(x.shape[0], dtype=acc, device=x.device)
        target[owned] = scale * f.detach()
        if sharded:  # each row's class is on exactly one rank
            target = cd.all_reduce_(target, "sum")
        num = weight.shape[0] // k
        run_max = torch.full((x.shape[0],), -math.inf, dtype=acc, device=x.device)
        run_sum = torch.zeros(x.shape[0], dtype=acc, device=x.device)
        for start in range(0, num, block):
            stop = min(start + block, num)
            z = _block_logits(xo, weight, target, labels, scale, k, start, stop, operand_dtype).cos
            new_max = torch.maximum(run_max, z.max(dim=1).values)
            block_sum = z.sub_(new_max[:, None]).exp_().sum(dim=1)  # in place: z is spent
            run_sum = run_sum * torch.exp(run_max - new_max) + block_sum
            run_max = new_max
        if sharded:
            global_max = cd.all_reduce_(run_max.clone(), "max")
            run_sum = cd.all_reduce_(run_sum * torch.exp(run_max - global_max), "sum")
            run_max = global_max
        lse = run_max + torch.log(run_sum)
        ctx.save_for_backward(x, weight, labels, lse, target, f.detach(), df)
        ctx.params = (scale, k, block, operand_dtype, sharded)
        ctx.scale_dtype = scale_tensor.dtype
        return lse - target

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, labels, lse, target, f, df = ctx.saved_tensors
        scale, k, block, operand_dtype, sharded = ctx.params
        if sharded:  # every rank's centres see every rank's rows
            grad = cd.all_reduce_(grad.contiguous().clone(), "sum")
        xo = _compute_operand(x, operand_dtype)
        acc = lse.dtype
        num = weight.shape[0] // k
        learnable = ctx.needs_input_grad[2]
        grad_x = torch.zeros(x.shape, dtype=acc, device=x.device)
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_t = -grad  # d loss_i / d t_i through "- t_i"; the softmax adds p_iy below
        grad_scale = torch.zeros((), dtype=acc, device=x.device)
        rows = torch.arange(x.shape[0], device=x.device)
        for start in range(0, num, block):
            stop = min(start + block, num)
            blk = _block_logits(xo, weight, target, labels, scale, k, start, stop, operand_dtype)
            z = blk.cos
            if learnable:  # a learnable scale needs z beside p
                p = torch.exp(z - lse[:, None]).mul_(grad[:, None])  # (B, c): d loss / d z
            else:
                p = z.sub_(lse[:, None]).exp_().mul_(grad[:, None])  # in place: z is spent
            inside = (labels >= start) & (labels < stop)
            r, col = rows[inside], labels[inside] - start
            grad_t[r] += p[r, col]
            p[r, col] = 0.0
            if learnable:  # z = scale * cos off the target column
                grad_scale += (p * z).sum() / scale
            p.mul_(scale)  # d loss / d cos
            if k > 1:  # the gradient reaches the arg-max sub-centre only
                assert blk.argmax is not None
                full = torch.zeros(*p.shape, k, dtype=acc, device=p.device)
                p = full.scatter_(2, blk.argmax[..., None], p[..., None]).view(p.shape[0], -1)
            grad_x += _mm_acc(p, blk.operand, acc)  # (B, D)
            if grad_w is not None:
                g_unit = _mm_acc(p.T, xo, acc)  # (c*K, D)
                radial = (g_unit * blk.unit).sum(dim=1, keepdim=True)
                g = (g_unit - blk.unit * radial) / blk.norm[:, None]
                grad_w[start * k : stop * k] = g.to(weight.dtype)
        # The target column: t_i = scale * f(cos_i), cos_i = <x_i, u_i> on this shard's rows.
        owned = (labels >= 0).nonzero().squeeze(1)
        g_t = grad_t[owned]
        if learnable:
            grad_scale += (g_t * f).sum()
        g_cos = g_t * scale * df  # (n,)
        _, unit, operand, norm, row = _target_geometry(
            xo, weight, labels[owned], owned, k, operand_dtype, acc
        )
        grad_x.index_add_(0, owned, g_cos[:, None] * operand)
        if grad_w is not None:
            g_unit = g_cos[:, None] * xo[owned].to(acc)  # (n, D)
            g = (g_unit - unit * (g_unit * unit).sum(dim=1, keepdim=True)) / norm[:, None]
            grad_w.index_add_(0, row, g.to(weight.dtype))
            if sharded:  # W ranks' local-row losses each weighted every row (see the module doc)
                grad_w /= cd.get_world_size()
        grad_s = grad_scale.to(ctx.scale_dtype) if learnable else None
        return (grad_x.to(x.dtype), grad_w, grad_s) + (None,) * 6


def _block_logits(
    xo: Tensor,
    weight: Tensor,
    target: Tensor,
    labels: Tensor,
    scale: float,
    k: int,
    start: int,
    stop: int,
    operand_dtype: torch.dtype,
) -> _Block:
    """The block's logits ``z`` (B, c) in ``blk.cos``: ``s * cos`` with the target column
    replaced by ``target``."""
    acc = target.dtype
    blk = _Block(xo, weight, start, stop, k, acc, operand_dtype)
    z = blk.cos.mul_(scale)
    inside = (labels >= start) & (labels < stop)
    rows = inside.nonzero().squeeze(1)
    z[rows, labels[rows] - start] = target[rows]
    return blk


def _target_geometry(
    xo: Tensor,
    weight: Tensor,
    labels: Tensor,
    rows: Tensor,
    k: int,
    operand_dtype: torch.dtype,
    acc: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """For the rows ``rows`` and their classes ``labels`` (n,): the target cosine (max over
    the K sub-centres), that sub-centre's unit vector (``acc``) and half-rounded operand, its
    norm and its row in ``weight``: ``(n,), (n, D), (n, D), (n,), (n,)``."""
    d = weight.shape[1]
    centres = weight.view(-1, k, d)[labels]  # (n, K, D)
    if operand_dtype != acc:  # the same rounded operands as the streamed logits
        centres = centres.to(operand_dtype)
    centres = centres.to(acc)
    norm = centres.norm(dim=2).clamp_min(_EPS)  # (n, K)
    unit = centres / norm[..., None]
    operand = unit.to(operand_dtype).to(acc)
    cos_all = torch.einsum("nd,nkd->nk", xo[rows].to(acc), operand)  # (n, K)
    cos, sub = cos_all.max(dim=1)
    pick = torch.arange(labels.shape[0], device=labels.device)
    return cos, unit[pick, sub], operand[pick, sub], norm[pick, sub], labels * k + sub


def _check_inputs(embeddings: Tensor, labels: Tensor, weight: Tensor, k: int) -> None:
    check_embeddings("embeddings", embeddings)
    check_labels("labels", labels, embeddings.shape[0])
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise ValueError(
            f"weight must be a 2-D (C * K, D) tensor of class centres, got "
            f"{getattr(weight, 'shape', type(weight).__name__)}."
        )
    if weight.shape[1] < embeddings.shape[1]:
        raise ValueError(
            f"weight must have at least the embedding dimension D = {embeddings.shape[1]} of "
            f"embeddings {tuple(embeddings.shape)}, got weight {tuple(weight.shape)}; build the "
            f"loss with embedding_dim={embeddings.shape[1]}."
        )
    if not isinstance(k, int) or k < 1 or weight.shape[0] % k or weight.shape[0] == 0:
        raise ValueError(
            f"weight rows ({weight.shape[0]}) must be a positive multiple of num_subcenters "
            f"({k!r}): (C * K, D), class-major."
        )


def centre_prefix(weight: Tensor, dim: int) -> Tensor:
    """The first ``dim`` coordinates of the centres ``(C * K, D)`` for embeddings of width
    ``dim <= D``: Matryoshka prefixes share the centres' prefixes (MRL-E, Kusupati et al.,
    Matryoshka Representation Learning, 2022, https://arxiv.org/abs/2205.13147). A view; its
    gradient costs one more centre-sized tensor (autograd's slice backward).

    >>> centre_prefix(torch.zeros(5, 8), 3).shape
    torch.Size([5, 3])
    """
    return weight if weight.shape[1] == dim else weight[:, :dim]


def _check_label_range(labels: Tensor, num_classes: int) -> None:
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = high if high >= num_classes else low
        raise ValueError(
            f"labels must be class ids in [0, num_classes) = [0, {num_classes}), got {bad}; "
            f"build the loss with num_classes > {max(high, 0)} (one centre per class) or remap "
            "the labels to 0..C-1."
        )


@own_precision("float32")
def margin_softmax_loss(
    embeddings: Tensor,
    labels: Tensor,
    weight: Tensor,
    *,
    scale: float | Tensor,
    margin: str = "none",
    margin_value: float = 0.0,
    easy_margin: bool = False,
    num_subcenters: int = 1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    sample_fraction: float = 1.0,
    generator: torch.Generator | None = None,
    shard_classes: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy over cosine class logits with a margin on the target, streamed.

    ``loss_i = logsumexp_j z_ij - z_{i y_i}`` with ``z_ij = scale * cos(x_i, w_j)`` and the
    target ``z_{i y_i} = scale * f(cos(x_i, w_{y_i}))``: ``margin="arcface"``
    (:func:`arcface_margin`, ``margin_value`` in radians), ``"cosface"`` (:func:`cosface_margin`)
    or ``"none"`` (normalized softmax). See the module docstring for the streaming, the half
    path, partial FC and the sharding.

    Args:
        embeddings: ``(B, D)``, any norm (normalized here).
        labels: ``(B,)`` class ids in ``[0, C)``.
        weight: ``(C * K, D)`` class centres, class-major (rows ``c*K .. c*K+K-1`` are class
            ``c``'s sub-centres); with ``shard_classes`` this rank's shard (:func:`class_shard`).
            Narrower embeddings (a Matryoshka prefix) use the centres' prefix
            (:func:`centre_prefix`).
        scale: ``s`` (64 for ArcFace / CosFace; ``1 / temperature`` for normalized softmax); a
            scalar tensor (a learnable temperature's inverse) gets its gradient.
        margin, margin_value, easy_margin: the target's margin (above).
        num_subcenters: ``K``; a class's cosine is the max over its sub-centres.
        block_size: classes per streamed block (memory ``O(B * block_size * K)``).
        sample_fraction: partial FC's fraction of the negative classes kept per call (1: all).
        generator: the sampling's random generator (CPU).
        shard_classes: ``weight`` holds this rank's classes; all ranks call together.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per row ``(B,)``).

    >>> g = torch.Generator().manual_seed(0)
    >>> x, w = torch.randn(4, 8, generator=g), torch.randn(10, 8, generator=g)
    >>> y = torch.tensor([0, 3, 3, 9])
    >>> dense = torch.nn.functional.cross_entropy(
    ...     10 * torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(w).T, y)
    >>> torch.allclose(margin_softmax_loss(x, y, w, scale=10.0, block_size=3), dense)
    True
    """
    k = num_subcenters
    _check_inputs(embeddings, labels, weight, k)
    check_reduction(reduction)
    if margin not in ("none", "arcface", "cosface"):
        raise ValueError(f"margin must be 'none', 'arcface' or 'cosface', got {margin!r}.")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1 (classes per block), got {block_size!r}.")
    weight = centre_prefix(weight, embeddings.shape[1])
    operand = embeddings.dtype
    acc = _acc_dtype(embeddings)
    x = embeddings.to(acc)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(_EPS)  # (B, D) unit rows
    local_classes = weight.shape[0] // k
    sharded = bool(shard_classes) and cd.get_world_size() > 1
    world, rank = cd.get_world_size(), cd.get_rank()
    rows = x.shape[0]
    if sharded:
        cd.check_same_batch_size("embeddings", rows)
        sizes = cd.all_gather(torch.tensor([local_classes], device=labels.device))
        offset, num_classes = int(sizes[:rank].sum()), int(sizes.sum())
        x = cd.all_gather_with_grad(x)  # (W*B, D), rank-major
        labels = cd.all_gather(labels)  # (W*B,)
    else:
        offset, num_classes = 0, local_classes
    _check_label_range(labels, num_classes)
    local = labels - offset
    local = torch.where((local >= 0) & (local < local_classes), local, -1)  # -1: another shard

    if sample_fraction != 1.0:  # partial FC over this shard's classes
        kept = sample_classes(local, local_classes, sample_fraction, generator)  # (S,)
        weight = weight.view(local_classes, k, -1)[kept].view(-1, weight.shape[1])
        owned = local >= 0
        local = torch.where(owned, torch.searchsorted(kept, local.clamp_min(0)), -1)

    if margin == "arcface":
        margin_fn = functools.partial(arcface_margin, margin=margin_value, easy_margin=easy_margin)
    elif margin == "cosface":
        margin_fn = functools.partial(cosface_margin, margin=margin_value)
    else:
        margin_fn = _identity
    scale_tensor = torch.as_tensor(scale, dtype=acc, device=x.device)
    per_row = _MarginSoftmax.apply(
        x, weight, scale_tensor, local, margin_fn, k, int(block_size), operand, sharded
    )
    if sharded:
        per_row = per_row[rank * rows : (rank + 1) * rows]  # this rank's rows
        if reduction == "sum":  # the mean over ranks is the global sum
            return per_row.sum() * world
    return reduce(per_row, reduction)


def _identity(cos: Tensor) -> Tensor:
    return cos
