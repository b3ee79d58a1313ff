"""The training optimizer: AdamW, with SGD (momentum) for the parameter groups that ask for it.

Why the class centres of the identity losses (ArcFace, CosFace, Sub-center ArcFace,
Proxy-NCA, Proxy Anchor: :func:`contrastkit.losses.class_centres.centre_parameters`) do not
train with AdamW: every step, the softmax over C classes gives *every* centre a gradient, a
tiny push away from the batch for the ~C - B/m classes absent from it, and a large pull towards
its images only in the steps where its class is in the batch (B/m of C classes a step: 32 of
2,089 glyph characters at batch 128, m = 4, one step in 65). AdamW divides each coordinate by the
root of its own running second moment, so the tiny pushes become full-size steps: between two
visits a centre random-walks away from its class, the encoder chases centres that do not hold
still, and the class logits never learn (glyph set, 2,089 classes, 200 steps: training-batch
accuracy 0, held-out TAR at FAR 1e-3 0.009, below the untrained encoder's 0.054). SGD keeps the
gradients' relative sizes, so a centre moves mostly when its class is in the batch, the
insightface practice (SGD, momentum 0.9); the same 200 steps with SGD centres: TAR 0.66. With a
few classes (240: one visit in 7.5 steps) AdamW trains them too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["MixedAdamW"]


class MixedAdamW(torch.optim.AdamW):
    """AdamW over the parameter groups, except those with ``"sgd": True``, which take SGD with
    ``momentum`` (PyTorch's convention: ``buf = momentum * buf + grad``, ``p -= lr * buf``)
    and decoupled ``weight_decay`` (``p -= lr * weight_decay * p``, AdamW's, no Nesterov).

    One optimizer, so one learning-rate schedule scales every group's ``lr`` and
    ``state_dict`` / ``load_state_dict`` checkpoint all of them (the SGD groups' momentum
    buffer is the state ``"momentum_buffer"``).

    >>> a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    >>> opt = MixedAdamW([{"params": [a]}, {"params": [b], "sgd": True, "lr": 0.5,
    ...                   "momentum": 0.9, "weight_decay": 0.0}], lr=0.1)
    >>> (a.sum() + 2 * b.sum()).backward()
    >>> opt.step()
    >>> round(float(a[0]), 4), b.tolist()  # AdamW: lr a coordinate (and decay); SGD: lr * grad
    (0.899, [0.0, 0.0])
    """

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            group.setdefault("sgd", False)
            group.setdefault("momentum", 0.9)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        every = self.param_groups
        self.param_groups = [g for g in every if not g["sgd"]]  # AdamW's step reads these
        try:
            super().step()
        finally:
            self.param_groups = every
        for group in every:
            if group["sgd"]:
                self._sgd(group)
        return loss

    def _sgd(self, group: dict[str, Any]) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad: Tensor = p.grad
            if decay:
                p.mul_(1.0 - lr * decay)
            if momentum:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad)
                grad = buf
            p.add_(grad, alpha=-lr)
