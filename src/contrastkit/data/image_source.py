"""Image sources for training and evaluation: a loaded dataset in memory, or a folder streamed
from disk, behind one small interface (what the image tasks and the image-text task share).

Both give float images in [0, 1]: ``read(rows)`` (a batch, with the rows actually read and the
count of unreadable files), ``batches()`` / ``rows(start, stop)`` / ``head(n)`` / ``item(i)`` in
row order (an unreadable file becomes a blank image, so positions stay rows), ``pixels()`` for
the raw-pixel baseline, and ``labels``, ``classes``, ``texts`` (captions or None),
``image_shape``.

>>> import torch
>>> from contrastkit.data import ImageDataset
>>> src = MemoryImages(ImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0]), ["a", "b"]).float())
>>> src.image_shape, len(src), src.read(torch.tensor([2, 0]))[1].tolist()
((1, 4, 4), 3, [2, 0])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from contrastkit.data.sources import IMAGE_SOURCES, load_source, root_required
from contrastkit.errors import ArgumentError


class MemoryImages:
    """A loaded :class:`~contrastkit.data.ImageDataset` (float images in [0, 1])."""

    def __init__(self, ds: Any) -> None:
        self.ds, self.labels, self.classes = ds, ds.labels, list(ds.classes)
        self.texts: list[str] | None = ds.texts

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.ds.images.shape[1:]
        return int(c), int(h), int(w)

    def read(self, rows: Tensor) -> tuple[Tensor, Tensor, int]:
        """(images (B, C, H, W) float, the rows, files skipped)."""
        return self.ds.images[rows], rows, 0

    def batches(self, size: int = 2048) -> Iterator[tuple[Tensor, Tensor]]:
        """(images, rows) chunks of the whole set, in order."""
        for i in range(0, len(self.ds), size):
            yield self.ds.images[i : i + size], torch.arange(i, min(i + size, len(self.ds)))

    def item(self, i: int) -> Tensor:
        return self.ds.images[i]

    def pixels(self) -> tuple[Tensor, Tensor] | None:
        """(flattened images (N, C*H*W), rows) for the raw-pixel baseline."""
        return self.ds.images.flatten(1), torch.arange(len(self.ds))

    def head(self, n: int) -> Tensor:
        """The first ``n`` images (N, C, H, W)."""
        return self.ds.images[:n]

    def rows(self, start: int, stop: int) -> Tensor:
        """Images ``start:stop`` (N, C, H, W)."""
        return self.ds.images[start:stop]


class FolderImages:
    """An :class:`~contrastkit.data.ImageFiles` split streamed from disk by ``workers``
    processes. A file that does not decode is skipped, counted, and its place in the batch
    taken by a readable row of the same batch (every process keeps its batch size)."""

    MAX_PIXELS = 2.5e8  # the raw-pixel baseline holds all pixels: skip it above this

    def __init__(self, files: Any, workers: int) -> None:
        from contrastkit.data.image_folder import FolderReader

        self.files, self.workers = files, workers
        self.reader = FolderReader(files, workers)
        self.labels, self.classes = files.labels, list(files.classes)
        self.texts: list[str] | None = files.texts

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(x) for x in self.files.image_shape)  # type: ignore[return-value]

    def read(self, rows: Tensor) -> tuple[Tensor, Tensor, int]:
        batch = self.reader.read(rows.tolist())
        images, index = batch["images"], batch["index"]
        if not len(index):
            raise ArgumentError(
                f"{{root}}: no file of this batch decodes ({batch['skipped_files']} skipped); "
                f"check the images under {self.files.root}.",
                "root",
            )
        if len(index) < len(rows):  # refill the places of skipped files from readable rows
            fill = torch.arange(len(rows) - len(index)) % len(index)
            images, index = torch.cat([images, images[fill]]), torch.cat([index, index[fill]])
        return images.float() / 255.0, index, int(batch["skipped_files"])

    def batches(self, size: int = 512) -> Iterator[tuple[Tensor, Tensor]]:
        """Every row in order; an unreadable file is a blank image (positions stay rows)."""
        for start in range(0, len(self.files), size):
            stop = min(start + size, len(self.files))
            yield self.rows(start, stop), torch.arange(start, stop)

    def head(self, n: int) -> Tensor:
        """The first ``n`` images (N, C, H, W)."""
        return self.rows(0, min(n, len(self.files)))

    def rows(self, start: int, stop: int) -> Tensor:
        """Images ``start:stop`` (N, C, H, W); an unreadable file is a blank image."""
        rows = torch.arange(start, min(stop, len(self.files)))
        batch = self.reader.read(rows.tolist())
        images = torch.zeros(len(rows), *self.image_shape)
        images[batch["index"] - start] = batch["images"].float() / 255.0
        return images

    def item(self, i: int) -> Tensor:
        got = self.files[int(i)]
        if not isinstance(got, dict):  # a SkippedFile: show a blank tile
            return torch.zeros(self.image_shape)
        return got["image"].float() / 255.0

    def pixels(self) -> tuple[Tensor, Tensor] | None:
        c, h, w = self.image_shape
        if len(self) * c * h * w > self.MAX_PIXELS:
            return None
        parts = list(self.batches())
        return torch.cat([x.flatten(1) for x, _ in parts]), torch.cat([r for _, r in parts])


class Items:
    """``source.item(i)`` as an indexable sequence (what the report's thumbnails index)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Tensor:
        return self.source.item(int(i))


def open_images(
    dataset: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    limit: int | None = None,
    image_size: int | None = None,
    workers: int = 0,
    seed: int = 0,
) -> MemoryImages | FolderImages:
    """The ``split`` of an image source: a packaged set (``fashion_mnist``, ``digits``, the
    first ``limit`` items) in memory, or ``image_folder`` (``root``: a folder or manifest)
    streamed from disk by ``workers`` processes at ``image_size`` (default: the first image's
    shorter side, at most 224)."""
    options = dict(options or {})
    if dataset == "image_folder":
        from contrastkit.data.image_folder import ImageFiles, first_image_size

        if not root:
            raise root_required("image_folder")
        size = image_size or first_image_size(root)
        files = ImageFiles(root, image_size=size, split=split, seed=seed, **options)
        return FolderImages(files, workers)
    ds = load_source(IMAGE_SOURCES, dataset, split, root=root, **options)
    if limit:
        ds = ds.subset(torch.arange(min(limit, len(ds))))
    return MemoryImages(ds)
