"""A user's audio streamed from disk: class folders, flat folders and CSV/JSONL/Parquet manifests.

The audio twin of :mod:`contrastkit.data.image_folder` (same behaviour, same names with
``audio`` for ``image``): :class:`AudioFiles` is a ``torch.utils.data.Dataset`` that lists the
files once and decodes one clip per ``__getitem__`` inside the ``DataLoader`` worker
(:func:`contrastkit.data.audio.load_audio`: mono, resampled to ``sample_rate``, then cropped or
padded to ``clip_seconds`` with a mask). The dataset holds paths, transcripts and labels as
packed bytes, never samples, so memory stays flat in the folder's size.

Three sources:

* ``root/<class>/<file>``: labels are the sorted class folder names (files may sit deeper);
* a flat folder of audio files: no labels (``label == -1``);
* a manifest ``.csv``, ``.jsonl`` or ``.parquet`` with the columns ``path`` (relative to the
  manifest's folder, or absolute) and optionally ``text`` (the transcript or caption),
  ``label`` and ``speaker``; other names through ``path_column``, ``text_column``,
  ``label_column``, ``speaker_column``. Every row's file must exist (checked once, a missing
  one is a ``FileNotFoundError`` naming the manifest line and the path).

Common layouts, as manifests (see ``docs/audio_data.md``): Common Voice's
``validated.tsv`` (``path``, ``sentence``, ``client_id``: ``text_column="sentence"``,
``speaker_column="client_id"``, saved as CSV), LibriSpeech (one row per
``<speaker>/<chapter>/<id>.flac`` with the line of its ``.trans.txt``), AudioCaps / Clotho
(``file_name``, ``caption_1``: one row per caption).

The train/test split is by a key (:func:`contrastkit.data._common.held_out_mask`): the
transcript when there is a text column (so a held-out sentence is never heard in training,
whoever speaks it), else the relative path; ``split_by`` picks ``"text"``, ``"path"`` or
``"speaker"`` explicitly.

A file that does not decode (empty, truncated, not audio, vanished) makes ``__getitem__`` return
a :class:`~contrastkit.data.SkippedFile` instead of raising; :class:`AudioSkippingCollate` drops
and counts them (``batch["skipped_files"]``), so a bad file costs one item, never the epoch.

Shapes: B batch, L = ``round(clip_seconds * sample_rate)`` samples, N files.

>>> import tempfile, os, numpy as np, soundfile
>>> root = tempfile.mkdtemp()
>>> for i, word in enumerate(["yes", "no", "maybe"]):
...     soundfile.write(os.path.join(root, f"{i}.wav"), np.full(800, 0.1 * (i + 1), np.float32), 8000)
>>> _ = open(os.path.join(root, "bad.wav"), "w").write("not audio")
>>> with open(os.path.join(root, "manifest.csv"), "w") as fh:
...     _ = fh.write("path,text\\n0.wav,yes\\n1.wav,no\\n2.wav,maybe\\nbad.wav,oops\\n")
>>> files = AudioFiles(os.path.join(root, "manifest.csv"), sample_rate=8000, clip_seconds=0.2)
>>> len(files), files.texts[1], files.clip_samples
(4, 'no', 1600)
>>> batch = next(iter(audio_folder_loader(files, [[0, 1, 3]], workers=0)))
>>> batch["audio"].shape, batch["mask"].sum(1).tolist(), batch["texts"], batch["skipped_files"]
(torch.Size([2, 1600]), [800, 800], ['yes', 'no'], 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, default_collate

from contrastkit.data._common import check_split, held_out_mask, list_class_folder, missing
from contrastkit.data.audio import AUDIO_SUFFIXES, AudioError, crop_or_pad, load_audio
from contrastkit.data.image_folder import (
    SkippedFile,
    _encode_labels,
    _manifest_cells,
    _manifest_columns,
    decoding_loader,
)

__all__ = [
    "AUDIO_MANIFEST_SUFFIXES",
    "AudioFiles",
    "AudioReader",
    "AudioSkippingCollate",
    "audio_batches",
    "audio_folder_loader",
    "list_audio_folder",
    "read_audio_manifest",
]

AUDIO_MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
CROPS = ("center", "random")
SPLIT_KEYS = ("text", "path", "speaker")
_DEFAULT = object()  # a column used when present (a name passed explicitly must exist)


class _Strings:
    """N strings packed in one bytes buffer + offsets: forked workers share the pages instead of
    copying them as Python reference counts change (what ``ImageFiles`` does for its paths)."""

    def __init__(self, items: Sequence[str]) -> None:
        encoded = [s.encode("utf-8", "surrogateescape") for s in items]
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int64)  # (N + 1,)

    def __len__(self) -> int:
        return int(self._offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> str:
        return (
            self._blob[self._offsets[i] : self._offsets[i + 1]]
            .tobytes()
            .decode("utf-8", "surrogateescape")
        )

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]


# -- listing --------------------------------------------------------------------------------


def list_audio_folder(root: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """The audio files of a class folder (``root/<class>/...``) or a flat folder: ``keys``
    (sorted relative posix paths), ``labels`` (-1 when flat) and ``classes``.

    Raises:
        DataNotFoundError: ``root`` is not a folder.
        ValueError: no audio files, or files beside class folders.
    """
    return list_class_folder(
        root,
        AUDIO_SUFFIXES,
        kind="audio folder",
        noun="audio files",
        empty_hint="put them in root/<class>/<file> (labelled) or directly in root, or pass a "
        "manifest (.csv/.jsonl/.parquet with path and text columns).",
    )


def _jsonl_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    where, rows = [], []
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{n}: not a JSON object ({err.msg}); write one object per line."
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: not a JSON object; write one object per line.")
            where.append(f"{path}:{n}")
            rows.append(row)
    return where, rows


def read_audio_manifest(
    path: str | os.PathLike,
    path_column: str = "path",
    text_column: Any = _DEFAULT,
    label_column: Any = _DEFAULT,
    speaker_column: Any = _DEFAULT,
) -> dict[str, Any]:
    """The rows of a CSV/JSONL/Parquet audio manifest.

    ``text_column``, ``label_column`` and ``speaker_column`` default to ``"text"``, ``"label"``
    and ``"speaker"`` when such a column exists; a name passed explicitly must exist; None
    ignores the column. Returns ``{"where": ["file:line", ...], "paths": [...], "texts": [...]
    or None, "labels": [...] or None, "speakers": [...] or None}``.

    Raises:
        DataNotFoundError: no such file.
        ValueError: a named column is missing (the message lists those present), an empty path
            cell, or no rows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in AUDIO_MANIFEST_SUFFIXES:
        raise ValueError(
            f"manifest must be a {', '.join(AUDIO_MANIFEST_SUFFIXES)} file (the suffix picks the "
            f"format), got {str(path)!r}."
        )
    if not path.is_file():
        raise missing("audio manifest", path, None, "root")
    if suffix == ".jsonl":
        where, rows = _jsonl_rows(path)
        columns = list(dict.fromkeys(k for row in rows for k in row))
    else:
        columns = _manifest_columns(path)
    named: dict[str, str | None] = {"path_column": path_column}
    for arg, value, default in (
        ("text_column", text_column, "text"),
        ("label_column", label_column, "label"),
        ("speaker_column", speaker_column, "speaker"),
    ):
        named[arg] = (default if default in columns else None) if value is _DEFAULT else value
    for arg, name in named.items():
        if name is not None and name not in columns:
            raise ValueError(
                f"{path}: no column {name!r} ({arg}); columns present: "
                f"{', '.join(map(repr, columns)) or 'none'}; pass {arg}=<one of them>."
            )
    wanted = list(dict.fromkeys(n for n in named.values() if n is not None))
    if suffix == ".jsonl":
        table = {name: [row.get(name) for row in rows] for name in wanted}
    else:
        where, table = _manifest_cells(path, wanted)
    if not where:
        raise ValueError(
            f"{path}: no rows; expected a header with {path_column!r} and one row per clip."
        )
    paths = []
    for at, cell in zip(where, table[path_column]):
        if cell is None or not str(cell).strip():
            raise ValueError(f"{at}: empty {path_column!r}; every row needs an audio file path.")
        paths.append(str(cell).strip())

    def column(arg: str, blank: Any) -> list[Any] | None:
        name = named[arg]
        if name is None:
            return None
        return [blank if v is None or v == "" else v for v in table[name]]

    texts = column("text_column", "")
    return {
        "where": where,
        "paths": paths,
        "texts": None if texts is None else [str(t) for t in texts],
        "labels": column("label_column", None),
        "speakers": column("speaker_column", None),
    }


# -- the dataset ----------------------------------------------------------------------------


class AudioFiles(Dataset):
    """Audio clips listed from a folder or manifest and decoded on access (see the module doc).

    Args:
        source: a folder (``root/<class>/<file>`` or flat) or a ``.csv`` / ``.jsonl`` /
            ``.parquet`` manifest.
        sample_rate: the rate every clip is resampled to (soxr), in Hz.
        clip_seconds: L / sample_rate, the length of every returned clip (longer clips are
            cropped, shorter ones zero-padded; ``mask`` marks the real samples).
        split: ``"all"`` (default), ``"train"`` or ``"test"`` (a seeded hash of the split key).
        test_fraction: share of keys held out.
        seed: changes which keys are held out.
        split_by: ``"text"``, ``"path"`` or ``"speaker"``; default ``"text"`` when the manifest
            has transcripts, else ``"path"``.
        crop: ``"center"`` (deterministic) or ``"random"`` (drawn from the worker's torch RNG).
        path_column, text_column, label_column, speaker_column: manifest columns
            (:func:`read_audio_manifest`).

    ``ds[i]`` is ``{"audio": float32 (L,), "mask": bool (L,), "label": int, "speaker": int,
    "index": i}`` (plus ``"text"`` with transcripts) or a :class:`SkippedFile`. Attributes:
    ``keys``, ``labels: (N,)``, ``classes``, ``speakers: (N,)`` long (-1 unknown),
    ``speaker_names``, ``texts`` (N strings or None), ``sample_rate``, ``clip_samples``.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        sample_rate: int = 16000,
        clip_seconds: float = 4.0,
        split: str = "all",
        test_fraction: float = 0.1,
        seed: int = 0,
        split_by: str | None = None,
        crop: str = "center",
        path_column: str = "path",
        text_column: Any = _DEFAULT,
        label_column: Any = _DEFAULT,
        speaker_column: Any = _DEFAULT,
    ) -> None:
        check_split(split)
        if (
            not isinstance(sample_rate, int)
            or isinstance(sample_rate, bool)
            or not 1000 <= sample_rate <= 384000
        ):
            raise ValueError(
                f"sample_rate must be an int in [1000, 384000] Hz, got {sample_rate!r}; e.g. 16000."
            )
        if (
            not isinstance(clip_seconds, (int, float))
            or isinstance(clip_seconds, bool)
            or not 0 < clip_seconds <= 3600
            or round(clip_seconds * sample_rate) < 1
        ):
            raise ValueError(
                f"clip_seconds must be a number in (0, 3600], got {clip_seconds!r}; e.g. 4.0."
            )
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}.")
        if split_by is not None and split_by not in SPLIT_KEYS:
            raise ValueError(f"split_by must be one of {SPLIT_KEYS} or None, got {split_by!r}.")
        source = Path(source)
        texts: list[str] | None = None
        speakers_raw: list[object | None] | None = None
        where: list[str] | None = None
        if source.suffix.lower() in AUDIO_MANIFEST_SUFFIXES and not source.is_dir():
            rows = read_audio_manifest(
                source, path_column, text_column, label_column, speaker_column
            )
            keys = [Path(c).as_posix() for c in rows["paths"]]
            where, texts, speakers_raw = rows["where"], rows["texts"], rows["speakers"]
            base = source.parent
            raw = rows["labels"]
            labels, classes = _encode_labels(raw) if raw is not None else ([-1] * len(keys), [])
        else:
            for arg, value in (("text_column", text_column), ("label_column", label_column),
                               ("speaker_column", speaker_column)):  # fmt: skip
                if value is not _DEFAULT and value is not None:
                    raise ValueError(
                        f"{arg}={value!r} applies to a manifest, but source {str(source)!r} is a "
                        f"folder; drop {arg} or pass a .csv/.jsonl/.parquet manifest."
                    )
            if source.is_file():
                raise ValueError(
                    f"source {source} is a file; pass a folder of audio files (root/<class>/<file> "
                    f"or flat) or a {' / '.join(AUDIO_MANIFEST_SUFFIXES)} manifest."
                )
            keys, labels, classes = list_audio_folder(source)
            base = source
        if speakers_raw is not None:
            speakers, speaker_names = _encode_labels(speakers_raw)
        else:
            speakers, speaker_names = [-1] * len(keys), []
        by = split_by or ("text" if texts is not None else "path")
        if by == "text" and texts is None:
            raise ValueError(
                f"split_by='text' needs transcripts, but {source} has no text column; use split_by='path'."
            )
        if by == "speaker" and speakers_raw is None:
            raise ValueError(
                f"split_by='speaker' needs a speaker column in {source}; use split_by='path'."
            )
        if where is not None:  # every manifest row must name an existing file: say which one
            for i, key in enumerate(keys):
                if not (base / key).is_file():
                    raise FileNotFoundError(
                        f"{where[i]}: names {key!r}, but {base / key} does not exist; paths are "
                        "relative to the manifest's folder (or absolute)."
                    )
        if split != "all":
            split_keys = {
                "text": texts,
                "path": keys,
                "speaker": [str(s) for s in speakers_raw or []],
            }[by]
            test = held_out_mask(split_keys, test_fraction, seed).tolist()  # type: ignore[arg-type]
            keep = [i for i, t in enumerate(test) if t == (split == "test")]
            keys = [keys[i] for i in keep]
            labels = [labels[i] for i in keep]
            speakers = [speakers[i] for i in keep]
            texts = None if texts is None else [texts[i] for i in keep]
            if not keys:
                raise ValueError(
                    f"split={split!r} of {source} holds no files (test_fraction={test_fraction}, "
                    f"seed={seed}); add files, or change test_fraction or seed."
                )
        self.root, self.source, self.split, self.split_by = base, source, split, by
        self._keys = _Strings(keys)
        self._texts = None if texts is None else _Strings(texts)
        self.labels = torch.tensor(labels, dtype=torch.long)  # (N,)
        self.classes = classes
        self.speakers = torch.tensor(speakers, dtype=torch.long)  # (N,)
        self.speaker_names = speaker_names
        self.sample_rate, self.crop = sample_rate, crop
        self.clip_samples = round(clip_seconds * sample_rate)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> list[str]:
        """The N relative paths (manifest: the path cells), in dataset order."""
        return self._keys.tolist()

    @property
    def texts(self) -> list[str] | None:
        """The N transcripts, or None without a text column."""
        return None if self._texts is None else self._texts.tolist()

    def key(self, i: int) -> str:
        return self._keys[i]

    def text(self, i: int) -> str | None:
        return None if self._texts is None else self._texts[i]

    def path(self, i: int) -> Path:
        """The file of item ``i`` (absolute manifest paths are kept as written)."""
        return self.root / self._keys[i]

    def load(self, i: int) -> np.ndarray:
        """The whole clip ``i`` (T,) float32 at ``sample_rate``, uncropped (raises AudioError)."""
        return load_audio(self.path(i), self.sample_rate)[0]

    def __getitem__(self, i: int | tuple[int, int]) -> dict[str, Any] | SkippedFile:
        """Item ``i``; ``i = (row, seed)`` crops at random with a generator seeded by ``seed``
        (reproducible whatever the worker), a plain row crops as ``crop`` says."""
        seed = None
        if isinstance(i, (tuple, list)):
            i, seed = int(i[0]), int(i[1])
        i = int(i)
        try:
            wave = self.load(i)
        except (AudioError, FileNotFoundError) as err:
            return SkippedFile(i, self.key(i), str(err))
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        elif self.crop == "random":  # the worker's torch RNG, as ImageFiles' random crop
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        audio, mask = crop_or_pad(torch.from_numpy(wave), self.clip_samples, generator=generator)
        item: dict[str, Any] = {
            "audio": audio, "mask": mask, "label": int(self.labels[i]),
            "speaker": int(self.speakers[i]), "index": i,
        }  # fmt: skip
        if self._texts is not None:
            item["text"] = self._texts[i]
        return item

    def collate(self) -> AudioSkippingCollate:
        """The collate function for this dataset's items."""
        return AudioSkippingCollate(self.clip_samples, self._texts is not None)

    def __repr__(self) -> str:
        return (
            f"AudioFiles({str(self.source)!r}, n={len(self)}, classes={len(self.classes)}, "
            f"speakers={len(self.speaker_names)}, sample_rate={self.sample_rate}, "
            f"clip_samples={self.clip_samples}, split={self.split!r})"
        )


class AudioSkippingCollate:
    """Stack :class:`AudioFiles` items into a batch, dropping :class:`SkippedFile` markers.

    Returns ``{"audio": float32 (B, L), "mask": bool (B, L), "labels": (B,) long, "speakers":
    (B,) long, "index": (B,) long, "skipped_files": int, "skipped": list of (key, reason)}``
    plus ``"texts"`` (B strings) with transcripts. B may be smaller than sampled (even 0).
    """

    def __init__(self, clip_samples: int, texts: bool = False) -> None:
        self.clip_samples, self.texts = int(clip_samples), texts

    def __call__(self, items: Sequence[dict[str, Any] | SkippedFile]) -> dict[str, Any]:
        kept = [it for it in items if not isinstance(it, SkippedFile)]
        skipped = [(it.key, it.reason) for it in items if isinstance(it, SkippedFile)]
        if kept:
            # default_collate stacks straight into shared memory inside a worker (no second
            # copy when the batch is sent to the main process)
            audio = default_collate([it["audio"] for it in kept])  # (B, L)
            mask = default_collate([it["mask"] for it in kept])  # (B, L)
        else:
            audio = torch.empty((0, self.clip_samples))
            mask = torch.empty((0, self.clip_samples), dtype=torch.bool)
        batch: dict[str, Any] = {
            "audio": audio,
            "mask": mask,
            "labels": torch.tensor([it["label"] for it in kept], dtype=torch.long),
            "speakers": torch.tensor([it["speaker"] for it in kept], dtype=torch.long),
            "index": torch.tensor([it["index"] for it in kept], dtype=torch.long),
            "skipped_files": len(skipped),
            "skipped": skipped,
        }
        if self.texts:
            batch["texts"] = [it["text"] for it in kept]
        return batch


def audio_folder_loader(
    dataset: AudioFiles,
    batch_sampler: Iterable[Sequence[int]],
    workers: int = 0,
    *,
    persistent: bool | None = None,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
) -> DataLoader:
    """The ``DataLoader`` over ``dataset``: ``batch_sampler`` picks rows, ``workers`` processes
    decode them (persistent by default when ``workers > 0``), :class:`AudioSkippingCollate`
    drops and counts unreadable files (as :func:`contrastkit.data.image_folder_loader`)."""
    if not isinstance(dataset, AudioFiles):
        raise TypeError(f"dataset must be an AudioFiles, got {type(dataset).__name__}.")
    return decoding_loader(dataset, batch_sampler, workers, persistent, prefetch_factor, pin_memory)


def audio_batches(
    dataset: AudioFiles, batch_size: int = 64, workers: int = 0
) -> Iterator[dict[str, Any]]:
    """Every item of ``dataset`` once, in row order, in batches (to embed a split for retrieval
    or an index). Unreadable files are dropped; ``batch["index"]`` says which rows each holds."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False)
    yield from audio_folder_loader(dataset, sampler, workers, persistent=False)


class AudioReader:
    """Decode chosen rows of an :class:`AudioFiles` on demand with persistent workers (the
    trainer draws its own batch order): ``read(rows)`` splits the rows over the workers and
    returns the readable ones merged in order (as :class:`contrastkit.data.image_folder.FolderReader`).
    """

    def __init__(self, dataset: AudioFiles, workers: int = 0) -> None:
        self.dataset, self.workers = dataset, workers
        self._pending: list[list[int]] = []
        self.loader = audio_folder_loader(dataset, self, workers)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def read(self, rows: Sequence[int], seeds: Sequence[int] | None = None) -> dict[str, Any]:
        """``{"audio": (B', L), "mask": (B', L), "labels", "speakers", "index": (B',),
        "skipped_files": int}`` (+ ``"texts"``) for the readable rows among ``rows``; with
        ``seeds`` (one per row) each clip is cropped at random from its seed."""
        rows = (
            [int(r) for r in rows]
            if seeds is None
            else [(int(r), int(s)) for r, s in zip(rows, seeds)]
        )  # type: ignore[misc]
        if not rows:
            return self.dataset.collate()([])
        parts = max(1, min(self.workers, len(rows)))
        size = -(-len(rows) // parts)
        self._pending = [rows[i : i + size] for i in range(0, len(rows), size)]
        batches = list(self.loader)
        self._pending = []
        out: dict[str, Any] = {
            name: torch.cat([b[name] for b in batches])
            for name in ("audio", "mask", "labels", "speakers", "index")
        }
        out["skipped_files"] = sum(int(b["skipped_files"]) for b in batches)
        out["skipped"] = [s for b in batches for s in b["skipped"]]
        if "texts" in batches[0]:
            out["texts"] = [t for b in batches for t in b["texts"]]
        return out
