"""The task protocol: what the training loop, evaluation, index and report ask of a task.

A task turns a config's data into batches, embeddings and loss terms, and says how its model
is evaluated and searched. The loop calls only the methods of :class:`Task`; a task file imports
this module and the library, never another task (what two tasks share lives in the library).

Training::

    task.model                      nn.ModuleDict of the trainable (and EMA) modules
    task.num_train                  training items (what the sampler draws from)
    task.train_labels / train_groups  (N,) class labels / duplicate groups for the samplers, or None
    task.batch(indices, generator)  the batch of these items (views drawn from generator)
    task.loss_terms(batch, loss)    -> Step: named loss terms (summed) + embeddings to monitor
    task.after_step(step, total)    EMA updates (BYOL teacher, MoCo key encoder)
    task.distribute(wrap)           under torchrun: True when loss_terms runs its own backward
                                    (gradient caching) through modules it wrapped with wrap (DDP)
    task.encoder_spec               (registry name, options) of model["encoder"] (export)

Evaluation and search::

    task.baseline()                 -> EvalResult | None, before training (raw input or initial model)
    task.evaluate(quick=False)      -> EvalResult of the current model
    task.query_kinds                ("image",), ("text",) or ("text", "image")
    task.embed_texts(texts, side) / task.embed_images(images (N, C, H, W))  -> (N, D)
    task.corpus_size(); task.embed_corpus_chunk(start, stop) -> Corpus (index streaming);
    task.embed_corpus() -> Corpus; task.corpus_items(); task.examples(n); task.embed_query(q)

Shapes: B batch, D embedding dim, N corpus, C x H x W images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class EvalResult:
    """Metrics of one evaluation, and arrays the report plots.

    ``metrics`` are the quality figures (compared with the baseline in the report); ``counts``
    are sizes such as the corpus size, shown apart from them.
    """

    metrics: dict[str, float]
    name: str = "model"
    arrays: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Corpus:
    """What an index holds: embeddings (N, D) and, per item, a label/text for display."""

    embeddings: Tensor
    labels: list[str]
    items: list[Any]  # image tensors (C, H, W) or strings


@dataclass
class Step:
    """The result of one forward pass: named loss terms (their sum is minimised), the two
    embedding batches ((B, D) each, or None) that the collapse monitor reads, and counts the
    loop logs with the step (e.g. ``skipped_files`` of an image folder)."""

    terms: dict[str, Tensor]
    embeddings: tuple[Tensor, Tensor] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # logged per step (skipped files)

    @property
    def loss(self) -> Tensor:
        return sum(self.terms.values())  # type: ignore[return-value]


@runtime_checkable
class Task(Protocol):
    """The protocol every task implements (see the module docstring)."""

    name: ClassVar[str]
    query_kinds: ClassVar[tuple[str, ...]]
    model: nn.ModuleDict
    num_train: int
    train_labels: Tensor | None
    train_groups: Tensor | None

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]: ...

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step: ...

    def after_step(self, step: int, total_steps: int) -> None: ...

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> bool:
        """Under ``torchrun``, before the first step. ``False``: the loop wraps the whole step
        (task modules + loss) in one ``DistributedDataParallel``. ``True``: ``loss_terms`` runs
        the backward itself (gradient caching, whose chunked backward DDP cannot run inside its
        forward) through the modules it passed to ``wrap`` (the loop's DDP factory); the loop
        then averages the gradients of every other trainable parameter (the loss's
        temperature) across the processes itself."""
        ...

    def baseline(self) -> EvalResult | None: ...

    def evaluate(self, *, quick: bool = False) -> EvalResult: ...

    def corpus_size(self) -> int: ...

    def embed_corpus_chunk(self, start: int, stop: int) -> Corpus: ...

    def embed_corpus(self) -> Corpus: ...

    def embed_query(self, query: str) -> tuple[Tensor, Any]: ...

    def examples(self, n: int = 8) -> list[tuple[Any, str]]: ...


class BackwardAfterLossTerms:
    """:meth:`Task.distribute` of a task whose backward runs after ``loss_terms`` (every task
    without gradient caching): the loop wraps the whole step in one ``DistributedDataParallel``."""

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> bool:
        return False


@torch.no_grad()
def in_eval_mode(module: nn.Module, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with ``module`` in eval mode, its mode restored afterwards."""
    was = module.training
    module.eval()
    try:
        return fn(*args)
    finally:
        module.train(was)


def chunked(fn: Any, x: Tensor, chunk: int = 2048) -> Tensor:
    """``fn`` over ``x`` in row chunks (channels-last for images), float32, concatenated."""
    parts = []
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]
        if part.ndim == 4:
            part = part.contiguous(memory_format=torch.channels_last)
        parts.append(fn(part).float())
    return torch.cat(parts)


def check_loss_inputs(task: str, loss_name: str, inputs: str, allowed: tuple[str, ...]) -> None:
    """Raise when the loss takes inputs the task does not produce (the config checks it too)."""
    if inputs not in allowed:
        raise ValueError(
            f"loss.name={loss_name!r} takes {inputs} inputs; task: {task} calls its loss with "
            f"{' or '.join(allowed)}."
        )
