"""MoCo queue: FIFO order, id masking, width checks, use with info_nce and the EMA encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.encoders.momentum import MomentumEncoder
from contrastkit.functional import KeyRoles, info_nce
from contrastkit.negatives import EmbeddingQueue, mask_from_ids


def test_fifo_order_and_wraparound() -> None:
    queue = EmbeddingQueue(size=5, dim=1)
    for step in range(4):  # pushes of 2: ids 0..7, only the last 5 survive
        ids = torch.tensor([2 * step, 2 * step + 1])
        queue.push(ids[:, None].float(), ids)
    assert len(queue) == 5
    assert queue.ids_in_order().tolist() == [3, 4, 5, 6, 7]
    assert queue.negatives()[:, 0].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_push_larger_than_size_keeps_the_last_rows() -> None:
    queue = EmbeddingQueue(size=3, dim=2)
    queue.push(torch.arange(10.0).view(5, 2), torch.arange(5))
    assert queue.ids_in_order().tolist() == [2, 3, 4]


def test_entries_are_detached_and_stored_in_state_dict() -> None:
    queue = EmbeddingQueue(size=4, dim=2)
    keys = torch.randn(2, 2, requires_grad=True)
    queue.push(keys, torch.tensor([1, 2]))
    assert not queue.negatives().requires_grad
    clone = EmbeddingQueue(size=4, dim=2)
    clone.load_state_dict(queue.state_dict())
    assert torch.equal(clone.negatives(), queue.negatives()) and len(clone) == 2


def test_mask_ignores_own_positive_in_the_loss() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, generator=g)
    k = q + 0.1 * torch.randn(4, 8, generator=g)
    ids = torch.tensor([10, 11, 12, 13])
    queue = EmbeddingQueue(size=6, dim=8)
    queue.push(k[:2], ids[:2])  # the positives of queries 0 and 1 are also in the queue
    queue.push(torch.randn(3, 8, generator=g))  # unrelated negatives, no ids
    mask = queue.mask(ids)
    assert mask.tolist() == [
        [True, False, False, False, False],
        [False, True, False, False, False],
        [False] * 5,
        [False] * 5,
    ]
    in_batch = mask_from_ids(ids, ids)
    ignore = torch.cat([in_batch, mask], dim=1)  # (B, B + M)
    masked = info_nce(
        q,
        k,
        queue.negatives(),
        temperature=0.1,
        roles=KeyRoles(ignore_mask=ignore),
        reduction="none",
    )
    unmasked = info_nce(q, k, queue.negatives(), temperature=0.1, reduction="none")
    # Masking the duplicate positive removes a competitor that is as close as the positive.
    assert (masked[:2] < unmasked[:2] - 0.1).all()
    torch.testing.assert_close(masked[2:], unmasked[2:])
    # Row i equals the loss with its masked queue entries removed altogether.
    for i in range(4):
        kept = queue.negatives()[~mask[i]]
        clean = info_nce(q, k, kept, temperature=0.1, reduction="none")[i]
        torch.testing.assert_close(masked[i], clean)


def test_width_mismatch_is_a_clear_error() -> None:
    queue = EmbeddingQueue(size=4, dim=8)
    with pytest.raises(ValueError, match=r"keys must have width 8 .*got shape \(2, 6\)"):
        queue.push(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="ids must be an integer tensor of shape"):
        queue.push(torch.zeros(2, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="size must be an int > 0"):
        EmbeddingQueue(size=0, dim=8)


def test_moco_step_with_momentum_encoder() -> None:
    """One MoCo step: the EMA moves by (1 - m), the queue fills with momentum keys."""
    torch.manual_seed(0)
    online = nn.Linear(6, 4)
    target = MomentumEncoder(online, momentum=0.9)
    queue = EmbeddingQueue(size=16, dim=4)
    opt = torch.optim.SGD(online.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    ids = torch.arange(8)
    for _ in range(2):
        q = online(x + 0.01 * torch.randn(8, 6, generator=g))
        k = target(x)
        assert not k.requires_grad
        negatives = queue.negatives() if len(queue) else None
        ignore = queue.mask(ids) if len(queue) else None
        if ignore is not None:
            ignore = torch.cat([torch.zeros(8, 8, dtype=torch.bool), ignore], dim=1)
        loss = info_nce(q, k, negatives, temperature=0.2, roles=KeyRoles(ignore_mask=ignore))
        before = target.module.weight.clone()
        opt.zero_grad()
        loss.backward()
        opt.step()
        target.update(online)
        expected = 0.9 * before + 0.1 * online.weight.detach()
        torch.testing.assert_close(target.module.weight, expected)
        queue.push(k, ids)
    assert len(queue) == 16
