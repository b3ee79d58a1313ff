"""Identity losses: margin softmax over class centres, proxy losses and pair-weighting losses.

Shape notation: B batch, D embedding dim, C classes, K sub-centres per class. Every loss here
compares unit (cosine) embeddings; the class centres ``weight`` are normalized too.

* Margin softmax (a softmax over the C classes with a margin on the target class), on the
  memory-linear engine :func:`contrastkit.functional.class_logits.margin_softmax_loss`:
  :func:`arcface_loss`, :func:`cosface_loss`, :func:`subcenter_arcface_loss`,
  :func:`proxy_nca_loss` (no margin, a temperature). Their keyword ``**engine`` options
  (``block_size``, ``sample_fraction``, ``generator``, ``shard_classes``, ``reduction``) are the
  engine's.
* Proxy Anchor (:func:`proxy_anchor_loss`): each class centre is an anchor pulling its batch
  members and pushing the others, streamed over blocks of classes too.
* Pair weighting inside the batch, no centres: :func:`multi_similarity_loss`,
  :func:`circle_loss`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from contrastkit._checks import (
    check_embeddings,
    check_labels,
    check_reduction,
    check_temperature,
    reduce,
)
from contrastkit.functional.class_logits import (
    DEFAULT_BLOCK_SIZE,
    _check_inputs,
    _check_label_range,
    centre_prefix,
    margin_softmax_loss,
)
from contrastkit.functional.precision import own_precision

__all__ = [
    "arcface_loss",
    "circle_loss",
    "cosface_loss",
    "multi_similarity_loss",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "subcenter_arcface_loss",
]


def _check_number(name: str, value: object, *, low: float = 0.0, strict: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):  # type: ignore[operator]
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return float(value)  # type: ignore[arg-type]


@own_precision("float32")
def arcface_loss(
    embeddings: Tensor,
    labels: Tensor,
    weight: Tensor,
    *,
    margin: float = 0.5,
    scale: float = 64.0,
    easy_margin: bool = False,
    **engine: Any,
) -> Tensor:
    """ArcFace: softmax cross-entropy over ``scale * cos(theta_j)``, target ``scale * cos(theta_y
    + margin)`` (additive angular margin in radians; insightface's 0.5 rad = 28.6 degrees).

    Deng et al., ArcFace: Additive Angular Margin Loss for Deep Face Recognition, 2019,
    https://arxiv.org/abs/1801.07698. Where ``theta_y + m > pi`` the target becomes
    ``cos(theta_y) - m sin(m)`` (``easy_margin=True``: no margin where ``cos theta_y <= 0``);
    see :func:`~contrastkit.functional.class_logits.arcface_margin`. Neighbours:
    :func:`cosface_loss` (margin on the cosine), :func:`subcenter_arcface_loss` (K centres per
    class), :func:`proxy_nca_loss` (no margin).

    ``embeddings: (B, D)``, ``labels: (B,)``, ``weight: (C, D)``; returns a scalar (``mean``).

    >>> g = torch.Generator().manual_seed(0)
    >>> x, w = torch.randn(4, 8, generator=g), torch.randn(5, 8, generator=g)
    >>> arcface_loss(x, torch.tensor([0, 1, 1, 4]), w).shape
    torch.Size([])
    """
    _check_number("margin", margin, strict=False)
    if margin >= math.pi:
        raise ValueError(f"margin is in radians and must be < pi, got {margin!r} (degrees?).")
    _check_number("scale", scale)
    return margin_softmax_loss(
        embeddings,
        labels,
        weight,
        scale=scale,
        margin="arcface",
        margin_value=margin,
        easy_margin=easy_margin,
        **engine,
    )


@own_precision("float32")
def subcenter_arcface_loss(
    embeddings: Tensor,
    labels: Tensor,
    weight: Tensor,
    *,
    num_subcenters: int = 3,
    margin: float = 0.5,
    scale: float = 64.0,
    easy_margin: bool = False,
    **engine: Any,
) -> Tensor:
    """Sub-center ArcFace: ArcFace where a class's cosine is the max over its ``K`` sub-centres
    (``weight: (C * K, D)``, class-major), so noisy samples can settle on a non-dominant one.

    Deng et al., Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web Faces,
    2020, https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf. ``K = 1`` is
    :func:`arcface_loss`.

    >>> g = torch.Generator().manual_seed(0)
    >>> x, w = torch.randn(4, 8, generator=g), torch.randn(5 * 3, 8, generator=g)
    >>> subcenter_arcface_loss(x, torch.tensor([0, 1, 1, 4]), w, num_subcenters=3).shape
    torch.Size([])
    """
    return arcface_loss(
        embeddings,
        labels,
        weight,
        margin=margin,
        scale=scale,
        easy_margin=easy_margin,
        num_subcenters=num_subcenters,
        **engine,
    )


@own_precision("float32")
def cosface_loss(
    embeddings: Tensor,
    labels: Tensor,
    weight: Tensor,
    *,
    margin: float = 0.35,
    scale: float = 64.0,
    **engine: Any,
) -> Tensor:
    """CosFace (large margin cosine loss): softmax cross-entropy over ``scale * cos_j``, target
    ``scale * (cos_y - margin)``.

    Wang et al., CosFace: Large Margin Cosine Loss for Deep Face Recognition, 2018,
    https://arxiv.org/abs/1801.09414. Neighbours: :func:`arcface_loss` (margin on the angle),
    :func:`proxy_nca_loss` (``margin = 0``, ``scale = 1 / temperature``).

    >>> g = torch.Generator().manual_seed(0)
    >>> x, w = torch.randn(4, 8, generator=g), torch.randn(5, 8, generator=g)
    >>> bool(cosface_loss(x, torch.tensor([0, 1, 1, 4]), w) > 0)
    True
    """
    _check_number("margin", margin, strict=False)
    _check_number("scale", scale)
    return margin_softmax_loss(
        embeddings, labels, weight, scale=scale, margin="cosface", margin_value=margin, **engine
    )


@own_precision("float32")
def proxy_nca_loss(
    embeddings: Tensor,
    labels: Tensor,
    weight: Tensor,
    *,
    temperature: float | Tensor = 0.05,
    **engine: Any,
) -> Tensor:
    """Proxy-NCA as normalized softmax: cross-entropy over ``cos(x, p_j) / temperature`` with
    one proxy (class centre) ``p_j`` per class.

    Movshovitz-Attias et al., No Fuss Distance Metric Learning using Proxies, 2017,
    https://arxiv.org/abs/1703.07464, in the form of Zhai and Wu, Classification is a Strong
    Baseline for Deep Metric Learning, 2019, https://arxiv.org/abs/1811.12649 (and ProxyNCA++,
    2020): the positive proxy stays in the denominator, distances are cosines with a
    temperature (pytorch-metric-learning's ``NormalizedSoftmaxLoss``). Neighbours:
    :func:`cosface_loss` with no margin, :func:`proxy_anchor_loss`.

    >>> x = torch.eye(3)  # each row on its own proxy, orthogonal to the others
    >>> float(proxy_nca_loss(x, torch.arange(3), torch.cat([x, -x]))) < 1e-6
    True
    """
    check_temperature(temperature)
    return margin_softmax_loss(embeddings, labels, weight, scale=1.0 / temperature, **engine)


def _proxy_anchor_block(
    x: Tensor, proxies: Tensor, labels: Tensor, margin: float, alpha: float
) -> tuple[Tensor, Tensor]:
    """One block of classes: (sum of positive terms, sum of negative terms). ``labels`` are
    block-local (outside ``[0, c)``: another block)."""
    unit = proxies.to(x.dtype)
    unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = x @ unit.T  # (B, c)
    c = cos.shape[1]
    positive = labels[:, None] == torch.arange(c, device=x.device)[None, :]  # (B, c)
    zero = cos.new_zeros(1, c)
    pos = torch.cat([(-alpha * (cos - margin)).masked_fill(~positive, -math.inf), zero], 0)
    neg = torch.cat([(alpha * (cos + margin)).masked_fill(positive, -math.inf), zero], 0)
    has_pos = positive.any(dim=0)
    pos_term = torch.where(has_pos, torch.logsumexp(pos, dim=0), torch.zeros_like(zero[0]))
    return pos_term.sum(), torch.logsumexp(neg, dim=0).sum()


@own_precision("float32")
def proxy_anchor_loss(
    embeddings: Tensor,
    labels: Tensor,
    weight: Tensor,
    *,
    margin: float = 0.1,
    alpha: float = 32.0,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Tensor:
    """Proxy Anchor: each class proxy ``p`` is an anchor over the batch,

        1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (cos(x, p) - margin)))
      + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (cos(x, p) + margin)))

    with ``P+`` the classes present in the batch, ``X_p+`` / ``X_p-`` the batch rows of / not of
    class ``p``. Kim et al., Proxy Anchor Loss for Deep Metric Learning, 2020,
    https://arxiv.org/abs/2003.13911 (pytorch-metric-learning's ``ProxyAnchorLoss``). The
    classes are independent terms, so they stream in blocks of ``block_size`` (recomputed in
    backward): no ``(B, C)`` matrix is stored. Neighbours: :func:`proxy_nca_loss` (a softmax per
    row instead of per proxy), :func:`multi_similarity_loss` (the same soft weighting on pairs).

    ``embeddings: (B, D)``, ``labels: (B,)`` in ``[0, C)``, ``weight: (C, D)``; a scalar.

    >>> x = torch.nn.functional.normalize(torch.randn(4, 8))
    >>> proxy_anchor_loss(x, torch.tensor([0, 1, 1, 2]), torch.randn(3, 8)).shape
    torch.Size([])
    """
    _check_inputs(embeddings, labels, weight, 1)
    _check_label_range(labels, weight.shape[0])
    weight = centre_prefix(weight, embeddings.shape[1])  # a Matryoshka prefix
    _check_number("alpha", alpha)
    _check_number("margin", margin, strict=False)
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1 (classes per block), got {block_size!r}.")
    x = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (B, D)
    num_classes = weight.shape[0]
    pos_sum = x.new_zeros(())
    neg_sum = x.new_zeros(())
    for i, proxies in enumerate(weight.split(block_size)):  # split: one gradient concatenation
        local = labels - i * block_size
        if torch.is_grad_enabled():
            pos, neg = checkpoint(
                _proxy_anchor_block, x, proxies, local, margin, alpha, use_reentrant=False
            )
        else:
            pos, neg = _proxy_anchor_block(x, proxies, local, margin, alpha)
        pos_sum = pos_sum + pos
        neg_sum = neg_sum + neg
    with_positives = int(torch.unique(labels).numel())
    return pos_sum / max(with_positives, 1) + neg_sum / num_classes


def _pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    same = labels[:, None] == labels[None, :]  # (B, B)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _masked_logsumexp(x: Tensor, mask: Tensor, *, add_one: bool) -> Tensor:
    """Row-wise ``log(sum_mask exp(x))`` (``+ exp(0)`` with ``add_one``), 0 for empty rows.
    Masked entries are the dtype's most negative finite value, not -inf: an empty row's
    log-sum-exp stays finite, so its (zero) gradient is not ``0 * nan``."""
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    if add_one:
        x = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
    out = torch.logsumexp(x, dim=1)
    return torch.where(mask.any(dim=1), out, torch.zeros_like(out))


def _cosine_matrix(embeddings: Tensor) -> Tensor:
    x = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ x.T  # (B, B)


@own_precision("float32")
def multi_similarity_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    reduction: str = "mean",
) -> Tensor:
    """Multi-Similarity: per anchor ``i`` over the batch's other rows,

        1/alpha log(1 + sum_{j pos} exp(-alpha (S_ij - base)))
      + 1/beta  log(1 + sum_{j neg} exp( beta (S_ij - base)))

    ``S`` the cosine similarity. Wang et al., Multi-Similarity Loss with General Pair Weighting
    for Deep Metric Learning, 2019, https://arxiv.org/abs/1904.06627. As in
    pytorch-metric-learning's ``MultiSimilarityLoss``, no pair mining (the paper's hard-pair
    selection is a miner's job) and the mean runs over every anchor (anchors without positives
    contribute their negative term). Neighbours: :func:`circle_loss`, :func:`proxy_anchor_loss`
    (the same soft weighting against proxies).

    ``embeddings: (B, D)``, ``labels: (B,)``; a scalar (``reduction="none"``: ``(B,)``).

    >>> multi_similarity_loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])).shape
    torch.Size([])
    """
    check_embeddings("embeddings", embeddings)
    check_labels("labels", labels, embeddings.shape[0])
    check_reduction(reduction)
    alpha, beta = _check_number("alpha", alpha), _check_number("beta", beta)
    _check_number("base", base, low=-math.inf, strict=False)
    sim = _cosine_matrix(embeddings)
    pos, neg = _pair_masks(labels)
    pos_term = _masked_logsumexp(-alpha * (sim - base), pos, add_one=True) / alpha
    neg_term = _masked_logsumexp(beta * (sim - base), neg, add_one=True) / beta
    return reduce(pos_term + neg_term, reduction)


@own_precision("float32")
def circle_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    m: float = 0.4,
    gamma: float = 80.0,
) -> Tensor:
    """Circle loss: per anchor, ``softplus(logsumexp_{pos} (-gamma a_p (s_p - 1 + m)) +
    logsumexp_{neg} (gamma a_n (s_n - m)))`` with self-paced weights ``a_p = [1 + m - s_p]_+``
    and ``a_n = [s_n + m]_+`` held constant in the gradient (the paper's implementation).

    Sun et al., Circle Loss: A Unified Perspective of Pair Similarity Optimization, 2020,
    https://arxiv.org/abs/2002.10857 (pytorch-metric-learning's ``CircleLoss``; ``m = 0.4,
    gamma = 80`` for fine-grained retrieval, ``m = 0.25, gamma = 256`` for faces). The mean runs
    over anchors with at least one positive and one negative. Neighbours:
    :func:`multi_similarity_loss`, :func:`contrastkit.functional.supervised_contrastive`.

    ``embeddings: (B, D)``, ``labels: (B,)``; a scalar.

    >>> circle_loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])).shape
    torch.Size([])
    """
    check_embeddings("embeddings", embeddings)
    check_labels("labels", labels, embeddings.shape[0])
    m, gamma = _check_number("m", m, strict=False), _check_number("gamma", gamma)
    sim = _cosine_matrix(embeddings)
    pos, neg = _pair_masks(labels)
    weight_pos = torch.relu(1 + m - sim.detach())
    weight_neg = torch.relu(sim.detach() + m)
    logits_pos = -gamma * weight_pos * (sim - (1 - m))
    logits_neg = gamma * weight_neg * (sim - m)
    lse_pos = _masked_logsumexp(logits_pos, pos, add_one=False)
    lse_neg = _masked_logsumexp(logits_neg, neg, add_one=False)
    valid = pos.any(dim=1) & neg.any(dim=1)
    losses = torch.nn.functional.softplus(lse_pos + lse_neg)[valid]
    if losses.numel() == 0:
        return sim.sum() * 0.0  # no anchor with both a positive and a negative
    return losses.mean()
