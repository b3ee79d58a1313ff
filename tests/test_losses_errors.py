"""Bad input raises ValueError/TypeError naming the argument, what was received and what is expected."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import contrastkit.functional as F
from contrastkit.functional import KeyRoles
from contrastkit.losses import InfoNCE

X = torch.randn(4, 8)
LAB = torch.tensor([0, 0, 1, 1])

CASES = [
    (
        "batch",
        lambda: F.info_nce(X, torch.randn(5, 8), temperature=0.1),
        ValueError,
        "same batch size",
    ),
    (
        "dim",
        lambda: F.info_nce(X, torch.randn(4, 7), temperature=0.1),
        ValueError,
        "same embedding dimension",
    ),
    ("rank", lambda: F.info_nce(X[0], X[0], temperature=0.1), ValueError, "query must be 2-D"),
    (
        "temp0",
        lambda: F.info_nce(X, X, temperature=0.0),
        ValueError,
        "temperature must be a finite number > 0",
    ),
    (
        "tempnan",
        lambda: F.nt_xent(X, X, temperature=float("nan")),
        ValueError,
        "temperature must be a finite",
    ),
    ("tempinf", lambda: F.nt_xent(X, X, temperature=float("inf")), ValueError, "temperature"),
    (
        "tempstr",
        lambda: F.nt_xent(X, X, temperature="0.1"),
        TypeError,
        "temperature must be a float",
    ),
    (
        "metric",
        lambda: F.info_nce(X, X, temperature=0.1, metric="l1"),
        ValueError,
        "metric must be one of",
    ),
    (
        "reduction",
        lambda: F.info_nce(X, X, temperature=0.1, reduction="avg"),
        ValueError,
        "reduction must be one of",
    ),
    (
        "nan",
        lambda: F.info_nce(X.clone().fill_(float("nan")), X, temperature=0.1),
        ValueError,
        "query contains 32 NaN/Inf",
    ),
    (
        "inf",
        lambda: F.nt_xent(X, X.clone().fill_(float("inf")), temperature=0.1),
        ValueError,
        "z2 contains",
    ),
    (
        "posmask_shape",
        lambda: F.info_nce(
            X, X, temperature=0.1, roles=KeyRoles(positive_mask=torch.eye(3, dtype=torch.bool))
        ),
        ValueError,
        r"positive_mask must have shape \(4, 4\)",
    ),
    (
        "posmask_dtype",
        lambda: F.info_nce(X, X, temperature=0.1, roles=KeyRoles(positive_mask=torch.eye(4))),
        TypeError,
        "positive_mask must have dtype torch.bool",
    ),
    (
        "ignmask_shape",
        lambda: F.info_nce(
            X,
            X,
            torch.randn(2, 8),
            temperature=0.1,
            roles=KeyRoles(ignore_mask=torch.zeros(4, 4, dtype=torch.bool)),
        ),
        ValueError,
        r"ignore_mask must have shape \(4, 6\)",
    ),
    (
        "neg_dim",
        lambda: F.info_nce(X, X, torch.randn(3, 5), temperature=0.1),
        ValueError,
        "negatives must have embedding dimension 8",
    ),
    (
        "neg_batch",
        lambda: F.info_nce(X, X, torch.randn(3, 2, 8), temperature=0.1),
        ValueError,
        r"per-query negatives must have shape \(B, M, D\)",
    ),
    (
        "labels_len",
        lambda: F.supervised_contrastive(X, torch.tensor([0, 1]), temperature=0.1),
        ValueError,
        r"labels must have shape \(4,\)",
    ),
    (
        "labels_dtype",
        lambda: F.supervised_contrastive(X, LAB.float(), temperature=0.1),
        TypeError,
        "labels must have an integer dtype",
    ),
    (
        "labels_type",
        lambda: F.triplet_margin(X, [0, 0, 1, 1], margin=0.1),
        TypeError,
        "labels must be a torch.Tensor",
    ),
    ("margin", lambda: F.triplet_margin(X, LAB, margin=-1.0), ValueError, "margin must be >= 0"),
    (
        "mining",
        lambda: F.triplet_margin(X, LAB, margin=0.1, mining="hard"),
        ValueError,
        "mining must be one of",
    ),
    (
        "is_positive",
        lambda: F.contrastive_margin(X, X, torch.ones(4), margin=1.0),
        TypeError,
        "is_positive must be a bool",
    ),
    (
        "cm_metric",
        lambda: F.contrastive_margin(
            X, X, torch.ones(4, dtype=torch.bool), margin=1.0, metric="dot"
        ),
        ValueError,
        "metric must be one of",
    ),
    (
        "pref_shape",
        lambda: F.preference_loss(torch.randn(3), torch.randn(4)),
        ValueError,
        "same shape",
    ),
    (
        "pref_kind",
        lambda: F.preference_loss(torch.randn(3), torch.randn(3), kind="sigmoid"),
        ValueError,
        "kind must be one of",
    ),
    (
        "rank_rows",
        lambda: F.margin_ranking(torch.randn(3), torch.randn(4, 2), margin=0.1),
        ValueError,
        "as many rows",
    ),
    (
        "bias",
        lambda: F.sigmoid_contrastive(X, X, temperature=0.1, bias="x"),
        TypeError,
        "bias must be a float",
    ),
    (
        "module_temp",
        lambda: InfoNCE(temperature=-1.0),
        ValueError,
        "temperature must be a finite number > 0",
    ),
    (
        "views_rank",
        lambda: F.supervised_contrastive(
            torch.randn(2, 2, 2, 2), torch.tensor([0, 1]), temperature=0.1
        ),
        ValueError,
        "embeddings must be 2-D or 3-D",
    ),
]


@pytest.mark.parametrize(("name", "call", "exc", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(name, call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_error_message_names_received_value() -> None:
    with pytest.raises(ValueError) as info:
        F.info_nce(X, torch.randn(5, 8), temperature=0.1)
    assert (
        "query" in str(info.value)
        and "key" in str(info.value)
        and "4" in str(info.value)
        and "5" in str(info.value)
    )


# ---------------------------------------------------------------- property-based
@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 6),
    m=st.integers(0, 4),
    d=st.integers(1, 5),
    per_query=st.booleans(),
    symmetric=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_info_nce_shapes_and_masks_property(b, m, d, per_query, symmetric, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    negs = None
    if m:
        negs = torch.randn(b, m, d, generator=g) if per_query else torch.randn(m, d, generator=g)
    pos = torch.rand(b, b, generator=g) < 0.3
    ign = torch.rand(b, b + m, generator=g) < 0.5
    per_anchor = F.info_nce(
        q,
        k,
        negs,
        temperature=0.5,
        symmetric=symmetric,
        roles=KeyRoles(positive_mask=pos, ignore_mask=ign),
        reduction="none",
    )
    assert per_anchor.shape == (b,)
    assert torch.isfinite(per_anchor).all() and (per_anchor >= -1e-6).all()
    # the probabilities of |P| positives sum to at most 1, so the mean of -log p is >= log|P|
    n_pos = (pos | torch.eye(b, dtype=torch.bool)).sum(1).float()
    if not symmetric:
        assert (per_anchor >= torch.log(n_pos) - 1e-5).all()
    # ignoring everything but the positives leaves -log of a uniform choice among them
    # only when they tie; it never goes below log|P| and ignoring never raises the loss
    only_pos = F.info_nce(
        q,
        k,
        negs,
        temperature=0.5,
        roles=KeyRoles(positive_mask=pos, ignore_mask=torch.ones(b, b + m, dtype=torch.bool)),
        reduction="none",
    )
    assert (only_pos >= torch.log(n_pos) - 1e-5).all()
    plain = F.info_nce(
        q, k, negs, temperature=0.5, roles=KeyRoles(positive_mask=pos), reduction="none"
    )
    assert (only_pos <= plain + 1e-5).all()


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(2, 8),
    v=st.integers(1, 3),
    n_classes=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_supcon_never_nan_property(b, v, n_classes, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, v, 4, generator=g) if v > 1 else torch.randn(b, 4, generator=g)
    labels = torch.randint(0, n_classes, (b,), generator=g)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        loss = F.supervised_contrastive(emb, labels, temperature=0.1, reduction="none")
    assert loss.shape == (b * v,)
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_finite_check_one_bad_value_and_overflowing_sums(dtype) -> None:
    """The check's fast path (one sum) must neither miss a single NaN / +-Inf (also +Inf and
    -Inf together) nor reject finite values whose sum overflows the dtype."""
    big = torch.full((64, 8), torch.finfo(dtype).max / 4, dtype=dtype)  # finite, sum overflows
    assert torch.isfinite(F.info_nce(big, big, temperature=0.1, metric="cosine"))
    for bad in ([float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")]):
        x = torch.randn(4, 8).to(dtype)
        x.view(-1)[: len(bad)] = torch.tensor(bad, dtype=dtype)
        with pytest.raises(ValueError, match=f"query contains {len(bad)} NaN/Inf"):
            F.info_nce(x, x.detach().clone().nan_to_num_(0.0), temperature=0.1)
