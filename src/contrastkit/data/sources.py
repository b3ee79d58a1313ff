"""Named data sources: the ``data.dataset`` names a config can use, mapped to the loaders.

>>> sorted(IMAGE_SOURCES)
['digits', 'emoji', 'fashion_mnist']
>>> sorted(TEXT_PAIR_SOURCES)
['beir', 'bible', 'hf', 'pairs_file', 'wordnet', 'wordnet_preference']
>>> sorted(AUDIO_SOURCES)
['audio_folder', 'speech']
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from contrastkit.data._common import ImageDataset, TextPairs
from contrastkit.errors import ArgumentError

ROOT_REQUIRED: dict[str, str] = {
    "pairs_file": "the .jsonl/.csv/.parquet file",
    "beir": "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), e.g. one written "
    "by `contrastkit data export-beir wordnet DIR`",
    "hf": "a datasets.save_to_disk folder or local .jsonl/.csv/.parquet data files",
    "image_folder": "a folder of class folders, a flat folder of images, or a CSV/Parquet "
    "manifest with a path column",
    "audio_folder": "a folder of class folders, a flat folder of audio files, or a "
    "CSV/JSONL/Parquet manifest with path (and text, label, speaker) columns",
}
"""The sources that read the user's own files, and what their ``root`` must be (a config can
check it before any data is read)."""


def root_required(dataset: str) -> ArgumentError:
    """The error for source ``dataset`` loaded without its ``root``.

    >>> str(root_required("pairs_file"))
    "dataset='pairs_file' needs root: the .jsonl/.csv/.parquet file."
    """
    return ArgumentError(
        f"{{dataset}}={dataset!r} needs {{root}}: {ROOT_REQUIRED[dataset]}.", "root", "dataset"
    )


def _fashion_mnist(split: str, root: str | os.PathLike | None = None, **opts: Any) -> ImageDataset:
    from contrastkit.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(split, root, **opts).float()


def _digits(split: str, root: str | os.PathLike | None = None, **opts: Any) -> ImageDataset:
    from contrastkit.data.fashion_mnist import load_digits

    return load_digits(split, **opts).float()


def _emoji(split: str, root: str | os.PathLike | None = None, **opts: Any) -> ImageDataset:
    from contrastkit.data.emoji import load_emoji

    return load_emoji(split=split, **opts).float()


def _wordnet(split: str, root: str | os.PathLike | None = None, **opts: Any) -> TextPairs:
    from contrastkit.data.wordnet import load_wordnet

    return load_wordnet(split=split, root=root, **opts)


def _bible(split: str, root: str | os.PathLike | None = None, **opts: Any) -> TextPairs:
    from contrastkit.data.bible import load_bible_pairs

    return load_bible_pairs(split=split, **opts)


def _pairs_file(split: str, root: str | os.PathLike | None = None, **opts: Any) -> TextPairs:
    from contrastkit.data.files import load_pairs

    if not root:
        raise root_required("pairs_file")
    return load_pairs(root, split=split, **opts)


def _beir(
    split: str,
    root: str | os.PathLike | None = None,
    train_split: str = "train",
    test_split: str = "test",
    **opts: Any,
) -> TextPairs:
    from contrastkit.data.beir import load_beir_pairs

    if not root:
        raise root_required("beir")
    return load_beir_pairs(root, train_split if split == "train" else test_split, **opts)


def _hf(split: str, root: str | os.PathLike | None = None, **opts: Any) -> TextPairs:
    from contrastkit.data.hf import load_hf_pairs

    if not root:
        raise root_required("hf")
    return load_hf_pairs(root, split=split, **opts)


# ``loader(split, root=None, **options)``: images as float32 in [0, 1]
IMAGE_SOURCES: dict[str, Callable[..., ImageDataset]] = {
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
    "emoji": _emoji,  # with captions: the image-text task
}
TEXT_PAIR_SOURCES: dict[str, Callable[..., TextPairs]] = {
    "wordnet": _wordnet,
    "wordnet_preference": _wordnet,
    "bible": _bible,
    "pairs_file": _pairs_file,
    "beir": _beir,
    "hf": _hf,
}


def _audio_folder(split: str, root: str | os.PathLike | None = None, **opts: Any) -> Any:
    from contrastkit.data.audio_folder import AudioFiles

    if not root:
        raise root_required("audio_folder")
    return AudioFiles(root, split=split, **opts)


def _speech(split: str, root: str | os.PathLike | None = None, **opts: Any) -> Any:
    from contrastkit.data.speech import load_speech

    return load_speech(split, **opts)


# ``loader(split, root=None, **options)`` -> an AudioFiles (clips decoded on access; options:
# sample_rate, clip_seconds, crop, test_fraction, seed, and the source's own)
AUDIO_SOURCES: dict[str, Callable[..., Any]] = {
    "audio_folder": _audio_folder,  # the user's folder or manifest (root)
    "speech": _speech,  # the packaged espeak-ng corpus
}


def load_source(table: dict[str, Callable[..., Any]], name: str, split: str, **kw: Any) -> Any:
    """Load ``split`` of source ``name`` from ``table``; a clear error for an unknown name.

    Errors about the source's arguments are :class:`~contrastkit.errors.ArgumentError` naming
    them as the loaders do (``dataset`` for ``name``, ``root``); an application restates them
    in its own keys (:func:`contrastkit.errors.restate`)."""
    if name not in table:
        raise ArgumentError(
            f"{{dataset}}={name!r} is not available here; allowed: {', '.join(table)}.", "dataset"
        )
    return table[name](split, **kw)
