"""Tests generated from the loss registry: a loss is tested by being registered.

Each registered loss module provides ``example_inputs(generator)``: the float64 positional inputs
of its ``forward`` for a small batch.
"""

from __future__ import annotations

import pytest
import torch

from contrastkit.losses import LOSSES, LearnableTemperature, create_loss, list_losses

NAMES = list_losses()


def _inputs(name: str, seed: int = 0) -> tuple:
    cls = LOSSES.get(name)
    assert hasattr(cls, "example_inputs"), f"registered loss {name!r} must define example_inputs()"
    return cls.example_inputs(torch.Generator().manual_seed(seed))


def _float_leaves(inputs: tuple) -> tuple:
    return tuple(
        x.detach().clone().requires_grad_()
        if isinstance(x, torch.Tensor) and x.is_floating_point()
        else x
        for x in inputs
    )


def test_registry_lists_the_core_losses() -> None:
    core = {
        "info_nce",
        "nt_xent",
        "supcon",
        "triplet_margin",
        "contrastive_margin",
        "preference",
        "sigmoid_contrastive",
    }
    assert core <= set(NAMES)
    assert list_losses("*nce*") == [n for n in NAMES if "nce" in n]


def test_unknown_loss_name_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean 'info_nce'"):
        create_loss("info_nc")


@pytest.mark.parametrize("name", NAMES)
def test_finite_scalar_with_gradients_on_all_inputs(name: str) -> None:
    loss_fn = create_loss(name)
    inputs = _float_leaves(_inputs(name))
    loss = loss_fn(*inputs)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # Losses with a stop-gradient (SimSiam/BYOL targets, DINO teacher) name the forward positions
    # that receive no gradient by design.
    stopped = getattr(loss_fn, "stop_gradient_inputs", ())
    for i, x in enumerate(inputs):
        if isinstance(x, torch.Tensor) and x.requires_grad and i not in stopped:
            assert x.grad is not None and torch.isfinite(x.grad).all()
            assert x.grad.abs().sum() > 0, f"{name}: an input received an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name: str) -> None:
    loss_fn = create_loss(name)
    if not getattr(loss_fn, "numerical_gradcheck", True):
        pytest.skip(
            f"{name} computes its targets under stop-gradient (gradchecked in its own tests)"
        )
    inputs = _float_leaves(_inputs(name, seed=1))
    stopped = getattr(loss_fn, "stop_gradient_inputs", ())  # held constant: no gradient by design
    float_idx = [
        i
        for i, x in enumerate(inputs)
        if isinstance(x, torch.Tensor) and x.requires_grad and i not in stopped
    ]

    def fn(*floats: torch.Tensor) -> torch.Tensor:
        args = list(inputs)
        for i, f in zip(float_idx, floats):
            args[i] = f
        return loss_fn(*args)

    assert torch.autograd.gradcheck(fn, tuple(inputs[i] for i in float_idx))


@pytest.mark.parametrize("name", NAMES)
def test_invariant_to_permuting_the_batch(name: str) -> None:
    loss_fn = create_loss(name)
    if not getattr(loss_fn, "permutation_invariant", True):
        pytest.skip(f"{name} declares itself order-dependent")
    inputs = _inputs(name, seed=2)
    b = inputs[0].shape[0]
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(3))
    permuted = tuple(
        x[perm] if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == b else x
        for x in inputs
    )
    torch.testing.assert_close(loss_fn(*permuted), loss_fn(*inputs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "name", [n for n in NAMES if "temperature" in LOSSES.get(n).__init__.__code__.co_varnames]
)
def test_accepts_a_learnable_temperature(name: str) -> None:
    temperature = LearnableTemperature(0.2).double()
    loss_fn = create_loss(name, temperature=temperature)
    loss_fn(*_inputs(name)).backward()
    assert temperature.log_scale.grad is not None and torch.isfinite(temperature.log_scale.grad)


def test_learnable_temperature_is_clamped_like_clip() -> None:
    t = LearnableTemperature(0.07)
    with torch.no_grad():
        t.log_scale.fill_(10.0)
    assert float(t().detach()) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="below the minimum temperature"):
        LearnableTemperature(0.001)
