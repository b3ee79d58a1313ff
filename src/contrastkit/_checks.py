"""Input checks shared by every public entry point.

Each check raises ``ValueError``/``TypeError`` naming the argument, what was received and what
was expected, so that bad input never becomes a silent wrong number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


class NonFiniteError(ValueError):
    """An input tensor holds NaN/Inf (what a diverged training step produces); the trainer
    turns it into its divergence diagnostic."""


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    floating: bool = True,
    finite: bool = True,
) -> Tensor:
    """Check that ``x`` is a tensor of the given rank(s), floating dtype and finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}.")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}; "
            f"convert with {name}.float()."
        )
    # One reduction first: a NaN/Inf anywhere makes the sum non-finite; only a non-finite sum
    # (which finite values can also give, by overflow) pays for the element-wise test.
    if finite and floating and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(
            f"{name} contains {bad} NaN/Inf value(s); check the encoder output "
            "(a diverged step, a learning rate too high, or fp16 overflow)."
        )
    return x


def check_embeddings(name: str, x: object, *, ndim: int | Sequence[int] = 2) -> Tensor:
    """An embedding batch: floating, finite, of the given rank and with a non-empty last dim."""
    x = check_tensor(name, x, ndim=ndim)
    if x.shape[-1] == 0:
        raise ValueError(
            f"{name} must have a non-empty embedding dimension, got shape {tuple(x.shape)}."
        )
    return x


def check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor, *, same_rows: bool = True) -> None:
    """Two embedding batches that must agree in width (and in rows when paired)."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same embedding dimension, got "
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)}."
        )
    if same_rows and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size (row i of one pairs with row i "
            f"of the other), got {a.shape[0]} and {b.shape[0]}."
        )
    if a.dtype != b.dtype:
        raise TypeError(
            f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}; cast one."
        )


def check_temperature(temperature: object, name: str = "temperature") -> None:
    """A positive finite float, or a positive finite scalar tensor (a learnable temperature)."""
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"{name} tensor must have one element, got shape {tuple(temperature.shape)}."
            )
        value = float(temperature.detach())
    elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        value = float(temperature)
    else:
        raise TypeError(
            f"{name} must be a float or a scalar tensor, got {type(temperature).__name__}."
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0 (typically 0.01 to 1.0), got {value}."
        )


def check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    return str(reduction)


def check_labels(name: str, labels: object, n: int, *, what: str = "embeddings") -> Tensor:
    """Integer labels of shape (n,)."""
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of integer labels, got {type(labels).__name__}."
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype (e.g. torch.long), got {labels.dtype}.")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n},) to match {what}, got shape {tuple(labels.shape)}."
        )
    return labels


def check_mask(name: str, mask: object, shape: tuple[int, ...]) -> Tensor:
    """A boolean mask of an exact shape."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor, got {type(mask).__name__}.")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool, got {mask.dtype}; use {name}.bool().")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}.")
    return mask


def check_positive_number(name: str, value: object, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}.")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return str(value)


def reduce(values: Tensor, reduction: str) -> Tensor:
    """Apply a reduction to per-item losses."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values
