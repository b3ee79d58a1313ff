"""The one place the web service touches a run: a thin adapter over the run's task.

The app only sees an :class:`Embedder` (what queries it takes, how to embed them, the corpus
images for thumbnails), so a change in how runs are read touches :meth:`Embedder.from_run` alone.

Shapes: ``texts`` N strings -> (N, D) float32; ``images: (N, C, H, W)`` float in [0, 1] ->
(N, D) float32; ``thumbnails``: N_corpus images (C, H, W) in [0, 1], indexed like the index positions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Embedder"]


@dataclass
class Embedder:
    """What the service needs from a model.

    Attributes:
        name: shown by ``/health`` (the run's config name).
        kinds: the query kinds the model embeds, ``("image",)``, ``("text",)`` or both.
        embed_texts: N texts -> (N, D) float32, or None when ``"text"`` is not in ``kinds``.
        embed_images: (N, C, H, W) in [0, 1] -> (N, D) float32, or None without ``"image"``.
        image_shape: (C, H, W) uploads are decoded and resized to (None for text-only models).
        thumbnails: the corpus images, (C, H, W) each, for ``/thumb/{position}``, or None when the
            corpus is text (the index metadata then carries the snippets).

    >>> e = Embedder("toy", ("text",), embed_texts=lambda t: torch.ones(len(t), 4))
    >>> e.embed("text", ["a", "b"]).shape
    torch.Size([2, 4])
    """

    name: str
    kinds: tuple[str, ...]
    embed_texts: Callable[[list[str]], Tensor] | None = None
    embed_images: Callable[[Tensor], Tensor] | None = None
    image_shape: tuple[int, int, int] | None = None
    thumbnails: Sequence[Tensor] | None = None

    def embed(self, kind: str, items: list[str] | Tensor) -> Tensor:
        """Embed a batch of one kind: texts (list of N str) or images (N, C, H, W) -> (N, D)."""
        fn = self.embed_texts if kind == "text" else self.embed_images
        if kind not in self.kinds or fn is None:
            raise ValueError(
                f"kind {kind!r}: this model embeds {', '.join(self.kinds)} queries only."
            )
        with torch.inference_mode():
            out = fn(items)  # type: ignore[arg-type]
        return out.detach().to("cpu", torch.float32)

    @classmethod
    def from_run(cls, run: str | os.PathLike) -> Embedder:
        """Adapt a run folder (read through ``contrastkit.train.run.load_run``): only members
        of the task protocol (:class:`contrastkit.train.tasks.Task`)."""
        from contrastkit.train.run import load_run

        cfg, task, _ = load_run(run)
        kinds = tuple(task.query_kinds)
        return cls(
            name=str(getattr(cfg, "name", Path(run).name)),
            kinds=kinds,
            embed_texts=(lambda t: task.embed_texts(t, side="query")) if "text" in kinds else None,
            embed_images=task.embed_images if "image" in kinds else None,
            image_shape=task.image_shape if "image" in kinds else None,
            thumbnails=task.corpus_items(),
        )
