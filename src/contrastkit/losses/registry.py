"""The loss registry: configs name losses, tests iterate them, and every loss declares how it is
called, so the trainer never dispatches on loss names.

Each registered loss class sets three class attributes (read back with :func:`loss_spec`):

* ``inputs``: what ``forward`` takes. ``"pair"``: two row-aligned embedding batches
  ``(query (B, D), key (B, D))``; ``"labelled"``: ``(embeddings (N, D), labels (N,))``;
  ``"prediction"``: ``(prediction1, prediction2, target1, target2)`` (BYOL / SimSiam: a predictor
  on the online branch); ``"scores"``: ``(chosen_scores (B,), rejected_scores (B,))``;
  ``"pair_labels"``: ``(a (B, D), b (B, D), is_positive (B,))``.
* ``distributed``: how it runs under ``torch.distributed``. ``"gather"``: it takes
  ``gather_distributed=True`` (local rows against the gathered columns, exact global-batch
  gradients); ``"local"``: a mean of per-example terms, already exact when DDP averages the
  ranks' gradients; ``"global_batch"``: it needs every row at once (batch statistics, in-batch
  mining), so :class:`contrastkit.distributed.GlobalBatchLoss` gathers its inputs.
* ``takes_negatives``: ``forward(query, key, negatives, *, ignore_mask=...)`` accepts extra
  negatives and an ignore mask (queues, hard negatives, false-negative masks).

>>> "info_nce" in list_losses()
True
>>> create_loss("info_nce", temperature=0.1)
InfoNCE(temperature=0.1, metric='cosine', symmetric=False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from contrastkit.registry import Registry

LOSSES: Registry[Any] = Registry("loss")
register = LOSSES.register


def list_losses(pattern: str = "*") -> list[str]:
    """Registered loss names matching a shell-style pattern."""
    return LOSSES.list(pattern)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss module by name."""
    return LOSSES.create(name, **kwargs)


INPUTS = ("pair", "labelled", "prediction", "scores", "pair_labels")
DISTRIBUTED = ("gather", "local", "global_batch")


@dataclass(frozen=True)
class LossSpec:
    """How a registered loss is called (see the module docstring)."""

    inputs: str
    distributed: str
    takes_negatives: bool = False
    momentum_teacher: bool = False


def loss_spec(name: str) -> LossSpec:
    """The declared calling convention of loss ``name``.

    >>> loss_spec("info_nce")
    LossSpec(inputs='pair', distributed='gather', takes_negatives=True, momentum_teacher=False)
    >>> loss_spec("supcon").inputs
    'labelled'
    """
    cls = LOSSES.get(name)
    spec = LossSpec(
        inputs=getattr(cls, "inputs", ""),
        distributed=getattr(cls, "distributed", ""),
        takes_negatives=bool(getattr(cls, "takes_negatives", False)),
        momentum_teacher=bool(getattr(cls, "momentum_teacher", False)),
    )
    if spec.inputs not in INPUTS or spec.distributed not in DISTRIBUTED:
        raise TypeError(
            f"loss {name!r} ({cls.__name__}) must declare inputs in {INPUTS} and distributed in "
            f"{DISTRIBUTED} as class attributes, got {spec.inputs!r} / {spec.distributed!r}."
        )
    return spec
