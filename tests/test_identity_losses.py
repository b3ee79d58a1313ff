"""Identity losses (issue 28): parity with pytorch-metric-learning and float64 references from
the papers, the streamed class-logit engine against the dense formulation (forward and
backward, several block sizes), gradcheck, partial FC, the half path and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from contrastkit.functional.class_logits import margin_softmax_loss, sample_classes
from contrastkit.functional.proxy import (
    arcface_loss,
    circle_loss,
    cosface_loss,
    multi_similarity_loss,
    proxy_anchor_loss,
    proxy_nca_loss,
    subcenter_arcface_loss,
)
from contrastkit.losses import (
    ArcFace,
    Circle,
    CosFace,
    MultiSimilarity,
    ProxyAnchor,
    ProxyNCA,
    SubCenterArcFace,
)

pml = pytest.importorskip("pytorch_metric_learning.losses")

B, D, C = 12, 16, 7
ZERO = torch.zeros((), dtype=torch.float64)


def _data(seed: int = 0, b: int = B, d: int = D, c: int = C, rows: int | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b,), generator=g)
    y[: min(b, c)] = torch.arange(min(b, c))  # every class present at least once
    w = torch.randn(rows or c, d, generator=g, dtype=torch.float64)
    return x, y, w


def _grads(fn, x: torch.Tensor, w: torch.Tensor | None):
    x = x.clone().requires_grad_()
    leaves = [x]
    if w is not None:
        w = w.clone().requires_grad_()
        leaves.append(w)
    loss = fn(x, w) if w is not None else fn(x)
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), grads


def _close(a, b, rtol=1e-9, atol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --- parity with pytorch-metric-learning (its W is (D, C), its ArcFace margin in degrees) ------


CENTRE_CASES = {
    "arcface": (
        lambda: pml.ArcFaceLoss(C, D, margin=math.degrees(0.5), scale=64),
        lambda x, y, w: arcface_loss(x, y, w, margin=0.5, scale=64.0),
        "W",
        True,
        1,
    ),
    "cosface": (
        lambda: pml.CosFaceLoss(C, D, margin=0.35, scale=64),
        lambda x, y, w: cosface_loss(x, y, w, margin=0.35, scale=64.0),
        "W",
        True,
        1,
    ),
    "subcenter_arcface": (
        lambda: pml.SubCenterArcFaceLoss(
            num_classes=C, embedding_size=D, margin=math.degrees(0.5), sub_centers=3
        ),
        lambda x, y, w: subcenter_arcface_loss(x, y, w, num_subcenters=3),
        "W",
        True,
        3,
    ),
    "proxy_nca": (
        lambda: pml.NormalizedSoftmaxLoss(C, D, temperature=0.05),
        lambda x, y, w: proxy_nca_loss(x, y, w, temperature=0.05),
        "W",
        True,
        1,
    ),
    "proxy_anchor": (
        lambda: pml.ProxyAnchorLoss(C, D, margin=0.1, alpha=32),
        lambda x, y, w: proxy_anchor_loss(x, y, w, margin=0.1, alpha=32.0),
        "proxies",
        False,
        1,
    ),
}


@pytest.mark.parametrize("name", sorted(CENTRE_CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_centre_losses_equal_pytorch_metric_learning(name: str, seed: int) -> None:
    make_pml, ours, attr, transpose, k = CENTRE_CASES[name]
    x, y, w = _data(seed, rows=C * k)
    ref = make_pml()

    # PML's cast_types assigns .data of its parameter: give it a parameter view of our leaf.
    def pml_loss(xx, ww):
        holder = torch.nn.Parameter(ww.detach().T.clone() if transpose else ww.detach().clone())
        ref._parameters[attr] = holder
        value = ref(xx, y)
        return value, holder

    value, gx = _grads(lambda xx, ww: ours(xx, y, ww), x, w)
    xx = x.clone().requires_grad_()
    pml_value, holder = pml_loss(xx, w)
    pml_value.backward()
    _close(value, pml_value.detach())
    _close(gx[0], xx.grad)
    _close(gx[1], holder.grad.T if transpose else holder.grad)


@pytest.mark.parametrize("seed", [0, 1])
def test_pair_losses_equal_pytorch_metric_learning(seed: int) -> None:
    x, y, _ = _data(seed)
    y = y % 4  # several positives per anchor
    for ours, theirs in (
        (
            lambda e: multi_similarity_loss(e, y),
            pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
        ),
        (lambda e: circle_loss(e, y), pml.CircleLoss(m=0.4, gamma=80)),
    ):
        value, (gx,) = _grads(ours, x, None)
        xx = x.clone().requires_grad_()
        ref = theirs(xx, y)
        ref.backward()
        _close(value, ref.detach())
        _close(gx, xx.grad)


# --- float64 references written from the papers --------------------------------------------


def _cos(x, w):
    return F.normalize(x, dim=1) @ F.normalize(w, dim=1).T  # (B, C)


def _margin_softmax_reference(x, y, w, *, scale, target_fn, k=1):
    cos = _cos(x, w).view(x.shape[0], -1, k).max(dim=2).values  # (B, C)
    logits = scale * cos
    rows = torch.arange(x.shape[0])
    logits = logits.index_put((rows, y), scale * target_fn(cos[rows, y]))
    return F.cross_entropy(logits, y)


def _arc(m):
    def f(c):
        theta = torch.acos(c.clamp(-1, 1))
        return torch.where(theta + m <= math.pi, torch.cos(theta + m), c - m * math.sin(m))

    return f


def test_arcface_cosface_subcenter_proxy_nca_equal_the_papers_formulas() -> None:
    x, y, w = _data(3, rows=C * 2)
    w1 = w[:C]
    cases = [
        (
            arcface_loss(x, y, w1),
            _margin_softmax_reference(x, y, w1, scale=64, target_fn=_arc(0.5)),
        ),
        (
            cosface_loss(x, y, w1),
            _margin_softmax_reference(x, y, w1, scale=64, target_fn=lambda c: c - 0.35),
        ),
        (
            subcenter_arcface_loss(x, y, w, num_subcenters=2),
            _margin_softmax_reference(x, y, w, scale=64, target_fn=_arc(0.5), k=2),
        ),
        (
            proxy_nca_loss(x, y, w1, temperature=0.1),
            _margin_softmax_reference(x, y, w1, scale=10, target_fn=lambda c: c),
        ),
    ]
    for got, want in cases:
        _close(got, want)


def test_arcface_threshold_and_easy_margin() -> None:
    """theta + m > pi: the threshold's cos - m sin m (monotone); easy margin: no margin for
    cos <= 0. A row pointing away from its centre exercises both."""
    w = torch.eye(3, dtype=torch.float64)
    x = torch.tensor([[-1.0, 0.05, 0.0], [-0.2, 0.3, 0.9]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    m = 0.5
    c = _cos(x, w)[torch.arange(2), y]
    for easy, target in (
        (
            False,
            torch.where(
                torch.acos(c) + m <= math.pi, torch.cos(torch.acos(c) + m), c - m * math.sin(m)
            ),
        ),
        (True, torch.where(c > 0, torch.cos(torch.acos(c) + m), c)),
    ):
        logits = 64 * _cos(x, w)
        logits[torch.arange(2), y] = 64 * target
        _close(arcface_loss(x, y, w, easy_margin=easy), F.cross_entropy(logits, y))
    assert c[0] < math.cos(math.pi - m)  # the first row is past the threshold


def test_proxy_anchor_multi_similarity_circle_equal_loops_from_the_papers() -> None:
    x, y, w = _data(4)
    y = y % 5
    s = _cos(x, x)
    sp = _cos(x, w)
    # Proxy Anchor, eq. (4) of Kim et al. 2020
    present = sorted(set(y.tolist()))
    pos = sum(
        torch.log(1 + sum(torch.exp(-32 * (sp[i, p] - 0.1)) for i in range(B) if y[i] == p))
        for p in present
    )
    neg = sum(
        torch.log(1 + sum(torch.exp(32 * (sp[i, p] + 0.1)) for i in range(B) if y[i] != p))
        for p in range(C)
    )
    _close(proxy_anchor_loss(x, y, w, block_size=3), pos / len(present) + neg / C)
    # Multi-Similarity, eq. (12) of Wang et al. 2019 (no mining)
    ms = []
    for i in range(B):
        p = [s[i, j] for j in range(B) if j != i and y[j] == y[i]]
        n = [s[i, j] for j in range(B) if y[j] != y[i]]
        ms.append(
            torch.log(1 + sum((torch.exp(-2 * (v - 0.5)) for v in p), ZERO)) / 2
            + torch.log(1 + sum((torch.exp(50 * (v - 0.5)) for v in n), ZERO)) / 50
        )
    _close(multi_similarity_loss(x, y), torch.stack(ms).mean())
    # Circle loss, eq. (4) of Sun et al. 2020, m = 0.4, gamma = 80
    cl = []
    for i in range(B):
        p = [s[i, j] for j in range(B) if j != i and y[j] == y[i]]
        n = [s[i, j] for j in range(B) if y[j] != y[i]]
        if p and n:
            lp = [-80 * torch.relu(1.4 - v) * (v - 0.6) for v in p]
            ln = [80 * torch.relu(v + 0.4) * (v - 0.4) for v in n]
            cl.append(
                F.softplus(
                    torch.logsumexp(torch.stack(lp), 0) + torch.logsumexp(torch.stack(ln), 0)
                )
            )
    _close(circle_loss(x, y), torch.stack(cl).mean())


def test_collapsed_margin_free_softmax_is_log_c() -> None:
    """Analytic value: every cosine equal -> log C."""
    x = torch.ones(4, 3, dtype=torch.float64)
    w = torch.ones(C, 3, dtype=torch.float64)
    _close(proxy_nca_loss(x, torch.arange(4), w), torch.tensor(math.log(C), dtype=torch.float64))


# --- the streamed engine ---------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 64])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("margin", ["arcface", "cosface", "none"])
def test_streamed_equals_dense_forward_and_backward(block_size: int, k: int, margin: str) -> None:
    x, y, w = _data(5, c=11, rows=11 * k)
    target = {"arcface": _arc(0.3), "cosface": lambda c: c - 0.2, "none": lambda c: c}[margin]
    mv = {"arcface": 0.3, "cosface": 0.2, "none": 0.0}[margin]

    def streamed(xx, ww):
        return margin_softmax_loss(
            xx,
            y,
            ww,
            scale=16.0,
            margin=margin,
            margin_value=mv,
            num_subcenters=k,
            block_size=block_size,
        )

    def dense(xx, ww):
        return _margin_softmax_reference(xx, y, ww, scale=16.0, target_fn=target, k=k)

    v1, g1 = _grads(streamed, x, w)
    v2, g2 = _grads(dense, x, w)
    _close(v1, v2)
    _close(g1[0], g2[0])
    _close(g1[1], g2[1])


def test_gradcheck_small_c() -> None:
    x, y, w = _data(6, b=5, d=4, c=3, rows=6)
    x.requires_grad_()
    w.requires_grad_()
    w3 = w[:3].detach().clone().requires_grad_()
    for fn, ww in (
        (lambda a, b: arcface_loss(a, y, b, margin=0.4, scale=8.0, block_size=2), w3),
        (lambda a, b: cosface_loss(a, y, b, scale=8.0, block_size=2), w3),
        (
            lambda a, b: subcenter_arcface_loss(a, y, b, num_subcenters=2, scale=8.0, block_size=2),
            w,
        ),
        (lambda a, b: proxy_nca_loss(a, y, b, temperature=0.2, block_size=2), w3),
        (lambda a, b: proxy_anchor_loss(a, y, b, alpha=4.0, block_size=2), w3),
        (lambda a, b: multi_similarity_loss(a, y % 2, beta=5.0), None),
    ):
        if ww is None:
            assert torch.autograd.gradcheck(lambda a, f=fn: f(a, None), (x,))
        else:
            assert torch.autograd.gradcheck(fn, (x, ww))


def test_learnable_temperature_gets_its_gradient() -> None:
    x, y, w = _data(7)
    t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda tt: proxy_nca_loss(x, y, w, temperature=tt, block_size=3), (t,)
    )


def test_partial_fc_keeps_the_batch_classes_and_is_the_softmax_over_the_sample() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([3, 500, 999, 3])
    kept = sample_classes(labels, 1000, 0.1, g)
    assert kept.numel() == 100 and torch.isin(labels, kept).all()
    assert torch.equal(kept, kept.sort().values) and kept.unique().numel() == 100
    # the loss is the full loss restricted to the sampled classes (same generator)
    x, y, w = _data(8, c=40)
    got, (gx, gw) = _grads(
        lambda xx, ww: cosface_loss(
            xx,
            y,
            ww,
            sample_fraction=0.25,
            generator=torch.Generator().manual_seed(1),
            block_size=4,
        ),
        x,
        w,
    )
    kept = sample_classes(y, 40, 0.25, torch.Generator().manual_seed(1))
    remap = torch.searchsorted(kept, y)
    want, (wx, ww_) = _grads(lambda xx, ww: cosface_loss(xx, remap, ww[kept]), x, w)
    _close(got, want)
    _close(gx, wx)
    _close(gw, ww_)
    dropped = torch.ones(40, dtype=torch.bool)
    dropped[kept] = False
    assert gw[dropped].abs().sum() == 0  # dropped classes get no gradient that step
    # fraction 1: the full softmax
    _close(cosface_loss(x, y, w, sample_fraction=1.0), cosface_loss(x, y, w))


def test_bf16_embeddings_take_the_half_path_with_float32_logits() -> None:
    x, y, w = _data(9, b=32, d=64, c=50)
    xh = x.float().bfloat16().requires_grad_()
    wf = w.float().requires_grad_()
    loss = arcface_loss(xh, y, wf, block_size=16)
    assert loss.dtype == torch.float32
    loss.backward()
    assert xh.grad.dtype == torch.bfloat16 and wf.grad.dtype == torch.float32
    ref_x = xh.detach().double().requires_grad_()
    ref_w = w.clone().requires_grad_()
    ref = arcface_loss(ref_x, y, ref_w)
    ref.backward()
    assert abs(float(loss.detach()) - float(ref.detach())) / float(ref.detach()) < 2e-3
    cos = F.cosine_similarity(wf.grad.double().flatten(), ref_w.grad.flatten(), dim=0)
    assert cos > 0.999


# --- modules ---------------------------------------------------------------------------------


def test_modules_hold_class_major_centres_named_weight() -> None:
    for module, rows in (
        (ArcFace(num_classes=6, embedding_dim=4), 6),
        (CosFace(num_classes=6, embedding_dim=4), 6),
        (SubCenterArcFace(num_classes=6, embedding_dim=4, num_subcenters=3), 18),
        (ProxyNCA(num_classes=6, embedding_dim=4), 6),
        (ProxyAnchor(num_classes=6, embedding_dim=4), 6),
    ):
        assert dict(module.named_parameters()).keys() == {"weight"}
        assert module.weight.shape == (rows, 4)
        loss = module(torch.randn(5, 4), torch.tensor([0, 5, 2, 2, 1]))
        loss.backward()
        assert module.weight.grad is not None and torch.isfinite(module.weight.grad).all()
    assert MultiSimilarity()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1])).ndim == 0
    assert Circle()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1])).ndim == 0


# --- bad input -------------------------------------------------------------------------------


def test_label_out_of_range_names_num_classes_and_the_fix() -> None:
    with pytest.raises(
        ValueError,
        match=r"labels must be class ids in \[0, num_classes\) = \[0, 6\), got 9.*num_classes > 9",
    ):
        ArcFace(num_classes=6, embedding_dim=4)(torch.randn(3, 4), torch.tensor([0, 9, 1]))
    with pytest.raises(ValueError, match="got -1"):
        proxy_anchor_loss(torch.randn(3, 4), torch.tensor([0, -1, 1]), torch.randn(6, 4))


def test_wrong_shapes_name_the_argument() -> None:
    loss = CosFace(num_classes=6, embedding_dim=4)
    with pytest.raises(
        ValueError,
        match=r"weight must have at least the embedding dimension D = 5.*embedding_dim=5",
    ):
        loss(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        loss(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="embeddings must be 2-D"):
        loss(torch.randn(3, 4, 1), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="multiple of num_subcenters"):
        subcenter_arcface_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(7, 4))
    with pytest.raises(ValueError, match=r"radians and must be < pi, got 28.6"):
        arcface_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(6, 4), margin=28.6)
    with pytest.raises(ValueError, match="sample_fraction must be in"):
        cosface_loss(
            torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(6, 4), sample_fraction=0.0
        )
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        ArcFace(num_classes=0)


# --- memory: no (B, C) matrix, one centre-sized gradient ------------------------------------


class _Sizes(TorchDispatchMode):
    """Records the element count of every tensor an op allocates (views and in-place results
    share an input's storage and are left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.numels.append(t.numel())
        return out


@pytest.mark.parametrize("k", [1, 2])
def test_streamed_loss_allocates_no_logit_matrix_and_one_centre_gradient(k: int) -> None:
    b, d, c, block = 16, 8, 4096, 64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d, generator=g).requires_grad_()
    w = torch.randn(c * k, d, generator=g).requires_grad_()
    y = torch.randint(0, c, (b,), generator=g)
    with _Sizes() as sizes:
        arcface_loss(x, y, w, num_subcenters=k, block_size=block).backward()
    assert max(n for n in sizes.numels if n != c * k * d) <= b * block * k
    assert sizes.numels.count(c * k * d) == 1  # the centres' gradient, written in place
