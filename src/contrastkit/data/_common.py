"""Plain data structures every loader returns, deterministic group splits and the cache dir.

Two structures cover every source:

* :class:`ImageDataset` - ``images: (N, C, H, W)``, **uint8** in [0, 255] as loaded
  (:meth:`ImageDataset.float` gives the same dataset with float32 in [0, 1]), ``labels: (N,)`` long, ``classes``
  (label names), ``groups: (N,)`` long (what a split keeps together), and for image-text data
  ``texts`` (one caption per image).
* :class:`TextPairs` - ``query``/``positive`` lists of N strings (row i pairs with row i),
  optional ``negatives`` (N lists of strings), ``labels: (N,)`` long, ``classes``,
  ``groups: (N,)`` long (rows sharing a group are duplicates of one concept: a synset, a verse;
  mask them as false negatives) and ``ids`` (a stable string per row).

Splits are by group: a group lands in train or test by a hash of its key and the seed, so the
split is deterministic, independent of row order, and never puts one group on both sides.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

SPLITS = ("train", "test", "all")


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing; the message says what to install or pass."""


@dataclass
class ImageDataset:
    """Images with integer labels (and optional captions).

    Attributes:
        images: (N, C, H, W) uint8 in [0, 255] (every loader), or float32 in [0, 1] after
            :meth:`float`.
        labels: (N,) long class index into ``classes``.
        classes: label names.
        groups: (N,) long; rows sharing a group never straddle a train/test split.
        texts: N captions for image-text data, else ``None``.

    >>> ds = ImageDataset(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    >>> len(ds), ds.float().images.dtype, ds.float().images.max().item(), ds.groups.tolist()
    (2, torch.float32, 1.0, [0, 1])
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    groups: Tensor = field(default=None)  # type: ignore[assignment]
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(
                "images must be a (N, C, H, W) tensor, uint8 in [0, 255] or float32 in [0, 1], "
                f"got {self.images.dtype} {tuple(self.images.shape)}."
            )
        n = self.images.shape[0]
        if self.groups is None:
            self.groups = torch.arange(n)
        for name, t in (("labels", self.labels), ("groups", self.groups)):
            if t.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}.")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"texts must have {n} entries (one per image), got {len(self.texts)}.")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def float(self) -> ImageDataset:
        """The same dataset with ``images`` as float32 in [0, 1] (no copy if already float)."""
        if self.images.dtype == torch.float32:
            return self
        images = self.images.float().div_(255.0)  # (N, C, H, W)
        return ImageDataset(images, self.labels, self.classes, self.groups, self.texts)

    def subset(self, index: Tensor) -> ImageDataset:
        """Rows ``index`` (a long or bool tensor) as a new dataset."""
        idx = _as_index(index)
        texts = None if self.texts is None else [self.texts[i] for i in idx.tolist()]
        return ImageDataset(
            self.images[idx], self.labels[idx], self.classes, self.groups[idx], texts
        )


@dataclass
class TextPairs:
    """Aligned text pairs: ``query[i]`` pairs with ``positive[i]``.

    Attributes:
        query: N strings.
        positive: N strings.
        labels: (N,) long class index into ``classes`` (-1 when unlabelled).
        classes: label names (may be empty).
        groups: (N,) long; rows sharing a group are the same concept (duplicates / false
            negatives) and never straddle a train/test split.
        ids: N stable row ids (e.g. ``"n:02084071"``, ``"Genesis 1:1"``).
        negatives: N lists of hard-negative strings, or ``None``.
        scores: N lists of scores, or ``None``: ``scores[i][0]`` grades (query, positive) (a
            gold similarity, or a teacher's score), ``scores[i][1:]`` the first negatives of
            row i (a teacher's scores, ``contrastkit mine --scorer``); never more than
            1 + len(negatives[i]).

    >>> p = TextPairs(["a dog"], ["a domestic canine"])
    >>> len(p), p.labels.tolist(), p.ids
    (1, [-1], ['0'])
    """

    query: list[str]
    positive: list[str]
    labels: Tensor = field(default=None)  # type: ignore[assignment]
    classes: list[str] = field(default_factory=list)
    groups: Tensor = field(default=None)  # type: ignore[assignment]
    ids: list[str] = field(default_factory=list)
    negatives: list[list[str]] | None = None
    scores: list[list[float]] | None = None

    def __post_init__(self) -> None:
        n = len(self.query)
        if len(self.positive) != n:
            raise ValueError(
                f"query and positive must have the same length, got {n} and {len(self.positive)}."
            )
        if self.labels is None:
            self.labels = torch.full((n,), -1, dtype=torch.long)
        if self.groups is None:
            self.groups = torch.arange(n)
        if not self.ids:
            self.ids = [str(i) for i in range(n)]
        for name, t in (("labels", self.labels), ("groups", self.groups)):
            if t.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}.")
        if len(self.ids) != n:
            raise ValueError(f"ids must have {n} entries, got {len(self.ids)}.")
        if self.negatives is not None and len(self.negatives) != n:
            raise ValueError(f"negatives must have {n} entries, got {len(self.negatives)}.")
        if self.scores is not None and len(self.scores) != n:
            raise ValueError(f"scores must have {n} entries, got {len(self.scores)}.")

    def __len__(self) -> int:
        return len(self.query)

    def subset(self, index: Tensor) -> TextPairs:
        """Rows ``index`` (a long or bool tensor) as a new set of pairs."""
        rows = _as_index(index).tolist()
        return TextPairs(
            [self.query[i] for i in rows],
            [self.positive[i] for i in rows],
            self.labels[rows],
            self.classes,
            self.groups[rows],
            [self.ids[i] for i in rows],
            None if self.negatives is None else [self.negatives[i] for i in rows],
            None if self.scores is None else [self.scores[i] for i in rows],
        )


def _as_index(index: Tensor) -> Tensor:
    if index.dtype == torch.bool:
        return index.nonzero().flatten()
    return index.long()


def check_split(split: object) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    return str(split)


def check_fraction(test_fraction: object) -> float:
    if (
        not isinstance(test_fraction, (int, float))
        or isinstance(test_fraction, bool)
        or not 0.0 < test_fraction < 1.0
    ):
        raise ValueError(
            f"test_fraction must be a float in (0, 1) (e.g. 0.1), got {test_fraction!r}."
        )
    return float(test_fraction)


def held_out_mask(keys: Sequence[str], test_fraction: float = 0.1, seed: int = 0) -> Tensor:
    """A bool mask, True for rows whose group ``key`` falls in the test split.

    A key's side depends only on ``crc32(f"{seed}:{key}")``, so equal keys always land
    together, the split does not depend on row order, and it is the same on every machine.

    >>> held_out_mask(["a", "b", "a"], 0.5, seed=0).tolist()
    [False, True, False]
    """
    check_fraction(test_fraction)
    cut = int(test_fraction * 2**32)
    cache: dict[str, bool] = {}
    out = []
    for key in keys:
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = zlib.crc32(f"{seed}:{key}".encode()) < cut
        out.append(hit)
    return torch.tensor(out, dtype=torch.bool)


Data = TypeVar("Data", ImageDataset, TextPairs)


def select_split(
    data: Data, keys: Sequence[str], split: str, test_fraction: float, seed: int
) -> Data:
    """The ``split`` part of ``data`` (an ImageDataset or TextPairs), grouping rows by ``keys``."""
    check_split(split)
    if split == "all":
        return data
    mask = held_out_mask(keys, test_fraction, seed)
    return data.subset(mask if split == "test" else ~mask)


def group_ids(keys: Sequence[str]) -> Tensor:
    """Dense integer ids for string group keys, in order of first appearance: (N,) long.

    >>> group_ids(["x", "y", "x"]).tolist()
    [0, 1, 0]
    """
    table: dict[str, int] = {}
    return torch.tensor([table.setdefault(k, len(table)) for k in keys], dtype=torch.long)


def cache_dir() -> Path:
    """``$CONTRASTKIT_CACHE`` or ``$XDG_CACHE_HOME/contrastkit`` (default ``~/.cache/contrastkit``)."""
    env = os.environ.get("CONTRASTKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "contrastkit"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (:func:`contrastkit.atomic.write_bytes`),
    creating its folder first."""
    from contrastkit.atomic import write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, payload)


def write_cache(path: Path, payload: bytes) -> None:
    """:func:`atomic_write_bytes`, but an unwritable cache only warns (the data is still returned)."""
    try:
        atomic_write_bytes(path, payload)
    except OSError as err:
        warnings.warn(
            f"could not write the cache file {path} ({err}); set CONTRASTKIT_CACHE to a writable "
            "folder to avoid recomputing it.",
            stacklevel=3,
        )


def missing(what: str, path: object, debian: str | None, arg: str) -> DataNotFoundError:
    """The error for missing data: says which Debian package to install or which path to pass."""
    fix = f"install it with `sudo apt-get install -y {debian}` (or `make setup`)" if debian else ""
    alt = f"pass {arg}= pointing at your copy"
    how = f"{fix}, or {alt}" if fix else alt
    return DataNotFoundError(f"{what} not found at {path}: {how}.")


def drop_texts(pairs: TextPairs, banned: set[str]) -> TextPairs:
    """``pairs`` without the rows whose key (``positive``) is in ``banned``, and without
    ``banned`` texts among their ``negatives``."""
    keep = [r for r, text in enumerate(pairs.positive) if text not in banned]
    if len(keep) < len(pairs):
        pairs = pairs.subset(torch.tensor(keep, dtype=torch.long))
    if pairs.negatives is not None:
        pairs.negatives = [[n for n in negs if n not in banned] for negs in pairs.negatives]
    return pairs


def _has_suffix(name: str, suffixes: frozenset[str] | set[str] | tuple[str, ...]) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes


def walk_files(folder: str, suffixes: frozenset[str] | set[str] | tuple[str, ...]) -> list[str]:
    """Files under ``folder`` whose suffix is one of ``suffixes`` (recursive, hidden entries
    skipped), as sorted relative posix paths."""
    out = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(here, folder)
        for name in files:
            if _has_suffix(name, suffixes):
                out.append(name if rel == "." else f"{Path(rel).as_posix()}/{name}")
    return sorted(out)


def list_class_folder(
    root: str | os.PathLike,
    suffixes: frozenset[str] | set[str] | tuple[str, ...],
    *,
    kind: str,
    noun: str,
    empty_hint: str,
) -> tuple[list[str], list[int], list[str]]:
    """The files of a class folder (``root/<class>/...``) or a flat folder, whose suffix is one
    of ``suffixes`` (the image and audio folders' one listing rule).

    Args:
        kind: what the folder is, for the not-a-folder error ("image folder").
        noun: what the files are called in messages ("images", "audio files").
        empty_hint: the end of the empty-folder message: where to put the files.

    Returns:
        ``keys`` (sorted relative posix paths), ``labels`` (class index per file, -1 for a flat
        folder) and ``classes`` (sorted class folder names holding files; ``[]`` when flat).

    Raises:
        DataNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds no such files, or files beside class folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise missing(kind, root, None, "root")
    top = sorted(e.name for e in os.scandir(root) if e.is_file() and _has_suffix(e.name, suffixes))
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    per_class = {name: walk_files(str(root / name), suffixes) for name in subdirs}
    classes = [name for name in subdirs if per_class[name]]
    if classes and top:
        raise ValueError(
            f"root {root} has {len(top)} {noun} (e.g. {top[0]!r}) beside class folders "
            f"{classes[:3]}; move them into a class folder, or point root at a flat folder."
        )
    if classes:
        keys = [f"{name}/{rel}" for name in classes for rel in per_class[name]]
        labels = [label for label, name in enumerate(classes) for _ in per_class[name]]
        return keys, labels, classes
    if not top:
        listed = ", ".join(sorted(s.lstrip(".") for s in suffixes))
        raise ValueError(
            f"root {root} is empty: no class folders and no {noun} ({listed}); {empty_hint}"
        )
    return top, [-1] * len(top), []
