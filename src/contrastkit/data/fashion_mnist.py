"""Fashion-MNIST from the original IDX files, and scikit-learn's digits for fast tests.

Fashion-MNIST (Xiao et al. 2017, https://arxiv.org/abs/1708.07747): 60,000 train + 10,000 test
grayscale 28x28 images of 10 clothing classes. The Debian package ``dataset-fashion-mnist``
installs the original gzipped IDX files in ``/usr/share/datasets/fashion-mnist``; they are
parsed with numpy in well under a second, nothing is cached.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from contrastkit.data._common import ImageDataset, check_split, missing, select_split

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILES = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (``.gz`` or raw) into a uint8 array of its declared shape.

    IDX: 2 zero bytes, a type byte (0x08 = uint8), a rank byte, then rank big-endian int32 dims.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (bad magic {raw[:4]!r}).")
    rank = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=rank, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {tuple(dims)}, got {data.size} bytes.")
    return data.reshape(tuple(dims))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise missing(f"Fashion-MNIST file {stem}(.gz)", root, "dataset-fashion-mnist", "root")


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST's official ``split`` ("train": 60,000, "test": 10,000, "all": 70,000).

    Returns an :class:`ImageDataset` with ``images: (N, 1, 28, 28)`` uint8 and
    ``labels: (N,)`` in 0..9 (names in ``classes``); ``groups`` is the row index (every image is
    its own group; the official split is image-disjoint).

    >>> ds = load_fashion_mnist("test")
    >>> ds.images.shape, ds.classes[9]
    (torch.Size([10000, 1, 28, 28]), 'Ankle boot')
    """
    check_split(split)
    root = Path(root) if root is not None else DEFAULT_ROOT
    if not root.is_dir():
        raise missing("Fashion-MNIST directory", root, "dataset-fashion-mnist", "root")
    parts = ["train", "test"] if split == "all" else [split]
    images, labels = [], []
    for part in parts:
        stem = _FILES[part]
        x = read_idx(_find(root, f"{stem}-images-idx3-ubyte"))
        y = read_idx(_find(root, f"{stem}-labels-idx1-ubyte"))
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{part}: {x.shape[0]} images but {y.shape[0]} labels under {root}.")
        images.append(torch.from_numpy(x.copy()).unsqueeze(1))  # (N, 1, 28, 28)
        labels.append(torch.from_numpy(y.astype(np.int64)))
    return ImageDataset(torch.cat(images), torch.cat(labels), list(CLASSES))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) intensities 0..16 and (1797,) targets from scikit-learn's bundled CSV.

    The CSV is read straight from the installed wheel (importing ``sklearn.datasets`` costs
    seconds); if its layout changes, ``sklearn.datasets.load_digits`` is used instead.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)  # (1797, 65)
        if table.shape == (1797, 65):
            return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.images, bunch.target


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits (fast tests), split by image with a seeded hash.

    ``images: (N, 1, 8, 8)`` uint8 (the 0..16 intensities scaled to 0..255),
    ``labels: (N,)`` in 0..9.

    >>> ds = load_digits("all")
    >>> ds.images.shape, int(ds.images.max()), ds.classes[:3]
    (torch.Size([1797, 1, 8, 8]), 255, ['0', '1', '2'])
    >>> len(load_digits("train")) + len(load_digits("test"))
    1797
    """
    check_split(split)
    images, target = _digits_arrays()
    pixels = np.round(images * (255.0 / 16.0)).astype(np.uint8)
    data = ImageDataset(
        torch.from_numpy(pixels).unsqueeze(1),  # (N, 1, 8, 8)
        torch.from_numpy(target.astype(np.int64)),
        [str(c) for c in range(10)],
    )
    keys = [str(i) for i in range(len(data))]
    return select_split(data, keys, split, test_fraction, seed)
