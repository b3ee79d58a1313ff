"""Identity data for verification: a folder of identities and the pairs that evaluate it.

**The identity folder** (the LFW layout): one subfolder per identity holding its images, any
format :mod:`contrastkit.data.images` reads (PNG, JPEG, BMP, GIF, WebP, TIFF)::

    root/
      Aaron_Peckham/Aaron_Peckham_0001.jpg
      Abel_Pacheco/Abel_Pacheco_0001.jpg  Abel_Pacheco_0002.jpg ...

It trains as a class folder (:class:`contrastkit.data.image_folder.ImageFiles`, one label per
identity; :meth:`IdentityFolder.image_files`).

**The pairs**, one of two formats (:func:`read_pairs`):

* LFW's ``pairs.txt``: a header ``FOLDS PAIRS`` (``10 300``: 10 folds, each of 300
  same-identity lines then 300 different-identity lines; a single number ``N`` means one set of
  N same then N different lines, as ``pairsDevTest.txt``), then one pair per line, fields
  separated by white space: ``name i j`` (images i and j of ``name``) or ``name1 i name2 j``.
  Image numbers are 1-based. Image i of ``name`` is the file ``name/name_%04d.<ext>`` (LFW's
  naming: ``Abel_Pacheco/Abel_Pacheco_0002.jpg``, any image extension); an identity folder
  with no file named that way numbers its images in sorted file-name order instead
  (``1`` = the first). The fold of a line is its position: fold k holds lines
  ``k * 2 * PAIRS + 1 .. (k + 1) * 2 * PAIRS`` after the header.
* a CSV with the columns ``path_a``, ``path_b``, ``same`` (1/0, true/false, yes/no) and an
  optional ``fold``: paths relative to ``root`` (default: the CSV's folder) or absolute.
  Without a ``fold`` column the pairs are dealt into 10 folds in a seeded random order.

Every problem with the pairs (a malformed line, an image or identity that does not exist, a
same-identity pair for an identity with a single image, the same image twice) raises one
:class:`IdentityDataError` (a ``ValueError``) that starts with ``file:line:`` and says how to
fix it; a folder with fewer than two identities names the ``root`` argument.

Shapes: N pairs, U distinct images, C channels, S image side.

>>> import tempfile, os
>>> from PIL import Image
>>> root = tempfile.mkdtemp()
>>> for name, n in (("Ann", 2), ("Bob", 1)):
...     os.makedirs(os.path.join(root, name))
...     for i in range(1, n + 1):
...         Image.new("L", (8, 8), 40 * i).save(os.path.join(root, name, f"{name}_{i:04d}.png"))
>>> _ = open(os.path.join(root, "pairs.txt"), "w").write("2 1\\nAnn 1 2\\nAnn 1 Bob 1\\nAnn 2 2\\nBob 1 Ann 2\\n")
>>> try:
...     read_pairs(os.path.join(root, "pairs.txt"))
... except IdentityDataError as err:
...     print(str(err).split(os.sep)[-1])
pairs.txt:4: 'Ann 2 2' names image 2 of Ann twice; a same-identity pair needs two different images: change one number.
>>> _ = open(os.path.join(root, "pairs.txt"), "w").write("2 1\\nAnn 1 2\\nAnn 1 Bob 1\\nAnn 2 1\\nBob 1 Ann 2\\n")
>>> pairs = read_pairs(os.path.join(root, "pairs.txt"))
>>> pairs.paths, pairs.index_a.tolist(), pairs.index_b.tolist(), pairs.same.tolist(), pairs.folds.tolist()
(['Ann/Ann_0001.png', 'Ann/Ann_0002.png', 'Bob/Bob_0001.png'], [0, 0, 1, 2], [1, 2, 0, 1], [True, False, True, False], [0, 0, 1, 1])
>>> pairs.load_images(image_size=4).shape
torch.Size([3, 1, 4, 4])
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from contrastkit.data._common import missing
from contrastkit.data.image_folder import (
    ImageFiles,
    _probe_channels,
    _walk_images,
    decode_image,
)

__all__ = [
    "EXPORTS",
    "PAIR_FOLDS",
    "IdentityDataError",
    "IdentityFolder",
    "IdentityPairs",
    "export_identity",
    "load_identity_folder",
    "read_pairs",
]

PAIR_FOLDS = 10  # folds dealt to pairs that do not carry their own (CSV without 'fold')
EXPORTS = ("glyphs",)  # packaged identity sets export_identity writes
_TRUE = {"1", "true", "yes", "same"}
_FALSE = {"0", "false", "no", "different"}


class IdentityDataError(ValueError):
    """Bad identity data: the message starts with ``file:line:`` (or names the argument) and
    says how to fix it."""


# -- the folder -----------------------------------------------------------------------------


@dataclass
class IdentityFolder:
    """The identities of an LFW-layout folder.

    Attributes:
        root: the folder.
        names: identity folder names, sorted (those holding at least one image).
        files: ``{name: sorted image paths relative to root}`` (posix, e.g.
            ``"Ann/Ann_0001.jpg"``; files in deeper folders count too).
    """

    root: Path
    names: list[str]
    files: dict[str, list[str]]
    _numbering: dict[str, dict[int, str]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_images(self) -> int:
        """Images over all identities."""
        return sum(len(v) for v in self.files.values())

    def image(self, name: str, number: int, where: str, *, same_pair: bool = False) -> str:
        """The path (relative to root) of image ``number`` (1-based) of identity ``name``, by
        LFW's naming (``name/name_%04d.<ext>``) or, for a folder without it, by sorted order.

        Raises:
            IdentityDataError: starting with ``where`` (``file:line``): no such identity or image.
        """
        files = self.files.get(name)
        if files is None:
            near = [n for n in self.names if n.lower() == name.lower()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise IdentityDataError(
                f"{where}: names the identity {name!r}, but {self.root} has no folder {name!r}"
                f"{hint}; fix the name or add the folder {self.root / name}."
            )
        numbered = self._numbered(name)
        if numbered:
            found = numbered.get(number)
        else:
            found = files[number - 1] if 1 <= number <= len(files) else None
        if found is not None:
            return found
        if same_pair and len(files) == 1:
            raise IdentityDataError(
                f"{where}: asks for a same-identity pair of {name!r}, which has a single image "
                f"({files[0]}); add another image of {name!r} to {self.root / name} or drop the line."
            )
        shown = ", ".join(f.rsplit("/", 1)[-1] for f in files[:4]) + (
            ", ..." if len(files) > 4 else ""
        )
        how = f"files named {name}_NNNN" if numbered else "numbered in sorted file-name order"
        want = f"{name}/{name}_{number:04d}.jpg" if numbered else f"a {number}th image"
        raise IdentityDataError(
            f"{where}: names image {number} of {name!r}, which does not exist ({name} has "
            f"{len(files)} image(s), {how}: {shown}); fix the number or add {want}."
        )

    def _numbered(self, name: str) -> dict[int, str]:
        """``{number: path}`` of the identity's files named LFW's way (``name/name_0001.jpg``),
        computed once per identity."""
        cache = self._numbering
        if name not in cache:
            lfw = re.compile(rf"{re.escape(name)}_(\d{{4,}})\.[^./]+")
            cache[name] = {}
            for rel in self.files[name]:
                m = lfw.fullmatch(rel.rsplit("/", 1)[-1])
                if m and rel.count("/") == 1:
                    cache[name][int(m.group(1))] = rel
        return cache[name]

    def image_files(self, image_size: int, **options: object) -> ImageFiles:
        """The folder as a training set: one class per identity (labels index ``names``).
        ``options`` go to :class:`~contrastkit.data.image_folder.ImageFiles`."""
        return ImageFiles(self.root, image_size=image_size, **options)  # type: ignore[arg-type]


def load_identity_folder(root: str | os.PathLike) -> IdentityFolder:
    """List an LFW-layout folder: ``root/<identity>/<image>`` (see the module doc).

    Raises:
        DataNotFoundError: ``root`` is not a folder.
        IdentityDataError: fewer than two identity folders hold images.
    """
    root = Path(root)
    if not root.is_dir():
        raise missing("identity folder", root, None, "root")
    subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    files = {name: [f"{name}/{rel}" for rel in _walk_images(str(root / name))] for name in subdirs}
    names = [name for name in subdirs if files[name]]
    if len(names) < 2:
        found = f"only {names[0]!r}" if names else "none"
        raise IdentityDataError(
            f"root={str(root)!r} holds {len(names)} identity folder(s) with images ({found}); "
            "verification needs at least two: put each identity's images in root/<identity>/ "
            "(the LFW layout)."
        )
    return IdentityFolder(root, names, {name: files[name] for name in names})


# -- the pairs ------------------------------------------------------------------------------


@dataclass
class IdentityPairs:
    """Same / different pairs over U distinct images.

    Attributes:
        root: the folder image paths are relative to.
        paths: U distinct image paths (relative to root, or absolute as a CSV wrote them), in
            order of first appearance.
        index_a: (N,) long, row of ``paths`` of each pair's first image.
        index_b: (N,) long, its second image.
        same: (N,) bool, True for a same-identity pair.
        folds: (N,) long fold id of each pair (``pairs.txt``: from its position).
        where: N ``file:line`` strings, where each pair was read.

    Embed ``load_images()`` once, then score with
    :func:`contrastkit.eval.verification.indexed_pair_scores` and evaluate with
    :func:`contrastkit.eval.verification.verification_metrics` (``folds=pairs.folds``).
    """

    root: Path
    paths: list[str]
    index_a: Tensor
    index_b: Tensor
    same: Tensor
    folds: Tensor
    where: list[str]

    def __len__(self) -> int:
        return int(self.same.shape[0])

    def path(self, i: int) -> Path:
        """The file of distinct image ``i``."""
        return self.root / self.paths[i]

    def load_images(self, image_size: int, channels: int | None = None) -> Tensor:
        """Decode the U distinct images: ``uint8 (U, C, S, S)`` (the project's decoder:
        upright, transparency on white, shorter side resized to ``image_size``, centre crop).

        Args:
            image_size: S.
            channels: 1 or 3; None picks 3 if any of the first images is colour.

        Raises:
            FileNotFoundError / ImageDecodeError: an image vanished or does not decode (the
                message names it).
        """
        if channels is None:
            channels = _probe_channels(str(self.path(i)) for i in range(len(self.paths)))
        images = [
            decode_image(self.path(i), channels=channels, image_size=image_size)
            for i in range(len(self.paths))
        ]
        return torch.stack(images)  # (U, C, S, S)


def read_pairs(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
) -> IdentityPairs:
    """Read LFW's ``pairs.txt`` (``.txt``) or a CSV of pairs (``.csv``); see the module doc.

    Args:
        path: the pairs file.
        root: the identity folder (``pairs.txt``) or the folder CSV paths are relative to;
            default: the pairs file's folder.
        seed: deals pairs into folds when the file does not give them.

    Raises:
        DataNotFoundError: no such pairs file or folder.
        IdentityDataError: a bad line, a missing image or identity, fewer than two identities.
    """
    path = Path(path)
    if not path.is_file():
        raise missing("pairs file", path, None, "path")
    base = Path(root) if root is not None else path.parent
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, base, seed)
    if suffix == ".txt":
        return _read_lfw(path, base, seed)
    raise IdentityDataError(
        f"path={str(path)!r}: pairs must be LFW's pairs.txt (.txt) or a CSV with path_a, "
        "path_b, same (.csv); rename or convert the file."
    )


def _dealt_folds(n: int, seed: int) -> Tensor:
    """(n,) fold ids 0..PAIR_FOLDS-1, dealt in a seeded random order (equal sizes +- 1)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    folds = torch.empty(n, dtype=torch.long)
    folds[order] = torch.arange(n) % PAIR_FOLDS
    return folds


class _Builder:
    """Distinct paths and the pairs over them."""

    def __init__(self) -> None:
        self.paths: dict[str, int] = {}
        self.a: list[int] = []
        self.b: list[int] = []
        self.same: list[bool] = []
        self.where: list[str] = []

    def add(self, a: str, b: str, same: bool, where: str) -> None:
        self.a.append(self.paths.setdefault(a, len(self.paths)))
        self.b.append(self.paths.setdefault(b, len(self.paths)))
        self.same.append(same)
        self.where.append(where)

    def build(self, root: Path, folds: Tensor) -> IdentityPairs:
        return IdentityPairs(
            root,
            list(self.paths),
            torch.tensor(self.a, dtype=torch.long),
            torch.tensor(self.b, dtype=torch.long),
            torch.tensor(self.same, dtype=torch.bool),
            folds,
            self.where,
        )


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise IdentityDataError(
            f"{path}: not UTF-8 text (bad byte at offset {err.start}); save the file as UTF-8."
        ) from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _number(token: str) -> int | None:
    return int(token) if token.isdigit() and int(token) >= 1 else None


def _read_lfw(path: Path, root: Path, seed: int) -> IdentityPairs:
    lines = _lines(path)
    if not lines:
        raise IdentityDataError(f"{path}: empty; expected a header line '10 300' and the pairs.")
    head_at, head = lines[0]
    fields = head.split()
    counts = [_number(f) for f in fields]
    if not 1 <= len(fields) <= 2 or None in counts:
        raise IdentityDataError(
            f"{path}:{head_at}: the header must be 'FOLDS PAIRS' (LFW: '10 300': 10 folds of 300 "
            f"same and 300 different pairs) or one number of pairs of each kind, got {head!r}; "
            "add or fix the header line."
        )
    folds_n, per = (int(fields[0]), int(fields[1])) if len(fields) == 2 else (1, int(fields[0]))
    body = lines[1:]
    expected = folds_n * 2 * per
    if len(body) != expected:
        raise IdentityDataError(
            f"{path}:{head_at}: the header {head!r} announces {folds_n} fold(s) of {per} same + "
            f"{per} different pairs ({expected} lines), but {len(body)} pair lines follow; fix "
            "the header or the pairs."
        )
    folder = load_identity_folder(root)
    pairs = _Builder()
    for at, line in body:
        where = f"{path}:{at}"
        t = line.split()
        tokens = t[1:3] if len(t) == 3 else t[1::2] if len(t) == 4 else []
        if not tokens or None in map(_number, tokens):
            raise IdentityDataError(
                f"{where}: {line!r} is not a pair; expected 'name i j' (same identity) or "
                "'name1 i name2 j' (different), white-space separated, image numbers from 1: "
                "fix the line."
            )
        i, j = map(int, tokens)
        if len(t) == 3:
            if i == j:
                raise IdentityDataError(
                    f"{where}: {line!r} names image {i} of {t[0]} twice; a same-identity pair "
                    "needs two different images: change one number."
                )
            a = folder.image(t[0], i, where, same_pair=True)
            b = folder.image(t[0], j, where, same_pair=True)
            pairs.add(a, b, True, where)
        else:
            if t[0] == t[2]:
                raise IdentityDataError(
                    f"{where}: {line!r} is a different-identity line naming {t[0]} twice; write "
                    f"a same-identity pair as '{t[0]} {i} {j}'."
                )
            pairs.add(folder.image(t[0], i, where), folder.image(t[2], j, where), False, where)
    if len(counts) == 2:
        folds = torch.arange(expected) // (2 * per)  # (N,) LFW: fold k is the k-th block
    else:
        folds = _dealt_folds(expected, seed)
    return pairs.build(root, folds)


def _read_csv(path: Path, root: Path, seed: int) -> IdentityPairs:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            need = [c for c in ("path_a", "path_b", "same") if c not in columns]
            if need:
                raise IdentityDataError(
                    f"{path}:1: no column(s) {', '.join(map(repr, need))}; the header must name "
                    f"path_a, path_b, same (and optionally fold); columns present: "
                    f"{', '.join(map(repr, columns)) or 'none'}."
                )
            rows = [
                (reader.line_num, row)
                for row in reader
                if any((v or "").strip() for v in row.values())
            ]
    except UnicodeDecodeError as err:
        raise IdentityDataError(
            f"{path}: not UTF-8 text (bad byte at offset {err.start}); save the file as UTF-8."
        ) from None
    if not rows:
        raise IdentityDataError(f"{path}: no pairs; add rows of path_a, path_b, same.")
    pairs = _Builder()
    fold_ids: list[int] = []
    checked: set[str] = set()
    for at, row in rows:
        where = f"{path}:{at}"
        cells = []
        for col in ("path_a", "path_b"):
            cell = (row.get(col) or "").strip()
            if not cell:
                raise IdentityDataError(f"{where}: empty {col!r}; every row names two images.")
            cell = Path(cell).as_posix()
            if cell not in checked:
                if not (root / cell).is_file():
                    raise IdentityDataError(
                        f"{where}: {col} {cell!r} does not exist (looked for {root / cell}); "
                        "fix the path (relative to the CSV's folder, or absolute) or pass root=."
                    )
                checked.add(cell)
            cells.append(cell)
        flag = (row.get("same") or "").strip().lower()
        if flag not in _TRUE | _FALSE:
            raise IdentityDataError(
                f"{where}: same is {row.get('same')!r}; write 1 (same identity) or 0 "
                "(different), or true/false."
            )
        same = flag in _TRUE
        if same and cells[0] == cells[1]:
            raise IdentityDataError(
                f"{where}: a same-identity pair of {cells[0]!r} with itself; pair two different "
                "images of the identity."
            )
        if "fold" in columns:
            fold = (row.get("fold") or "").strip()
            if not fold.lstrip("-").isdigit():
                raise IdentityDataError(
                    f"{where}: fold is {row.get('fold')!r}; write an integer fold id (0-9)."
                )
            fold_ids.append(int(fold))
        pairs.add(cells[0], cells[1], same, where)
    if "fold" in columns:
        folds = torch.tensor(fold_ids, dtype=torch.long)
    else:
        folds = _dealt_folds(len(rows), seed)
    return pairs.build(root, folds)


# -- packaged sets ----------------------------------------------------------------------------


def export_identity(
    name: str,
    root: str | os.PathLike,
    *,
    size: int = 32,
    limit: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    pairs_per_fold: int = 300,
    folds: int = 10,
) -> Path:
    """Write the packaged identity set ``name`` as LFW-layout folders under ``root``:
    ``root/train/<identity>/...`` (training identities) and ``root/test/<identity>/...`` with
    ``root/test/pairs.txt`` (held-out identities only).

    Args:
        name: one of :data:`EXPORTS` (``"glyphs"``: :func:`contrastkit.data.glyphs.export_glyphs`).
        root: the folder to write (new, empty, or an earlier export, which is replaced).
        size: image side in pixels.
        limit: only the first ``limit`` identities (None: all).
        test_fraction, seed: the split by identity (the loader's, e.g.
            :func:`contrastkit.data.glyphs.load_glyphs`).
        pairs_per_fold, folds: ``pairs.txt``: folds of ``pairs_per_fold`` same and as many
            different pairs.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    if name not in EXPORTS:
        raise ValueError(
            f"name must be one of {list(EXPORTS)} (packaged identity sets), got {name!r}."
        )
    from contrastkit.data.glyphs import export_glyphs

    return export_glyphs(
        root,
        size=size,
        limit=limit,
        test_fraction=test_fraction,
        seed=seed,
        pairs_per_fold=pairs_per_fold,
        folds=folds,
    )
