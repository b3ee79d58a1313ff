"""GradCache: encoder gradients equal the plain full-batch step, dropout on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit import gradcache
from contrastkit.functional import info_nce, nt_xent
from contrastkit.gradcache import GradCache, grad_cache_step


def _encoder(seed: int = 0, p: float = 0.3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(p), nn.GELU(), nn.Linear(16, 5)).double()


def _data(seed: int, b: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 6, generator=g, dtype=torch.float64),
        torch.randn(b, 6, generator=g, dtype=torch.float64),
    )


def _plain_step(enc: nn.Module, x_q, x_k, loss_fn, chunk_size: int) -> torch.Tensor:
    """Plain step with graph. Embedding chunk by chunk draws the dropout masks in the order
    GradCache does, so both steps see the same masks; the loss is on the full batch."""
    q = torch.cat([enc(x_q[i : i + chunk_size]) for i in range(0, len(x_q), chunk_size)])
    k = torch.cat([enc(x_k[i : i + chunk_size]) for i in range(0, len(x_k), chunk_size)])
    loss = loss_fn(q, k)
    loss.backward()
    return loss.detach()


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("chunk_size", [1, 5, 12])
def test_equals_plain_step_with_dropout(chunk_size: int) -> None:
    x_q, x_k = _data(0)
    temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def loss_fn(q, k):
        return info_nce(q, k, temperature=temperature, symmetric=True)

    ref = _encoder()
    torch.manual_seed(123)
    ref_loss = _plain_step(ref, x_q, x_k, loss_fn, chunk_size)
    ref_t = temperature.grad.clone()
    temperature.grad = None
    rng_after_plain = torch.get_rng_state()

    enc = _encoder()
    torch.manual_seed(123)
    loss = grad_cache_step(enc, (x_q, x_k), loss_fn, chunk_size=chunk_size)
    assert torch.equal(torch.get_rng_state(), rng_after_plain)  # RNG continues as after plain
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(_grads(enc), _grads(ref)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(temperature.grad, ref_t)


def test_without_rng_replay_gradients_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: the parity above relies on the replay (dropout is really on)."""
    x_q, x_k = _data(1)

    def loss_fn(q, k):
        return nt_xent(q, k, temperature=0.5)

    ref = _encoder()
    torch.manual_seed(5)
    _plain_step(ref, x_q, x_k, loss_fn, 4)
    monkeypatch.setattr(gradcache._RngState, "restore", lambda self: None)
    enc = _encoder()
    torch.manual_seed(5)
    grad_cache_step(enc, (x_q, x_k), loss_fn, chunk_size=4)
    assert not torch.allclose(_grads(enc)[0], _grads(ref)[0])


def test_no_dropout_equals_true_full_batch_step() -> None:
    x_q, x_k = _data(2, b=10)
    ref, enc = _encoder(p=0.0), _encoder(p=0.0)
    info_nce(ref(x_q), ref(x_k), temperature=0.1).backward()
    grad_cache_step(enc, [x_q, x_k], lambda q, k: info_nce(q, k, temperature=0.1), chunk_size=3)
    for g, r in zip(_grads(enc), _grads(ref)):
        torch.testing.assert_close(g, r)


def test_two_towers_and_dict_inputs() -> None:
    class Tower(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.net = _encoder(seed)

        def forward(self, features: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.net(features) * scale

    x_q, x_k = _data(3, b=9)
    towers = [Tower(1), Tower(2)]
    ref = [Tower(1), Tower(2)]
    torch.manual_seed(9)
    q = torch.cat([ref[0](x_q[i : i + 4], 2.0) for i in range(0, 9, 4)])
    k = torch.cat([ref[1](x_k[i : i + 4], 2.0) for i in range(0, 9, 4)])
    info_nce(q, k, temperature=0.3).backward()
    torch.manual_seed(9)
    step = GradCache(towers, lambda a, b: info_nce(a, b, temperature=0.3), chunk_size=4)
    step({"features": x_q, "scale": 2.0}, {"features": x_k, "scale": 2.0})
    for t, r in zip(towers, ref):
        for g, h in zip(_grads(t), _grads(r)):
            torch.testing.assert_close(g, h)


def test_autocast_bfloat16() -> None:
    x_q, x_k = (x.float() for x in _data(4, b=8))
    ref, enc = _encoder().float(), _encoder().float()

    def loss_fn(q, k):
        return info_nce(q, k, temperature=0.2)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        _plain_step(ref, x_q, x_k, loss_fn, 4)
        torch.manual_seed(1)
        loss = grad_cache_step(enc, (x_q, x_k), loss_fn, chunk_size=4)
    assert torch.isfinite(loss)
    for g, r in zip(_grads(enc), _grads(ref)):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-3)


def test_frozen_momentum_key_encoder_is_not_replayed() -> None:
    from contrastkit.encoders.momentum import MomentumEncoder

    x_q, x_k = _data(5, b=10)
    online = _encoder(3, p=0.0)
    target = MomentumEncoder(_encoder(4, p=0.0), momentum=0.9)
    calls = []
    target.register_forward_hook(lambda *_: calls.append(1))
    ref = _encoder(3, p=0.0)
    info_nce(ref(x_q), target(x_k), temperature=0.2).backward()
    calls.clear()
    grad_cache_step(
        [online, target], (x_q, x_k), lambda q, k: info_nce(q, k, temperature=0.2), chunk_size=4
    )
    assert len(calls) == 3  # 10 rows in chunks of 4: embedded once, never re-run
    for g, r in zip(_grads(online), _grads(ref)):
        torch.testing.assert_close(g, r)


def test_grad_scaler_scales_the_cached_gradients() -> None:
    x_q, x_k = _data(6, b=8)
    ref, enc = _encoder(p=0.0), _encoder(p=0.0)

    def loss_fn(q, k):
        return info_nce(q, k, temperature=0.2)

    grad_cache_step(ref, (x_q, x_k), loss_fn, chunk_size=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    grad_cache_step(enc, (x_q, x_k), loss_fn, chunk_size=3, scaler=scaler)
    for g, r in zip(_grads(enc), _grads(ref)):
        torch.testing.assert_close(g, 1024.0 * r)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 0}, "chunk_size must be an int > 0"),
        ({"chunk_size": 2, "encoders": [nn.Identity()] * 3}, "one per input"),
        ({"chunk_size": 2, "inputs": torch.zeros(4, 6)}, "one batch per encoder call"),
        ({"chunk_size": 2, "inputs": ({"a": torch.zeros(4, 6), "b": torch.zeros(3, 6)},)}, "share"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {
        "encoders": nn.Identity(),
        "inputs": (torch.zeros(4, 6), torch.zeros(4, 6)),
        "loss_fn": lambda *e: sum(x.sum() for x in e),
    }
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        grad_cache_step(args.pop("encoders"), args.pop("inputs"), args.pop("loss_fn"), **args)
