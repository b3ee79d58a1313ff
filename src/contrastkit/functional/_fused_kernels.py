"""The Triton kernels of :mod:`contrastkit.functional.fused` (imported lazily, by it only).

Two kernels cover both directions of the softmax-contrastive loss. Each reads an ``A`` block of
``BLOCK_M`` rows and streams ``BLOCK_N``-row blocks of ``B``; the logits ``s = A_blk B_blk^T``
(a ``BLOCK_M x BLOCK_N`` float32 tile, the products accumulated over D in ``BLOCK_K`` steps)
never leave the chip. With ``TRANSPOSED`` the A rows are the keys (and shared negatives) and the
B rows the queries, so the same code serves the key -> query direction: the roles of a logit
(positive, ignored) are always computed for (query ``qi``, key ``kj``).

* :func:`stats_kernel`: per A row, the online log-sum-exp over the kept B entries, the sum of
  the positive logits and their count (the forward pass, rows or columns; with ``COLUMNS`` the
  columns' sums too, in the same pass, when the logits are bounded).
* :func:`grad_kernel`: per A row and ``BLOCK_DO`` slice of D, ``dA = G B`` with the logit
  gradient ``G_ab = e^{s_ab - lse_a} w_a + e^{s_ab - lse_b} w_b - [pos_ab] (pw_a + pw_b)``
  recomputed tile by tile (``w``: upstream gradient of a row / column loss, ``pw = w / |P|``;
  either side's terms only with ``HAS_A`` / ``HAS_B``). ``G`` is complete in float32 before it
  is rounded to the operand dtype for its product.

``HAS_SCALE`` (``engine.HALF_PRODUCTS = "raw"``): the operands are the raw half inputs and a
logit is ``l_ab = a_a b_b (x_a . y_b)`` with per-row scales ``a`` of A and ``b`` of B; the
gradient weights are scaled the same way before their product, which then gives ``dL/dx``.

``DOT_F32`` upcasts half operands to float32 for ``tl.dot`` (exact: the product of two bf16 or
fp16 values fits a float32, and the sums are float32 either way). The interpreter needs it: in
Triton 3.9 its ``tl.dot`` multiplies bf16 tensors' bit patterns (it stores bf16 as uint16) and
returns garbage. Compiled kernels keep the half operands for the tensor cores.

The module imports without Triton (pytest collects it for doctests); nothing here runs then.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    jit = triton.jit
except ImportError:  # only fused.py imports this for real, and only when triton imports
    triton = tl = None

    def jit(fn):
        return fn


@jit
def _tile_logits(
    a_ptr,
    b_ptr,
    ra,
    rb,
    n_a,
    n_b,
    dim,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``A[ra] . B[rb]`` as a (BLOCK_M, BLOCK_N) float32 tile (0 outside the ranges)."""
    s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            a_ptr + ra[:, None] * dim + rk[None, :],
            mask=(ra[:, None] < n_a) & (rk[None, :] < dim),
            other=0.0,
        )
        b = tl.load(
            b_ptr + rb[None, :] * dim + rk[:, None],
            mask=(rb[None, :] < n_b) & (rk[:, None] < dim),
            other=0.0,
        )  # (BLOCK_K, BLOCK_N): B transposed by its addressing
        if DOT_F32:  # exact: a product of two half values fits a float32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        s += tl.dot(a, b, input_precision=PRECISION)
    return s


@jit
def _same_value(q_ptr, k_ptr, ra, rb, n_a, n_b, n_keys, TRANSPOSED: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: the query's and the key's value (label, id) are equal. The two
    vectors are loaded once per tile and compared by broadcasting (a (BLOCK_M, BLOCK_N) gather
    of int64 values would hold a tile of them in registers)."""
    if TRANSPOSED:  # A rows are keys, B rows queries
        q_val = tl.load(q_ptr + rb, mask=rb < n_b, other=0)
        k_val = tl.load(k_ptr + ra, mask=(ra < n_a) & (ra < n_keys), other=0)
        same = k_val[:, None] == q_val[None, :]
    else:
        q_val = tl.load(q_ptr + ra, mask=ra < n_a, other=0)
        k_val = tl.load(k_ptr + rb, mask=(rb < n_b) & (rb < n_keys), other=0)
        same = q_val[:, None] == k_val[None, :]
    return same


@jit
def _tile_roles(
    ra,
    rb,
    n_a,
    n_b,
    n_keys,
    pos_off,
    self_off,
    qlab_ptr,
    klab_ptr,
    qid_ptr,
    kid_ptr,
    TRANSPOSED: tl.constexpr,
    HAS_POS: tl.constexpr,
    HAS_SELF: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_IDS: tl.constexpr,
):
    """``(keep, positive)``, both (BLOCK_M, BLOCK_N) bool: the kept candidates (in range, not
    the query itself, not an id-ignored key) and the positives among them."""
    if TRANSPOSED:
        qi = rb[None, :]
        kj = ra[:, None]
    else:
        qi = ra[:, None]
        kj = rb[None, :]
    inside = (ra[:, None] < n_a) & (rb[None, :] < n_b)
    is_key = inside & (kj < n_keys)
    pos = inside & (kj < 0)  # all False, with the tile's shape
    if HAS_POS:
        pos = pos | (is_key & (kj == (qi + pos_off) % n_keys))
    if HAS_LABELS:
        same_label = _same_value(qlab_ptr, klab_ptr, ra, rb, n_a, n_b, n_keys, TRANSPOSED)
        pos = pos | (is_key & same_label)
    ignore = inside & (kj < 0)
    if HAS_SELF:
        is_self = is_key & (kj == (qi + self_off) % n_keys)
        pos = pos & (~is_self)
        ignore = ignore | is_self
    if HAS_IDS:
        same_id = _same_value(qid_ptr, kid_ptr, ra, rb, n_a, n_b, n_keys, TRANSPOSED)
        ignore = ignore | (is_key & same_id & (~pos))
    keep = inside & (~ignore)
    return keep, pos


@jit
def stats_kernel(
    a_ptr,
    b_ptr,
    lse_ptr,
    pos_ptr,
    cnt_ptr,
    col_sum_ptr,
    col_pos_ptr,
    col_cnt_ptr,
    scale_a_ptr,
    scale_b_ptr,
    qlab_ptr,
    klab_ptr,
    qid_ptr,
    kid_ptr,
    n_a,
    n_b,
    dim,
    n_keys,
    pos_off,
    self_off,
    TRANSPOSED: tl.constexpr,
    HAS_POS: tl.constexpr,
    HAS_SELF: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    COLUMNS: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Per A row (n_a,): log-sum-exp over the kept B entries (~-1e30 when none), the sum of the
    positive logits and their count, all float32. With ``COLUMNS`` (rows = queries, every logit
    known to be within +-40) the same pass adds, per key column j < n_keys, ``sum_i e^{s_ij}``
    over the kept entries (no max shift: it cannot overflow), the positive logits and their
    count into ``col_*`` with atomic adds: the key -> query direction without a second pass."""
    ra = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    # a finite floor for the running max: exp(floor - floor) is 1, never nan
    m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) - 1.0e30
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pos_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pos_cnt = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if HAS_SCALE:
        scale_a = tl.load(scale_a_ptr + ra, mask=ra < n_a, other=0.0)
    for b0 in range(0, n_b, BLOCK_N):
        rb = b0 + tl.arange(0, BLOCK_N)
        s = _tile_logits(
            a_ptr, b_ptr, ra, rb, n_a, n_b, dim, PRECISION, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_K
        )
        if HAS_SCALE:  # raw-input products: l_ab = a_a b_b (x_a . y_b)
            scale_b = tl.load(scale_b_ptr + rb, mask=rb < n_b, other=0.0)
            s = s * scale_a[:, None] * scale_b[None, :]
        keep, pos = _tile_roles(
            ra,
            rb,
            n_a,
            n_b,
            n_keys,
            pos_off,
            self_off,
            qlab_ptr,
            klab_ptr,
            qid_ptr,
            kid_ptr,
            TRANSPOSED,
            HAS_POS,
            HAS_SELF,
            HAS_LABELS,
            HAS_IDS,
        )
        kept = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(kept, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(kept - m_new[:, None]), 1)
        m_i = m_new
        pos_sum += tl.sum(tl.where(pos, s, 0.0), 1)
        pos_cnt += tl.sum(pos.to(tl.float32), 1)
        if COLUMNS:
            is_col = rb < n_keys
            key_col = keep & is_col[None, :]
            col_e = tl.sum(tl.where(key_col, tl.exp(s), 0.0), 0)
            tl.atomic_add(col_sum_ptr + rb, col_e, mask=is_col, sem="relaxed")
            col_pos = tl.sum(tl.where(pos, s, 0.0), 0)
            tl.atomic_add(col_pos_ptr + rb, col_pos, mask=is_col, sem="relaxed")
            col_cnt = tl.sum(pos.to(tl.float32), 0)
            tl.atomic_add(col_cnt_ptr + rb, col_cnt, mask=is_col, sem="relaxed")
    inside = ra < n_a
    # rows with nothing kept (out of range, or all ignored: no positive) get ~-1e30, not log(0)
    tl.store(lse_ptr + ra, m_i + tl.log(tl.maximum(l_i, 1.0e-30)), mask=inside)
    tl.store(pos_ptr + ra, pos_sum, mask=inside)
    tl.store(cnt_ptr + ra, pos_cnt, mask=inside)


@jit
def grad_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    lse_a_ptr,
    w_a_ptr,
    pw_a_ptr,
    lse_b_ptr,
    w_b_ptr,
    pw_b_ptr,
    scale_a_ptr,
    scale_b_ptr,
    qlab_ptr,
    klab_ptr,
    qid_ptr,
    kid_ptr,
    n_a,
    n_b,
    dim,
    n_keys,
    pos_off,
    self_off,
    TRANSPOSED: tl.constexpr,
    HAS_POS: tl.constexpr,
    HAS_SELF: tl.constexpr,
    HAS_LABELS: tl.constexpr,
    HAS_IDS: tl.constexpr,
    HAS_A: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_DO: tl.constexpr,
):
    """``out[ra, rd] = sum_b G_ab B[b, rd]`` in float32 (see the module docstring); ``lse``
    is +inf (and ``w`` 0) for a row / column without a loss."""
    ra = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    a_in = ra < n_a
    if HAS_A:
        lse_a = tl.load(lse_a_ptr + ra, mask=a_in, other=float("inf"))
        w_a = tl.load(w_a_ptr + ra, mask=a_in, other=0.0)
        pw_a = tl.load(pw_a_ptr + ra, mask=a_in, other=0.0)
    if HAS_SCALE:
        scale_a = tl.load(scale_a_ptr + ra, mask=a_in, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    for b0 in range(0, n_b, BLOCK_N):
        rb = b0 + tl.arange(0, BLOCK_N)
        b_in = rb < n_b
        s = _tile_logits(
            a_ptr, b_ptr, ra, rb, n_a, n_b, dim, PRECISION, DOT_F32, BLOCK_M, BLOCK_N, BLOCK_K
        )
        if HAS_SCALE:
            scale_b = tl.load(scale_b_ptr + rb, mask=b_in, other=0.0)
            s = s * scale_a[:, None] * scale_b[None, :]
        keep, pos = _tile_roles(
            ra,
            rb,
            n_a,
            n_b,
            n_keys,
            pos_off,
            self_off,
            qlab_ptr,
            klab_ptr,
            qid_ptr,
            kid_ptr,
            TRANSPOSED,
            HAS_POS,
            HAS_SELF,
            HAS_LABELS,
            HAS_IDS,
        )
        g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        pw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if HAS_A:
            g += tl.where(keep, tl.exp(s - lse_a[:, None]) * w_a[:, None], 0.0)
            pw += pw_a[:, None]
        if HAS_B:
            lse_b = tl.load(lse_b_ptr + rb, mask=b_in, other=float("inf"))
            w_b = tl.load(w_b_ptr + rb, mask=b_in, other=0.0)
            pw_b = tl.load(pw_b_ptr + rb, mask=b_in, other=0.0)
            g += tl.where(keep, tl.exp(s - lse_b[None, :]) * w_b[None, :], 0.0)
            pw += pw_b[None, :]
        g -= tl.where(pos, pw, 0.0)
        if HAS_SCALE:  # back to the raw inputs: dL/dx_a = sum_b g_ab a_a b_b y_b
            g = g * scale_a[:, None] * scale_b[None, :]
        b_blk = tl.load(
            b_ptr + rb[:, None] * dim + rd[None, :],
            mask=b_in[:, None] & (rd[None, :] < dim),
            other=0.0,
        )  # (BLOCK_N, BLOCK_DO)
        g = g.to(b_blk.dtype)  # complete in float32, rounded once for the product
        if DOT_F32:
            g = g.to(tl.float32)
            b_blk = b_blk.to(tl.float32)
        acc += tl.dot(g, b_blk, input_precision=PRECISION)
    tl.store(
        out_ptr + ra[:, None] * dim + rd[None, :], acc, mask=a_in[:, None] & (rd[None, :] < dim)
    )
