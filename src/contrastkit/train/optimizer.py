"""The training optimizer: AdamW, with SGD (momentum) for the parameter groups that ask for it.

Why the class centres of the identity losses (ArcFace, CosFace, Sub-center ArcFace,
Proxy-NCA, Proxy Anchor: :func:`contrastkit.losses.class_centres.centre_parameters`) do not
train with AdamW: a centre gets a large gradient (the pull towards its images) only in the steps
where its class is in the batch (32 of 2,089 glyph characters at batch 128, m = 4: one step in
65, about 9 visits in 600 steps) and a small one (the softmax push) in every other step. AdamW
divides each coordinate by the root of its own running second moment, so every step moves a
centre by about ``lr`` a coordinate whatever its gradient: a visit moves it no more than a step
without one, the centres never reach their classes, and the encoder has nothing stable to pull
towards. Measured on the glyph set (2,089 classes, the ``arcface_glyphs`` encoder at width 16,
batch 128): after the first step the batch's centres have cosine 0.06 with their images under
AdamW, 0.49 under SGD (0.18 and 0.70 at step 20); after 200 steps the training batches' class
accuracy is 0 and the held-out TAR at FAR 1e-3 0.009 under AdamW (the untrained encoder: 0.054),
0.66 under SGD at ``lr`` 1. A larger AdamW rate for the centres moves the pushed ones as much as
the visited ones (30x: worse). SGD moves a centre in proportion to its gradient, a jump onto its
images when its class is in the batch: the insightface practice (SGD, momentum 0.9). With few
classes (240: one visit in 7.5 steps) AdamW trains them too.
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
    buffer is the state ``"momentum_buffer"``, beside a ``"step"`` count).

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
            state = self.state[p]
            # a step count as AdamW's state has one (its __setstate__ reads it on load)
            state["step"] = state.get("step", torch.tensor(0.0)) + 1
            if decay:
                p.mul_(1.0 - lr * decay)
            if momentum:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad)
                grad = buf
            p.add_(grad, alpha=-lr)
