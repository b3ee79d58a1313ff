"""The loss registry: configs name losses, tests iterate them, and every loss declares how it is
called, so the trainer never dispatches on loss names.

Each registered loss class sets three class attributes (read back with :func:`loss_spec`):

* ``inputs``: what ``forward`` takes. ``"pair"``: two row-aligned embedding batches
  ``(query (B, D), key (B, D))``; ``"labelled"``: ``(embeddings (N, D), labels (N,))``;
  ``"prediction"``: ``(prediction1, prediction2, target1, target2)`` (BYOL / SimSiam: a predictor
  on the online branch); ``"scores"``: ``(chosen_scores (B,), rejected_scores (B,))``;
  ``"pair_labels"``: ``(a (B, D), b (B, D), is_positive (B,))``; ``"graded"``: ``(query (B, D),
  key (B, D), scores (B,))`` (gold similarity of each pair: CoSENT, AnglE);
  ``"teacher_scores"``: ``(query (B, D), key (B, D), negatives (B, M, D), teacher_scores
  (B, 1 + M), *, mask)`` (distillation); ``"pointwise"``: ``(logits (N,), labels (N,))`` and
  ``"listwise"``: ``(logits (B, 1 + M), *, mask)`` (cross-encoder scores).
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

A loss's defaults are declared once, by its constructor's signature; :func:`loss_defaults` reads
them back (the trainer starts a learnable temperature there) and :func:`check_loss_params`
checks a config's parameters against it before any data is read.
"""

from __future__ import annotations

import difflib
import inspect
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


INPUTS = (
    "pair",
    "labelled",
    "prediction",
    "scores",
    "pair_labels",
    "graded",
    "teacher_scores",
    "pointwise",
    "listwise",
)
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


# Set by the trainer, never by a config (see train/run.py build_loss).
TRAINER_PARAMS = frozenset({"gather_distributed"})


def _parameters(name: str) -> dict[str, inspect.Parameter]:
    """The constructor parameters of loss ``name``; a constructor that only forwards
    ``*args, **kwargs`` to its base class (BYOL) declares its base's."""
    cls = LOSSES.get(name)
    for klass in getattr(cls, "__mro__", (cls,)):
        init = klass.__dict__.get("__init__") if isinstance(klass, type) else klass
        if init is None:
            continue
        params = dict(inspect.signature(init).parameters)
        params.pop("self", None)
        forwards = {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}
        if not all(p.kind in forwards for p in params.values()) or not params:
            return params
    return {}


def loss_defaults(name: str) -> dict[str, Any]:
    """The keyword parameters of loss ``name`` and their defaults (required ones left out).

    >>> loss_defaults("nt_xent")["temperature"], loss_defaults("supcon")["temperature"]
    (0.5, 0.1)
    """
    return {
        p.name: p.default
        for p in _parameters(name).values()
        if p.default is not inspect.Parameter.empty and p.name not in TRAINER_PARAMS
    }


def check_loss_params(name: str, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming each parameter that loss ``name`` does not take, with the
    closest accepted names and the full list.

    >>> check_loss_params("info_nce", {"temperature": 0.1})
    >>> check_loss_params("info_nce", {"temprature": 0.1})
    Traceback (most recent call last):
    ...
    ValueError: info_nce takes no parameter 'temprature'. Did you mean 'temperature'? Accepted: \
temperature, metric, symmetric, collective.
    """
    accepted = [p for p in _parameters(name) if p not in TRAINER_PARAMS]
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=2)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"{name} takes no parameter {key!r}.{hint} Accepted: {', '.join(accepted)}."
            )
