"""Gradient caching: a contrastive step over a batch larger than fits through the encoder.

GradCache (Gao et al. 2021, https://arxiv.org/abs/2101.06983) splits the step in three:

1. embed every chunk of the batch **without** a graph (memory of one chunk's activations);
2. compute the loss on the full batch of embeddings and its gradient with respect to the
   embeddings (the "cached" gradients, memory of B x D);
3. re-run each chunk **with** its graph and backpropagate its slice of the cached gradients.

Because the loss only sees the encoder through the embeddings, the chain rule makes the encoder
gradients identical to those of the plain full-batch step, as long as step 3 reproduces step 1
exactly: the RNG state (CPU and CUDA generators) is saved before each chunk in step 1 and replayed
in step 3, so dropout draws the same masks. Under DDP every chunk but the encoder's last runs in
``no_sync()`` so gradients are all-reduced once. Autocast applies if the caller enables it
around the call; pass a ``GradScaler`` as ``scaler`` to scale the loss.

Peak memory is one chunk's activations plus the B x D embeddings, instead of the activations of
the whole batch (see ``benchmarks/bench_scaling.py``).

The encoder must treat examples independently (LayerNorm transformers, MLPs, CNNs in eval-mode
BatchNorm): a train-mode BatchNorm normalises per chunk, not per batch, and updates its running
statistics in both passes.

>>> import torch
>>> from torch import nn
>>> from contrastkit.functional import info_nce
>>> enc = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 4))
>>> x_q, x_k = torch.randn(32, 8), torch.randn(32, 8)
>>> loss = grad_cache_step(enc, (x_q, x_k), lambda q, k: info_nce(q, k, temperature=0.1),
...                        chunk_size=8)
>>> loss.shape, enc[0].weight.grad is not None
(torch.Size([]), True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GradCache", "grad_cache_step"]

Batch = Any  # a Tensor (B, ...), or a dict / list / tuple of tensors sharing dim 0


def _batch_size(name: str, batch: Batch) -> int:
    if isinstance(batch, Tensor):
        if batch.ndim == 0:
            raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor.")
        return batch.shape[0]
    if isinstance(batch, Mapping):
        sizes = {k: _batch_size(f"{name}[{k!r}]", v) for k, v in batch.items() if _splittable(v)}
    elif isinstance(batch, (list, tuple)):
        sizes = {i: _batch_size(f"{name}[{i}]", v) for i, v in enumerate(batch) if _splittable(v)}
    else:
        raise TypeError(
            f"{name} must be a Tensor or a dict/list/tuple of tensors, got {type(batch).__name__}."
        )
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(
            f"{name} must hold tensors that share their first (batch) dimension, got sizes {sizes}."
        )
    return next(iter(sizes.values()))


def _splittable(x: object) -> bool:
    return isinstance(x, (Tensor, Mapping, list, tuple))


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    if isinstance(batch, Tensor):
        return batch[start:stop]
    if isinstance(batch, Mapping):
        return {k: _slice(v, start, stop) if _splittable(v) else v for k, v in batch.items()}
    return type(batch)(_slice(v, start, stop) if _splittable(v) else v for v in batch)


def _call(encoder: Callable[..., Tensor], chunk: Batch) -> Tensor:
    out = encoder(**chunk) if isinstance(chunk, Mapping) else encoder(chunk)
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the encoder must return a Tensor of embeddings (B, D), got {type(out).__name__}; "
            "wrap it, e.g. lambda x: model(x).pooler_output."
        )
    return out


def _has_trainable_parameters(encoder: Callable[..., Tensor]) -> bool:
    """False for a module whose parameters are all frozen; True for any other callable."""
    if isinstance(encoder, nn.Module):
        return any(p.requires_grad for p in encoder.parameters())
    return True


class _RngState:
    """CPU and (when initialised) CUDA generator states, captured and restored."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def grad_cache_step(
    encoders: Callable[..., Tensor] | Sequence[Callable[..., Tensor]],
    inputs: Sequence[Batch],
    loss_fn: Callable[..., Tensor],
    *,
    chunk_size: int,
    scaler: Any = None,
) -> Tensor:
    """One gradient-cached step: accumulate into ``.grad`` exactly what ``loss.backward()`` of the
    plain full-batch step would.

    Args:
        encoders: one callable (shared by all inputs, e.g. a bi-encoder with tied weights) or one
            per input (e.g. a query and a document tower). Each maps a chunk to (C, D). A module
            without trainable parameters (a :class:`~contrastkit.encoders.MomentumEncoder`) is
            run once, without the second pass.
        inputs: one batch per encoder call, e.g. ``(query_batch, key_batch)``; a batch is a
            Tensor (B, ...) or a dict/list/tuple of tensors split along dim 0 (a dict is passed as
            keyword arguments, e.g. a tokenizer's output).
        loss_fn: ``loss_fn(*embeddings) -> scalar``, called once on the full-batch embeddings
            (B_i, D) of each input; it may hold parameters (a learnable temperature) that then
            get their gradient too.
        chunk_size: rows per encoder call (> 0); the last chunk may be smaller.
        scaler: optional ``torch.amp.GradScaler``; the loss is scaled before the backward.

    Returns:
        The loss, detached (gradients are already in ``.grad``). Call the optimiser next.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(
            f"chunk_size must be an int > 0 (rows per encoder call), got {chunk_size!r}."
        )
    if isinstance(inputs, (Tensor, Mapping)) or not isinstance(inputs, Sequence) or not inputs:
        raise TypeError(
            "inputs must be a non-empty sequence with one batch per encoder call, e.g. "
            f"(query_batch, key_batch), got {type(inputs).__name__}."
        )
    if not isinstance(encoders, (list, tuple, nn.ModuleList)):
        encoders = [encoders] * len(inputs)
    encoders = list(encoders)
    if len(encoders) != len(inputs):
        raise ValueError(
            f"encoders must be one callable or one per input: got {len(encoders)} encoders for "
            f"{len(inputs)} inputs."
        )
    sizes = [_batch_size(f"inputs[{i}]", batch) for i, batch in enumerate(inputs)]
    chunks = [[(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)] for n in sizes]

    # 1. Embed without graph, remembering the RNG state before every chunk.
    states: list[list[_RngState]] = []
    embeddings: list[Tensor] = []
    with torch.no_grad():
        for encoder, batch, spans in zip(encoders, inputs, chunks):
            states.append([])
            parts = []
            for start, stop in spans:
                states[-1].append(_RngState())
                parts.append(_call(encoder, _slice(batch, start, stop)))
            embeddings.append(torch.cat(parts, dim=0))  # (B_i, D)
    after = _RngState()

    # 2. Loss on the full batch; its gradient with respect to the embeddings is the cache.
    leaves = [e.detach().requires_grad_() for e in embeddings]
    loss = loss_fn(*leaves)
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        raise ValueError(
            "loss_fn must return a scalar tensor (use reduction='mean' or 'sum'), got "
            f"{getattr(loss, 'shape', type(loss).__name__)}."
        )
    (scaler.scale(loss) if scaler is not None else loss).backward()
    cached = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]

    # 3. Re-run each chunk with graph and the same RNG; DDP syncs only on an encoder's last chunk.
    # Frozen encoders (a momentum copy, a guide model) have nothing to backpropagate into.
    trained = [_has_trainable_parameters(enc) for enc in encoders]
    last_use = {id(enc): (i, len(chunks[i]) - 1) for i, enc in enumerate(encoders) if trained[i]}
    for i, (encoder, batch, spans) in enumerate(zip(encoders, inputs, chunks)):
        if not trained[i]:
            continue
        for j, (start, stop) in enumerate(spans):
            states[i][j].restore()
            sync = last_use[id(encoder)] == (i, j)
            no_sync = getattr(encoder, "no_sync", None)
            ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
            with ctx:
                out = _call(encoder, _slice(batch, start, stop))
                if out.requires_grad:
                    out.backward(cached[i][start:stop].to(out.dtype))
    after.restore()  # the RNG continues as after one forward pass, like the plain step
    return loss.detach()


class GradCache:
    """Stateful convenience over :func:`grad_cache_step`: encoders, loss and chunk size fixed.

    Args:
        encoders: one callable or one per input.
        loss_fn: ``loss_fn(*embeddings) -> scalar`` (e.g. an :class:`~contrastkit.losses.InfoNCE`).
        chunk_size: rows per encoder call.

    >>> enc = nn.Linear(4, 3)
    >>> from contrastkit.losses import InfoNCE
    >>> step = GradCache(enc, InfoNCE(temperature=0.1), chunk_size=2)
    >>> float(step(torch.randn(6, 4), torch.randn(6, 4))) > 0
    True
    """

    def __init__(
        self,
        encoders: Callable[..., Tensor] | Sequence[Callable[..., Tensor]],
        loss_fn: Callable[..., Tensor],
        chunk_size: int,
    ) -> None:
        self.encoders = encoders
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size

    def __call__(self, *inputs: Batch, scaler: Any = None) -> Tensor:
        return grad_cache_step(
            self.encoders, inputs, self.loss_fn, chunk_size=self.chunk_size, scaler=scaler
        )

    def __repr__(self) -> str:
        name = type(self.loss_fn).__name__ if isinstance(self.loss_fn, nn.Module) else "loss_fn"
        return f"GradCache({name}, chunk_size={self.chunk_size})"
