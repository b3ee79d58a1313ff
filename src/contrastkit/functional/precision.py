"""Losses own their precision under ``torch.autocast``.

Autocast turns every matrix product it sees into a half-precision product with a half-precision
*result*. Inside a loss that rounds the logits (or a covariance, or a distance) to bf16 before the
softmax / the sum: symmetric InfoNCE of float32 inputs at B = 64, tau = 0.1 came out 5.375 under
bf16 autocast against 5.3649 in float64 (relative error 1.9e-3; the half contract is 1e-3), and
a bf16 run logged its loss in bf16 steps. So every loss runs with autocast switched off and
decides itself, from the autocast dtype the trainer asked for (``train.precision``):

* ``"half"`` (the engine's softmax and sigmoid losses): float32 embeddings are rounded once to
  bf16 and take the engine's own half path (bf16 operands, float32 logits, statistics and loss;
  docs/engine.md's accuracy contract, against float64 on the rounded inputs). Under fp16
  autocast they stay float32 (fp16 has no float32 range; on a CPU its products are emulated),
  and half inputs are passed through as they are;
* ``"float32"`` (every other loss: margins and distances, the negative-free losses'
  correlations, the debiased losses, similarity-based mining): half inputs are upcast (exactly)
  to float32 and the loss is computed in float32.

Outside autocast nothing changes. Nested calls see autocast off and pass through.

>>> import torch
>>> @own_precision("half")
... def dtype_seen(x):
...     return x.dtype, torch.is_autocast_enabled("cpu")
>>> with torch.autocast("cpu", dtype=torch.bfloat16):
...     dtype_seen(torch.ones(2, 2))
(torch.bfloat16, False)
>>> dtype_seen(torch.ones(2, 2))
(torch.float32, False)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

__all__ = ["autocast_dtype", "own_precision"]

F = TypeVar("F", bound=Callable[..., Any])
Mode = Literal["half", "float32"]
_DEVICES = ("cpu", "cuda")
_HALF = (torch.float16, torch.bfloat16)


def autocast_dtype() -> tuple[str, torch.dtype] | None:
    """``(device_type, dtype)`` of the innermost enabled autocast, or None outside autocast.

    >>> autocast_dtype() is None
    True
    """
    for device in _DEVICES:
        if torch.is_autocast_enabled(device):
            return device, torch.get_autocast_dtype(device)
    return None


def _cast(x: Any, mode: Mode, half: torch.dtype) -> Any:
    """The loss-input tensor ``x`` in the dtype ``mode`` computes it in (see the module doc); a
    dataclass (the engine's :class:`~contrastkit.functional.engine.ContrastiveProblem`) gets its
    tensor fields cast the same way."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        changed = {
            f.name: _cast(getattr(x, f.name), mode, half)
            for f in dataclasses.fields(x)
            if f.init and isinstance(getattr(x, f.name), Tensor)
        }
        changed = {k: v for k, v in changed.items() if v is not getattr(x, k)}
        return dataclasses.replace(x, **changed) if changed else x
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return x
    if mode == "float32":
        return x.float() if x.dtype in _HALF else x
    # "half": only embeddings (2-D and up); temperatures, biases and scores keep their dtype.
    if half == torch.bfloat16 and x.dtype == torch.float32 and x.ndim >= 2:
        return x.to(torch.bfloat16)
    return x


def own_precision(mode: Mode) -> Callable[[F], F]:
    """Decorator: run the loss with autocast off, its inputs cast as ``mode`` says.

    Args:
        mode: ``"half"`` for the engine's losses (their half path has float32 logits),
            ``"float32"`` for the others (see the module docstring).
    """
    if mode not in ("half", "float32"):
        raise ValueError(f"mode must be 'half' or 'float32', got {mode!r}.")

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            active = autocast_dtype()
            if active is None:
                return fn(*args, **kwargs)
            device, half = active
            args = tuple(_cast(a, mode, half) for a in args)
            kwargs = {k: _cast(v, mode, half) for k, v in kwargs.items()}
            with torch.autocast(device, enabled=False):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
