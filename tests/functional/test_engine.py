"""Parity of the chunked engine with the dense reference, in value and gradient, for every option."""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
import torch

import contrastkit.functional as F
from contrastkit.functional import KeyRoles, engine, tiling
from contrastkit.functional.engine import ContrastiveProblem, softmax_contrastive
from contrastkit.functional.tiled import Blocks, FusedRowSoftmaxLoss, Structure, TiledSoftmaxLoss
from reference import as_roles

CHUNKS = (1, 3, 5, 64)  # 3 and 5 do not divide the batch sizes used below
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def _randn(*shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()


def _value_and_grads(fn, tensors):
    for t in tensors:
        t.grad = None
    out = fn()
    weight = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weight).sum().backward()  # non-uniform upstream gradient for reduction="none"
    return out.detach().clone(), [t.grad.clone() for t in tensors]


def _assert_parity(make, tensors, dtype=torch.float64, chunks=CHUNKS):
    """make(chunk_size) -> loss; compares every chunk size with the dense path (chunk None).

    Each chunk size runs with the default column tiles (wider than these batches: one tile per
    strip) and with square ``chunk x chunk`` tiles (several per strip, the last one partial),
    the latter once more with no forward tiles kept for the backward pass (by default the first
    two strips' tiles are kept, so batches of more than two strips mix kept and recomputed ones).
    """
    ref, ref_grads = _value_and_grads(lambda: make(None), tensors)
    assert torch.isfinite(ref).all()
    tilings = [
        (engine.COLUMN_BLOCK_RATIO, engine.TILE_CACHE_BYTES),
        (1, engine.TILE_CACHE_BYTES),
        (1, 0),
    ]
    for chunk, (ratio, cache) in itertools.product(chunks, tilings):
        with (
            mock.patch.object(engine, "COLUMN_BLOCK_RATIO", ratio),
            mock.patch.object(engine, "TILE_CACHE_BYTES", cache),
        ):
            out, grads = _value_and_grads(lambda c=chunk: make(c), tensors)
        where = f"chunk={chunk}, tile={chunk}x{ratio * chunk}, cache={cache} bytes"
        torch.testing.assert_close(out, ref, **TOL[dtype], msg=f"value, {where}")
        for g, rg in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, rg, **TOL[dtype], msg=f"grad, {where}")


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_info_nce_parity(metric, symmetric, reduction):
    q, k = _randn(7, 5, seed=1), _randn(7, 5, seed=2)
    temperature = 0.5 if metric == "dot" else 0.2
    _assert_parity(
        lambda c: tiling(chunk_size=c)(F.info_nce)(
            q,
            k,
            temperature=temperature,
            metric=metric,
            symmetric=symmetric,
            reduction=reduction,
        ),
        [q, k],
    )


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_info_nce_negatives_and_masks(shared, metric):
    b, m = 6, 4
    q, k = _randn(b, 5, seed=3), _randn(b, 5, seed=4)
    neg = _randn(*((m, 5) if shared else (b, m, 5)), seed=5)
    g = torch.Generator().manual_seed(6)
    positive_mask = torch.rand(b, b, generator=g) < 0.2
    ignore_mask = torch.rand(b, b + m, generator=g) < 0.3
    for symmetric in (False, True):
        _assert_parity(
            lambda c, s=symmetric: tiling(chunk_size=c)(F.info_nce)(
                q,
                k,
                neg,
                temperature=0.3,
                metric=metric,
                symmetric=s,
                roles=KeyRoles(positive_mask=positive_mask, ignore_mask=ignore_mask),
            ),
            [q, k, neg],
        )


def test_info_nce_labels_and_ids_match_dense_masks():
    b = 8
    q, k = _randn(b, 4, seed=7), _randn(b, 4, seed=8)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 3, 0])
    ids = torch.tensor([5, 6, 7, 5, 8, 9, 6, 7])
    positive_mask = (labels[:, None] == labels[None, :]) & ~torch.eye(b, dtype=torch.bool)
    pos_all = positive_mask | torch.eye(b, dtype=torch.bool)
    ignore_mask = (ids[:, None] == ids[None, :]) & ~pos_all
    by_mask = F.info_nce(
        q,
        k,
        temperature=0.3,
        symmetric=True,
        roles=KeyRoles(positive_mask=positive_mask, ignore_mask=ignore_mask),
    )
    for chunk in (None, 3):
        by_labels = tiling(chunk_size=chunk)(F.info_nce)(
            q,
            k,
            temperature=0.3,
            symmetric=True,
            roles=KeyRoles(query_labels=labels, key_labels=labels, query_ids=ids, key_ids=ids),
        )
        torch.testing.assert_close(by_labels, by_mask, rtol=1e-10, atol=1e-12)
    _assert_parity(
        lambda c: tiling(chunk_size=c)(F.info_nce)(
            q, k, temperature=0.3, roles=KeyRoles(query_labels=labels, key_labels=labels)
        ),
        [q, k],
    )


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(
    "offsets", [(0, None), (None, 0), (None, 3)], ids=["index-positive", "self", "self-shifted"]
)
@pytest.mark.parametrize("diagonal_shares_label", [True, False])
def test_label_positives_from_class_sums(symmetric, reduction, offsets, diagonal_shares_label):
    """Labels alone (class sums, no per-tile mask) in both directions and both kernels, with an
    index positive (InfoNCE) or a self column (SupCon) that shares its query's label or not
    (an index positive with another label takes the mask path)."""
    b = 10
    q, k = _randn(b, 4, seed=40), _randn(b, 4, seed=41)
    labels = torch.tensor([0, 1, 0, 2, 1, 2, 0, 3, 3, 1])
    key_labels = labels if diagonal_shares_label else labels.roll(1)
    positive_offset, self_offset = offsets

    def loss(chunk):
        problem = ContrastiveProblem(
            q,
            k,
            positive_offset=positive_offset,
            self_offset=self_offset,
            roles=KeyRoles(query_labels=labels, key_labels=key_labels),
            symmetric=symmetric,
        )
        return tiling(chunk_size=chunk)(softmax_contrastive)(
            problem, temperature=0.3, reduction=reduction
        )

    _assert_parity(loss, [q, k])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_engine_gathered_keys_with_offset(reduction):
    """Local queries (B=5) against gathered keys (N=15), positives at offset rank * B = 10."""
    q, k = _randn(5, 4, seed=9), _randn(15, 4, seed=10)
    neg = _randn(3, 4, seed=11)
    labels_q = torch.tensor([0, 1, 2, 0, 1])
    labels_k = torch.arange(15) % 4
    ids_k = torch.arange(15) % 7
    for kwargs in (
        {},
        {"negatives": neg},
        {"query_labels": labels_q, "key_labels": labels_k},
        {"query_ids": torch.arange(5), "key_ids": ids_k, "negatives": neg},
    ):
        _assert_parity(
            lambda c, kw=kwargs: tiling(chunk_size=c)(softmax_contrastive)(
                ContrastiveProblem(q, k, positive_offset=10, **as_roles(kw)),
                temperature=0.25,
                reduction=reduction,
            ),
            [q, k] + ([neg] if "negatives" in kwargs else []),
        )


def test_anchors_without_positives_are_excluded():
    """No designated positive; labels give positives to some anchors only."""
    q = _randn(6, 4, seed=12)
    labels = torch.tensor([0, 0, 1, 2, 3, 3])
    for reduction in ("mean", "none"):
        _assert_parity(
            lambda c, r=reduction: tiling(chunk_size=c)(softmax_contrastive)(
                ContrastiveProblem(
                    q,
                    q,
                    positive_offset=None,
                    self_offset=0,
                    roles=KeyRoles(query_labels=labels, key_labels=labels),
                ),
                temperature=0.5,
                reduction=r,
            ),
            [q],
        )
    per_anchor = tiling(chunk_size=4)(softmax_contrastive)(
        ContrastiveProblem(
            q,
            q,
            positive_offset=None,
            self_offset=0,
            roles=KeyRoles(query_labels=labels, key_labels=labels),
        ),
        temperature=0.5,
        reduction="none",
    )
    assert per_anchor[2] == 0 and per_anchor[3] == 0 and bool((per_anchor[[0, 1, 4, 5]] > 0).all())
    with pytest.warns(RuntimeWarning, match="no anchor has a positive"):
        lone = tiling(chunk_size=4)(softmax_contrastive)(
            ContrastiveProblem(q, q, positive_offset=None, self_offset=0),
            temperature=0.5,
        )
    lone.backward()
    assert lone.item() == 0 and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nt_xent_parity(metric):
    z1, z2 = _randn(5, 4, seed=13), _randn(5, 4, seed=14)
    for reduction in ("mean", "none"):
        _assert_parity(
            lambda c, r=reduction: tiling(chunk_size=c)(F.nt_xent)(
                z1, z2, temperature=0.3, metric=metric, reduction=r
            ),
            [z1, z2],
        )


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_supcon_views_parity(metric):
    # cosine / dot take the class-sum positives; euclidean builds the label mask per tile
    emb = _randn(6, 3, 4, seed=15)  # (B, V, D)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    for reduction in ("mean", "none"):
        _assert_parity(
            lambda c, r=reduction: tiling(chunk_size=c)(F.supervised_contrastive)(
                emb, labels, temperature=0.4, metric=metric, reduction=r
            ),
            [emb],
        )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_sigmoid_parity(metric):
    a, b = _randn(7, 4, seed=16), _randn(7, 4, seed=17)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "none"):
        _assert_parity(
            lambda c, r=reduction: tiling(chunk_size=c)(F.sigmoid_contrastive)(
                a, b, temperature=temperature, bias=bias, metric=metric, reduction=r
            ),
            [a, b, bias, temperature],
        )


def test_learnable_temperature_gradient_parity():
    q, k = _randn(9, 6, seed=18), _randn(9, 6, seed=19)
    t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    for symmetric in (False, True):
        _assert_parity(
            lambda c, s=symmetric: tiling(chunk_size=c)(F.info_nce)(
                q, k, temperature=t, symmetric=s
            ),
            [q, k, t],
        )


def test_float32_parity():
    q, k = (
        _randn(33, 16, seed=20, dtype=torch.float32),
        _randn(33, 16, seed=21, dtype=torch.float32),
    )
    for symmetric in (False, True):
        _assert_parity(
            lambda c, s=symmetric: tiling(chunk_size=c)(F.info_nce)(
                q, k, temperature=0.07, symmetric=s
            ),
            [q, k],
            dtype=torch.float32,
            chunks=(7, 16, 32),
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_small_temperature_is_finite(dtype):
    q, k = _randn(40, 16, seed=22, dtype=dtype), _randn(40, 16, seed=23, dtype=dtype)
    ref = F.info_nce(q.float(), k.float(), temperature=0.01, symmetric=True)
    for chunk in (None, 16):
        loss = tiling(chunk_size=chunk)(F.info_nce)(q, k, temperature=0.01, symmetric=True)
        q.grad = k.grad = None
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)  # autocast-style float32
        assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
        torch.testing.assert_close(loss.float(), ref.detach(), rtol=2e-2, atol=2e-2)


def test_gradcheck_kernels():
    """fp64 gradcheck of the custom Functions themselves (logit space, every structure form)."""
    b, n, m = 4, 6, 2
    q, k = _randn(b, 3, seed=24), _randn(n, 3, seed=25)
    neg = _randn(b, m, 3, seed=26)
    labels = (torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 0, 1, 2]))
    full = Structure(
        n_keys=n,
        positive_offset=2,
        query_labels=labels[0],
        key_labels=labels[1],
        query_ids=torch.tensor([7, 8, 9, 7]),
        key_ids=torch.tensor([1, 7, 9, 3, 8, 2]),
        ignore_mask=torch.eye(b, n + m, dtype=torch.bool),
    )
    for metric, cache in (("dot", 0), ("dot", 1 << 20), ("euclidean", 0)):  # 1 MiB: kept tiles
        assert torch.autograd.gradcheck(
            lambda q_, k_, n_, mt=metric, c=cache: TiledSoftmaxLoss.apply(
                q_, k_, n_, full, Blocks(mt, 3, col_chunk=2, cache_bytes=c)
            )[0],
            (q, k, neg),
        )
        assert torch.autograd.gradcheck(
            lambda q_, k_, n_, mt=metric: FusedRowSoftmaxLoss.apply(
                q_, k_, n_, full, Blocks(mt, 3)
            )[0],
            (q, k, neg),
        )
    # labels alone (SupCon, here with gathered keys N > B and shared negatives): class sums;
    # self columns 3, 4 share their query's label, 5 and 0 do not
    shared = _randn(m, 3, seed=28)
    labelled = Structure(
        n_keys=n, positive_offset=None, self_offset=3, query_labels=labels[0], key_labels=labels[1]
    )
    assert torch.autograd.gradcheck(
        lambda q_, k_, n_: FusedRowSoftmaxLoss.apply(q_, k_, n_, labelled, Blocks("dot", 3))[0],
        (q, k, shared),
    )
    k4 = _randn(b, 3, seed=27)
    # both directions from class sums (N == B); self columns 0, 1 share the label, 2 and 3 not
    labelled_square = Structure(
        n_keys=b,
        positive_offset=None,
        self_offset=0,
        query_labels=labels[0],
        key_labels=torch.tensor([0, 1, 1, 0]),
        symmetric=True,
    )
    square = Structure(n_keys=b, positive_offset=1, self_offset=3, symmetric=True)
    # kept tiles: none, all, or 2 of the 4 (3 x 3 float64 slots)
    for structure, cache in itertools.product((labelled_square, square), (0, 1 << 20, 144)):
        assert torch.autograd.gradcheck(
            lambda q_, k_, s=structure, c=cache: sum(
                TiledSoftmaxLoss.apply(q_, k_, None, s, Blocks("dot", 3, 3, c))[:2]
            ),
            (q, k4),
        )


def test_kept_tiles_survive_retained_graphs_and_overlapping_calls():
    """Kept forward tiles belong to one call: a second backward through a retained graph, and
    two losses built before either backward runs, give the recomputed path's gradients."""
    q, k = _randn(12, 5, seed=30), _randn(12, 5, seed=31)
    q2, k2 = _randn(12, 5, seed=32), _randn(12, 5, seed=33)

    def loss(a, b):
        return tiling(chunk_size=3)(F.info_nce)(a, b, temperature=0.2, symmetric=True)

    with mock.patch.object(engine, "TILE_CACHE_BYTES", 0):
        ref = list(torch.autograd.grad(loss(q, k), (q, k)))
        ref2 = list(torch.autograd.grad(loss(q2, k2), (q2, k2)))
    out = loss(q, k)
    out.backward(retain_graph=True)
    other = loss(q2, k2)  # takes the pooled buffers and overwrites them
    out.backward()  # so this one must recompute every tile
    del other
    for t, r in zip((q, k), ref, strict=True):
        torch.testing.assert_close(t.grad, 2 * r, rtol=1e-10, atol=1e-12)
    for t in (q, k, q2, k2):
        t.grad = None
    first, second = loss(q, k), loss(q2, k2)  # both hold kept tiles at once
    (first + second).backward()
    for t, r in zip((q, k, q2, k2), ref + ref2, strict=True):
        torch.testing.assert_close(t.grad, r, rtol=1e-10, atol=1e-12)


def test_auto_selection_and_errors():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        tiling(chunk_size=0)(F.info_nce)(q, q, temperature=0.1)
    with pytest.raises(ValueError, match="symmetric=True needs as many keys"):
        ContrastiveProblem(q, torch.randn(8, 3), symmetric=True)
    with pytest.raises(ValueError, match="query_labels and key_labels go together"):
        ContrastiveProblem(q, q, roles=KeyRoles(query_labels=torch.arange(4)))


@pytest.mark.parametrize("metric", ["dot", "euclidean"])
def test_max_shifted_path_parity(monkeypatch, metric):
    """Large logits take the max-shifted (two-exp) path; force it on every option as well."""
    import contrastkit.functional.tiled as tiled

    monkeypatch.setattr(tiled, "_unshifted", lambda *args: False)
    b, m = 6, 3
    q, k = _randn(b, 5, seed=30), _randn(b, 5, seed=31)
    neg = _randn(b, m, 5, seed=32)
    g = torch.Generator().manual_seed(33)
    ignore_mask = torch.rand(b, b + m, generator=g) < 0.3
    for symmetric in (False, True):
        _assert_parity(
            lambda c, s=symmetric: tiling(chunk_size=c)(F.info_nce)(
                q,
                k,
                neg,
                temperature=0.3,
                metric=metric,
                symmetric=s,
                roles=KeyRoles(
                    ignore_mask=ignore_mask,
                    query_labels=torch.tensor([0, 1, 0, 1, 2, 2]),
                    key_labels=torch.tensor([0, 1, 0, 3, 2, 4]),
                ),
            ),
            [q, k, neg],
        )


def test_low_temperature_float32_parity():
    """Cosine at t=0.01: logits up to 100, beyond the unshifted exp range."""
    q = _randn(24, 8, seed=34, dtype=torch.float32)
    k = _randn(24, 8, seed=35, dtype=torch.float32)
    for symmetric in (False, True):
        _assert_parity(
            lambda c, s=symmetric: tiling(chunk_size=c)(F.info_nce)(
                q, k, temperature=0.01, symmetric=s
            ),
            [q, k],
            dtype=torch.float32,
            chunks=(5, 24),
        )


def test_tiling_is_a_scoped_engine_setting():
    """``tiling(chunk_size=...)`` sets the engine's blocks inside its block only (a nested block
    restores the outer setting), for every loss, with the dense path's value and gradients."""
    q, k = _randn(6, 4, seed=40), _randn(6, 4, seed=41)
    assert engine.resolve_chunk_size(6, 6) is None  # automatic: dense at this size
    with tiling(chunk_size=4):
        assert engine.resolve_chunk_size(6, 6) == 4
        with tiling(chunk_size=2):
            assert engine.resolve_chunk_size(6, 6) == 2
        assert engine.resolve_chunk_size(6, 6) == 4
        with tiling():  # back to automatic inside
            assert engine.resolve_chunk_size(6, 6) is None
    assert engine.resolve_chunk_size(6, 6) is None
    for loss in (
        lambda: F.info_nce(q, k, temperature=0.2, symmetric=True),
        lambda: F.nt_xent(q, k, temperature=0.5),
        lambda: F.sigmoid_contrastive(q, k, temperature=0.3, bias=-1.0),
    ):
        dense, dense_grads = _value_and_grads(loss, [q, k])
        chunked, chunked_grads = _value_and_grads(tiling(chunk_size=4)(loss), [q, k])
        torch.testing.assert_close(chunked, dense, **TOL[torch.float64])
        for g, rg in zip(chunked_grads, dense_grads):
            torch.testing.assert_close(g, rg, **TOL[torch.float64])
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int .* got 2.5"):
        tiling(chunk_size=2.5).__enter__()  # type: ignore[arg-type]


def test_key_roles_are_the_one_description_of_positives_and_ignored_keys():
    """Labels and ids in ``KeyRoles`` equal their dense-mask forms; misuse names the fix."""
    q, k = _randn(6, 4, seed=42), _randn(6, 4, seed=43)
    labels, ids = torch.tensor([0, 1, 0, 2, 1, 3]), torch.tensor([5, 6, 7, 5, 8, 9])
    by_labels = F.info_nce(
        q, k, temperature=0.2, roles=KeyRoles(query_labels=labels, key_labels=labels)
    )
    by_mask = F.info_nce(
        q, k, temperature=0.2, roles=KeyRoles(positive_mask=labels[:, None] == labels[None, :])
    )
    torch.testing.assert_close(by_labels, by_mask)
    by_ids = F.info_nce(q, k, temperature=0.2, roles=KeyRoles(query_ids=ids, key_ids=ids))
    ignore = (ids[:, None] == ids[None, :]) & ~torch.eye(6, dtype=torch.bool)
    by_ignore = F.info_nce(q, k, temperature=0.2, roles=KeyRoles(ignore_mask=ignore))
    torch.testing.assert_close(by_ids, by_ignore)
    with pytest.raises(TypeError, match="roles must be a KeyRoles or None, got dict"):
        F.info_nce(q, k, temperature=0.2, roles={"ignore_mask": ignore})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query_ids and key_ids go together, got only key_ids"):
        KeyRoles(key_ids=ids)
    with pytest.raises(ValueError, match="key_labels must"):
        F.info_nce(q, k, temperature=0.2, roles=KeyRoles(query_labels=labels, key_labels=ids[:3]))
    with pytest.raises(TypeError, match="roles must be a KeyRoles, got dict"):
        ContrastiveProblem(q, k, roles={})  # type: ignore[arg-type]
