"""Datasets, pair files and views (augmentations).

Every loader returns one of two plain structures (see ``docs/data.md``):
:class:`ImageDataset` (``images: (N, C, H, W)`` uint8, ``labels``, ``groups``, optional
``texts``) or :class:`TextPairs` (``query``/``positive`` strings, ``labels``, ``groups``, ``ids``,
optional ``negatives``). Splits are deterministic and disjoint by group. A user's image folder
or manifest streams from disk through :class:`ImageFiles` and :func:`image_folder_loader`.
"""

from contrastkit.data._common import (
    DataNotFoundError,
    ImageDataset,
    TextPairs,
    cache_dir,
    group_ids,
    held_out_mask,
)
from contrastkit.data.beir import BeirData, export_beir, load_beir, load_beir_pairs
from contrastkit.data.bible import load_bible_pairs
from contrastkit.data.emoji import load_emoji
from contrastkit.data.fashion_mnist import load_digits, load_fashion_mnist
from contrastkit.data.files import PairFileError, load_image_folder, load_pairs
from contrastkit.data.foldoc import load_foldoc
from contrastkit.data.hf import load_hf_pairs
from contrastkit.data.image_folder import (
    ImageFiles,
    SkippedFile,
    image_batches,
    image_folder_loader,
)
from contrastkit.data.views import SimCLRViews
from contrastkit.data.wordnet import LEXNAMES, load_wordnet

__all__ = [
    "LEXNAMES",
    "BeirData",
    "DataNotFoundError",
    "ImageDataset",
    "ImageFiles",
    "PairFileError",
    "SimCLRViews",
    "SkippedFile",
    "TextPairs",
    "cache_dir",
    "export_beir",
    "group_ids",
    "held_out_mask",
    "image_batches",
    "image_folder_loader",
    "load_beir",
    "load_beir_pairs",
    "load_bible_pairs",
    "load_digits",
    "load_emoji",
    "load_fashion_mnist",
    "load_foldoc",
    "load_hf_pairs",
    "load_image_folder",
    "load_pairs",
    "load_wordnet",
]
