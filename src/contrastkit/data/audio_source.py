"""Audio sources for training and evaluation: one entry point for the packaged speech corpus and
a user's folder, streamed from disk by ``workers`` processes (the audio twin of
:func:`contrastkit.data.image_source.open_images`).

:func:`open_audio` returns an :class:`AudioSource`: ``len()``, ``texts`` (transcripts or None),
``labels: (N,)`` long + ``classes``, ``speakers`` (N speaker names or None) + ``speaker_ids:
(N,)`` long, ``key(i)`` / ``path(i)`` (for an index and the service), and
``read(rows, generator)`` -> ``(waves (B, L) float32, mask (B, L) bool, rows (B,), skipped)``:
a random crop per clip drawn from ``generator`` (training) or the centre window without one
(evaluation). A file that does not decode is skipped, counted, and its place taken by a
readable row of the same batch (every step keeps its batch size), as ``FolderImages`` does.
``batches(size)`` walks every row in order for embedding a split.

>>> import tempfile, os, numpy as np, soundfile, torch
>>> root = tempfile.mkdtemp()
>>> for i in range(3):
...     soundfile.write(os.path.join(root, f"{i}.wav"), np.full(400 * (i + 1), 0.1, np.float32), 8000)
>>> src = open_audio("audio_folder", "all", root=root, sample_rate=8000, clip_seconds=0.1)
>>> waves, mask, rows, skipped = src.read(torch.tensor([2, 0]))
>>> waves.shape, mask.sum(1).tolist(), rows.tolist(), skipped
(torch.Size([2, 800]), [800, 400], [2, 0], 0)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from contrastkit.data.sources import AUDIO_SOURCES, load_source
from contrastkit.errors import ArgumentError

__all__ = ["AudioSource", "open_audio"]


class AudioSource:
    """An :class:`~contrastkit.data.audio_folder.AudioFiles` (optionally its first ``limit``
    rows) read by ``workers`` processes (see the module doc)."""

    def __init__(self, files: Any, workers: int = 0, limit: int | None = None) -> None:
        from contrastkit.data.audio_folder import AudioReader

        self.files, self.workers = files, workers
        self.n = len(files) if not limit else min(int(limit), len(files))
        self.reader = AudioReader(files, workers)
        self.labels: Tensor = files.labels[: self.n]
        self.classes: list[str] = list(files.classes)
        self.speaker_ids: Tensor = files.speakers[: self.n]
        names = files.speaker_names
        self.speakers: list[str] | None = (
            [names[int(s)] if s >= 0 else "" for s in self.speaker_ids] if names else None
        )
        texts = files.texts
        self.texts: list[str] | None = None if texts is None else texts[: self.n]
        self.sample_rate: int = files.sample_rate
        self.clip_samples: int = files.clip_samples

    def __len__(self) -> int:
        return self.n

    def key(self, i: int) -> str:
        """Row ``i``'s path as listed (relative to the folder or manifest)."""
        return self.files.key(int(i))

    def path(self, i: int) -> Path:
        """Row ``i``'s file."""
        return self.files.path(int(i))

    def read(
        self, rows: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """``(waves (B, L) float32, mask (B, L) bool, rows (B,) long, skipped)`` for ``rows:
        (B,)``; random crops from ``generator``, else centre crops. Unreadable rows are replaced
        by readable rows of the batch (``rows`` says which were read)."""
        wanted = [int(r) for r in rows]
        seeds = None
        if generator is not None:
            seeds = torch.randint(0, 2**62, (len(wanted),), generator=generator).tolist()
        batch = self.reader.read(wanted, seeds)
        waves, mask, index = batch["audio"], batch["mask"], batch["index"]
        if not len(index):
            raise ArgumentError(
                f"{{root}}: no file of this batch decodes ({batch['skipped_files']} skipped, e.g. "
                f"{batch['skipped'][0][1] if batch['skipped'] else '?'}); check the audio under "
                f"{self.files.root}.",
                "root",
            )
        if len(index) < len(wanted):  # refill the places of skipped files from readable rows
            fill = torch.arange(len(wanted) - len(index)) % len(index)
            waves, mask = torch.cat([waves, waves[fill]]), torch.cat([mask, mask[fill]])
            index = torch.cat([index, index[fill]])
        return waves, mask, index, int(batch["skipped_files"])

    def batches(self, size: int = 64) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(waves (B, L), mask (B, L), rows (B,))`` over every row in order, centre crops;
        unreadable files are left out (``rows`` says which rows each batch holds)."""
        for start in range(0, self.n, size):
            batch = self.reader.read(list(range(start, min(start + size, self.n))))
            if len(batch["index"]):
                yield batch["audio"], batch["mask"], batch["index"]

    def __repr__(self) -> str:
        return f"AudioSource({self.files!r}, n={self.n}, workers={self.workers})"


def open_audio(
    dataset: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    sample_rate: int = 16000,
    clip_seconds: float | None = None,
    limit: int | None = None,
    workers: int = 0,
    seed: int = 0,
) -> AudioSource:
    """The ``split`` of audio source ``dataset`` (:data:`contrastkit.data.sources.AUDIO_SOURCES`:
    ``speech``, the packaged espeak-ng corpus, or ``audio_folder`` with ``root`` a folder or
    manifest) at ``sample_rate``, clips of ``clip_seconds`` (default: 3.0 for ``speech``, 4.0
    for a folder), the first ``limit`` rows, decoded by ``workers`` processes. ``options`` go
    to the loader (``phrases``, ``test_fraction``, ``text_column``, ...)."""
    opts = dict(options or {})
    opts.setdefault("sample_rate", sample_rate)
    opts.setdefault("seed", seed)
    if clip_seconds is not None:
        opts.setdefault("clip_seconds", clip_seconds)
    files = load_source(AUDIO_SOURCES, dataset, split, root=root, **opts)
    return AudioSource(files, workers, limit)
