"""The one place the web service touches a run: a thin adapter over the run's task.

The app only sees an :class:`Embedder` (what queries it takes, how to embed them, the corpus
images for thumbnails), so a change in how runs are read touches :meth:`Embedder.from_run` alone.

Shapes: ``texts`` N strings -> (N, D) float32; ``images: (N, C, H, W)`` float in [0, 1] ->
(N, D) float32; ``thumbnails``: N_corpus images (C, H, W) in [0, 1], indexed like the index positions.
"""

from __future__ import annotations

import copy
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
        kinds: the query kinds the model embeds, ``("image",)``, ``("text",)`` or both; ``()``
            for a cross-encoder run, which embeds nothing (served with ``rerank`` and no index).
        embed_texts: N texts -> (N, D) float32, or None when ``"text"`` is not in ``kinds``.
        embed_images: (N, C, H, W) in [0, 1] -> (N, D) float32, or None without ``"image"``.
        image_shape: (C, H, W) uploads are decoded and resized to (None for text-only models).
        thumbnails: the corpus images, (C, H, W) each, for ``/thumb/{position}``, or None when the
            corpus is text (the index metadata then carries the snippets).
        count_tokens: N texts -> N token counts with the model's own tokenizer (the
            ``usage`` of ``/v1/embeddings`` and the request token budget); None: whitespace
            words are counted instead.
        max_tokens: the longest text the model reads, in tokens (longer ones are truncated;
            TEI's ``truncate: false`` refuses them); None when unknown.
        trained_dims: the widths a Matryoshka-trained run was trained at
            (``loss.matryoshka_dims``; ``dimensions`` of ``/v1/embeddings``); None otherwise.
        rerank: ``(query, texts) -> (N,)`` relevance scores, for a run that is or has a
            cross-encoder (``POST /rerank``); None otherwise. Built from the task's
            ``rerank_scores(query: str, texts: list[str]) -> Tensor (N,)`` when it has one.
        embed_audio: ``(waveform (N, S), mask (N, S)) -> (N, D)`` float32 for a run with
            ``"audio"`` among its kinds (the task's ``embed_audio``); None otherwise.
        sample_rate: the rate in Hz audio queries are resampled to (audio runs only).
        clip_samples: S, the samples an audio query is cropped or padded to (audio runs only).
        clip_path: index position -> the corpus clip's file (``/audio/{position}``), for a run
            whose corpus is audio files; None otherwise.
        n_clips: the number of corpus clips ``clip_path`` answers (positions 0..n_clips-1).

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
    count_tokens: Callable[[list[str]], list[int]] | None = None
    max_tokens: int | None = None
    trained_dims: tuple[int, ...] | None = None
    rerank: Callable[[str, list[str]], Tensor] | None = None
    embed_audio: Callable[[Tensor, Tensor], Tensor] | None = None
    sample_rate: int | None = None
    clip_samples: int | None = None
    clip_path: Callable[[int], Path] | None = None
    n_clips: int = 0

    def tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text: the model tokenizer's count (special tokens included), else
        whitespace words.

        >>> Embedder("toy", ("text",)).tokens(["two words", "one"])
        [2, 1]
        """
        if self.count_tokens is not None:
            return [int(n) for n in self.count_tokens(texts)]
        return [max(1, len(text.split())) for text in texts]

    def embed(self, kind: str, items: list[str] | Tensor) -> Tensor:
        """Embed a batch of one kind: texts (list of N str), images (N, C, H, W) or audio (list
        of N ``(clip (S,), mask (S,))``) -> (N, D)."""
        fns = {"text": self.embed_texts, "image": self.embed_images, "audio": self.embed_audio}
        fn = fns.get(kind)
        if kind not in self.kinds or fn is None:
            raise ValueError(
                f"kind {kind!r}: this model embeds {', '.join(self.kinds)} queries only."
            )
        with torch.inference_mode():
            if kind == "audio":
                waves = torch.stack([clip for clip, _ in items])  # (N, S)
                masks = torch.stack([mask for _, mask in items])  # (N, S)
                out = self.embed_audio(waves, masks)  # type: ignore[misc]
            else:
                out = fn(items)  # type: ignore[operator]
        return out.detach().to("cpu", torch.float32)

    @classmethod
    def from_run(cls, run: str | os.PathLike) -> Embedder:
        """Adapt a run folder (read through ``contrastkit.train.run.load_run``): only members
        of the task protocol (:class:`contrastkit.train.tasks.Task`)."""
        from contrastkit.train.run import load_run

        cfg, task, _ = load_run(run)
        kinds = tuple(task.query_kinds)
        rerank_scores = getattr(task, "rerank_scores", None)
        reads_text = "text" in kinds or callable(rerank_scores)  # a cross-encoder reads texts
        tokenizer, max_tokens = _text_tokenizer(task) if reads_text else (None, None)
        dims = getattr(getattr(cfg, "loss", None), "matryoshka_dims", None)
        hears = "audio" in kinds
        clip_path = getattr(task, "corpus_clip_path", None)
        return cls(
            name=str(getattr(cfg, "name", Path(run).name)),
            kinds=kinds,
            embed_texts=(lambda t: task.embed_texts(t, side="query")) if "text" in kinds else None,
            embed_images=task.embed_images if "image" in kinds else None,
            image_shape=task.image_shape if "image" in kinds else None,
            thumbnails=task.corpus_items(),
            count_tokens=(
                (lambda t: [len(ids) for ids in tokenizer(t, truncation=False)["input_ids"]])
                if tokenizer is not None
                else None
            ),
            max_tokens=max_tokens,
            trained_dims=tuple(int(d) for d in dims) if dims else None,
            rerank=rerank_scores if callable(rerank_scores) else None,
            embed_audio=task.embed_audio if hears else None,
            sample_rate=int(task.sample_rate) if hears else None,
            clip_samples=int(task.clip_samples) if hears else None,
            clip_path=clip_path if callable(clip_path) else None,
            n_clips=int(task.corpus_size()) if callable(clip_path) else 0,
        )


def _text_tokenizer(task: object) -> tuple[object | None, int | None]:
    """The tokenizer and ``max_length`` of the first text encoder in the task's model (a
    :class:`contrastkit.encoders.text.TextEncoder` holds both), or (None, None)."""
    model = getattr(task, "model", None)
    for module in model.modules() if isinstance(model, torch.nn.Module) else ():
        tokenizer = getattr(module, "tokenizer", None)
        if callable(tokenizer):
            length = getattr(module, "max_length", None)
            # a copy: counting runs on the event loop while the model thread encodes, and a
            # fast tokenizer shared by two threads that set truncation differently fails
            # ("Already borrowed")
            return copy.deepcopy(tokenizer), int(length) if isinstance(length, int) else None
    return None, None
