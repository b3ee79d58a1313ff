"""The user's own data: pair / triplet files (JSONL, CSV, Parquet) and labelled image folders.

Pair files have one pair per row with these columns (extra columns are ignored):

==============  ========  ===========================================================
column          required  meaning
==============  ========  ===========================================================
``query``       yes       anchor text
``positive``    yes       the text that pairs with ``query``
``negative``    no        one hard negative (CSV/Parquet may also use ``negative_1``,
                          ``negative_2``, ...; JSONL/Parquet may use a list ``negatives``)
``id``          no        a group id: rows sharing it are one concept (kept on one side
                          of a split, masked as false negatives); default: the query text
``label``       no        a class (string or integer)
==============  ========  ===========================================================

Other column names map onto these with ``columns={"query": "question", "positive": "answer",
"negatives": ["wrong_1", "wrong_2"], ...}`` (:func:`check_columns`; the mapping
:func:`contrastkit.data.hf.load_hf_pairs` takes too).

A bad row raises :class:`PairFileError` naming the file and line (row for Parquet), e.g.
``pairs.csv:7: empty 'positive'``.

Image folders (``root/<class name>/<image file>`` or flat) decode into memory with
:func:`load_image_folder`; large ones stream from disk with
:class:`contrastkit.data.image_folder.ImageFiles`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from contrastkit.data._common import (
    ImageDataset,
    TextPairs,
    check_split,
    group_ids,
    missing,
    select_split,
)
from contrastkit.data.image_folder import decode_image, list_image_folder

PAIR_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class PairFileError(ValueError):
    """A malformed row in a pair file; the message starts with ``file:line:``."""


def _not_utf8(path: Path, err: UnicodeDecodeError) -> PairFileError:
    return PairFileError(
        f"{path}: not UTF-8 text (bad byte at offset {err.start}); save the file as UTF-8."
    )


def _rows_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        yield from _jsonl(path)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _rows_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        yield from _csv(path)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PairFileError(f"{path}:{line_no}: invalid JSON ({err.msg}).") from None
            except RecursionError:
                raise PairFileError(
                    f"{path}:{line_no}: JSON nested too deeply; a pair is a flat object."
                ) from None
            if not isinstance(row, dict):
                raise PairFileError(
                    f"{path}:{line_no}: expected a JSON object with 'query' and 'positive', "
                    f"got {type(row).__name__}."
                )
            yield line_no, row


def _csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            yield from _csv_rows(path, reader)
        except csv.Error as err:  # a cell over the csv module's limit, a NUL byte, a bad quote
            hint = ""
            if "field larger" in str(err):
                hint = (
                    f" (a cell may hold {csv.field_size_limit():,} characters; use JSONL or "
                    "Parquet for longer texts)"
                )
            raise PairFileError(f"{path}:{reader.line_num}: unreadable CSV: {err}{hint}.") from None


def _csv_rows(path: Path, reader: csv.DictReader) -> Iterator[tuple[int, dict[str, Any]]]:
    if reader.fieldnames is None:
        raise PairFileError(f"{path}:1: empty file; expected a header with query,positive.")
    for row in reader:
        if None in row:  # more cells than header columns
            raise PairFileError(
                f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} cells but the "
                f"header has {len(reader.fieldnames)} columns; quote cells containing commas."
            )
        if all(v in (None, "") for v in row.values()):
            continue
        yield reader.line_num, row


def _rows_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is in the data extra
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from err
    import pyarrow as pa

    try:
        table = pq.read_table(path)
        rows = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PairFileError(f"{path}: not a readable Parquet file ({reason}).") from None
    yield from enumerate(rows, start=1)


def _negatives(row: dict[str, Any], where: str) -> list[str]:
    out: list[str] = []
    if "negatives" in row and row["negatives"] is not None:
        value = row["negatives"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise PairFileError(f"{where}: 'negatives' must be a list of strings, got {value!r}.")
        out.extend(value)
    numbered = [k for k in row if k.startswith("negative_") and k[9:].isdigit()]
    keys = ["negative", *sorted(numbered, key=lambda k: int(k[9:]))]
    for key in keys:
        value = row.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise PairFileError(f"{where}: '{key}' must be a string, got {value!r}.")
        out.append(value)
    return out


PAIR_COLUMNS = ("query", "positive", "negatives", "id", "label")


def check_columns(
    columns: object, available: list[str], source: str
) -> dict[str, str | list[str]] | None:
    """Validate a column mapping ``{"query": ..., "positive": ..., "negatives": [...], "id":
    ..., "label": ...}`` (keys: the pair fields, values: the source's column names) against the
    source's ``available`` columns; ``None`` keeps the standard column names.

    >>> check_columns({"query": "q", "positive": "a", "negatives": "n"}, ["q", "a", "n"], "f")
    {'query': 'q', 'positive': 'a', 'negatives': ['n']}
    """
    if columns is None:
        return None
    if not isinstance(columns, dict):
        raise TypeError(
            f"columns must be a mapping like {{'query': 'question', 'positive': 'answer'}}, "
            f"got {type(columns).__name__}."
        )
    unknown = [k for k in columns if k not in PAIR_COLUMNS]
    if unknown:
        raise ValueError(
            f"columns: unknown key {unknown[0]!r}; the keys are the pair fields "
            f"{', '.join(PAIR_COLUMNS)} and the values your column names."
        )
    out: dict[str, str | list[str]] = {}
    for key, value in columns.items():
        names = [value] if isinstance(value, str) else value
        if key != "negatives" and not isinstance(value, str):
            raise TypeError(f"columns[{key!r}] must be one column name, got {value!r}.")
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise TypeError(
                f"columns[{key!r}] must be a column name or a list of them, got {value!r}."
            )
        for name in names:
            if name not in available:
                raise ValueError(
                    f"columns[{key!r}]={name!r} is not a column of {source}; its columns: "
                    f"{', '.join(available) or 'none'}."
                )
        out[key] = list(names) if key == "negatives" else value
    for key in ("query", "positive"):
        out.setdefault(key, key)
        if out[key] not in available:
            raise ValueError(
                f"{source} has no {key!r} column; map yours with columns={{{key!r}: '<name>'}} "
                f"(its columns: {', '.join(available) or 'none'})."
            )
    return out


def _mapped(row: dict[str, Any], columns: dict[str, str | list[str]]) -> dict[str, Any]:
    """A row renamed to the standard pair fields; the mapped negative columns flattened."""
    out = {key: row.get(name) for key, name in columns.items() if key != "negatives"}
    negatives: list[Any] = []
    for name in columns.get("negatives", []):
        value = row.get(name)
        if isinstance(value, list | tuple):
            negatives.extend(v for v in value if v not in (None, ""))
        elif value not in (None, ""):
            negatives.append(value)
    out["negatives"] = negatives
    return out


def load_pairs(
    path: str | Path,
    split: str = "all",
    test_fraction: float = 0.1,
    seed: int = 0,
    columns: dict[str, Any] | None = None,
) -> TextPairs:
    """Pairs (or triplets) from a ``.jsonl``, ``.csv`` or ``.parquet`` file.

    Args:
        path: the file; its suffix picks the format.
        split: ``"all"`` (default), ``"train"`` or ``"test"``, split by ``id`` (or by query).
        test_fraction: share of groups held out.
        seed: changes which groups are held out.
        columns: your column names for the pair fields, e.g. ``{"query": "question",
            "positive": "answer", "negatives": ["wrong_1", "wrong_2"], "id": "qid"}``
            (fields left out keep their standard names; with ``negatives`` mapped, only those
            columns are negatives). The same mapping :func:`contrastkit.data.hf.load_hf_pairs`
            takes.

    Returns:
        :class:`TextPairs`; ``negatives`` is a list per row when any row has a negative, else
        ``None``; ``labels: (N,)`` index into ``classes`` (sorted distinct labels), -1 where a
        row has none; ``groups: (N,)`` from ``id`` (or the query text).

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "p.jsonl")
    >>> _ = open(f, "w").write('{"query": "hi", "positive": "hello", "label": "greet"}\\n')
    >>> p = load_pairs(f)
    >>> p.query, p.positive, p.classes, p.labels.tolist()
    (['hi'], ['hello'], ['greet'], [0])
    >>> load_pairs(f, columns={"query": "positive", "positive": "query"}).query
    ['hello']
    """
    check_split(split)
    path = Path(path)
    fmt = PAIR_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"path must end in one of {sorted(PAIR_FORMATS)} (the suffix picks the format), "
            f"got {str(path)!r}."
        )
    if not path.is_file():
        raise missing("pair file", path, None, "path")
    reader = {"jsonl": _rows_jsonl, "csv": _rows_csv, "parquet": _rows_parquet}[fmt]
    rows = [(f"{path}:{line_no}", str(line_no), row) for line_no, row in reader(path)]
    if columns is not None:
        available = list(dict.fromkeys(k for _, _, row in rows for k in row))
        mapping = check_columns(columns, available, str(path))
        rows = [(where, i, _mapped(row, mapping or {})) for where, i, row in rows]
    return pairs_from_rows(rows, str(path), split, test_fraction, seed)


def pairs_from_rows(
    rows: list[tuple[str, str, dict[str, Any]]],
    source: str,
    split: str = "all",
    test_fraction: float = 0.1,
    seed: int = 0,
) -> TextPairs:
    """:class:`TextPairs` from ``(where, default id, row)`` tuples with the standard pair
    fields; ``where`` (e.g. ``"pairs.csv:7"``) starts each :class:`PairFileError`, the default
    id (e.g. the line number) stands in for a missing ``id``, ``source`` names the input."""
    check_split(split)
    query, positive, negatives, keys, raw_labels, ids = [], [], [], [], [], []
    scores: list[list[float] | None] = []
    for where, default_id, row in rows:
        for col in ("query", "positive"):
            value = row.get(col)
            if value is None or (isinstance(value, str) and not value.strip()):
                have = ", ".join(map(repr, row)) or "none"
                raise PairFileError(f"{where}: missing or empty {col!r} (columns here: {have}).")
            if not isinstance(value, str):
                raise PairFileError(f"{where}: {col!r} must be a string, got {value!r}.")
        query.append(row["query"])
        positive.append(row["positive"])
        negatives.append(_negatives(row, where))
        scores.append(_scores(row, where, len(negatives[-1])))
        row_id = row.get("id")
        ids.append(str(row_id) if row_id not in (None, "") else default_id)
        keys.append(f"id:{row_id}" if row_id not in (None, "") else f"q:{row['query']}")
        label = row.get("label")
        if label is not None and not isinstance(label, (str, int)):
            raise PairFileError(f"{where}: 'label' must be a string or an integer, got {label!r}.")
        raw_labels.append(None if label in (None, "") else label)
    if not query:
        raise PairFileError(f"{source}:1: no rows; expected columns query, positive.")
    distinct = {v for v in raw_labels if v is not None}
    if any(isinstance(v, int) for v in distinct) and any(isinstance(v, str) for v in distinct):
        distinct = {str(v) for v in distinct}
        raw_labels = [None if v is None else str(v) for v in raw_labels]
    numeric = all(isinstance(v, int) or v.lstrip("-").isdigit() for v in distinct)
    classes = sorted(distinct, key=lambda v: int(v)) if numeric else sorted(distinct)
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([-1 if v is None else index[v] for v in raw_labels], dtype=torch.long)
    pairs = TextPairs(
        query,
        positive,
        labels,
        [str(c) for c in classes],
        group_ids(keys),
        ids,
        negatives if any(negatives) else None,
        _all_or_none(scores, [where for where, _, _ in rows]),
    )
    return select_split(pairs, keys, split, test_fraction, seed)


def _scores(row: dict[str, Any], where: str, negatives: int) -> list[float] | None:
    """A row's ``score`` (the gold similarity of (query, positive)) or ``scores`` (a teacher's
    score of the positive, then of its first negatives), as one list; None without either."""
    if row.get("scores") not in (None, "", []):
        value = row["scores"]
        if isinstance(value, str):  # CSV cells hold JSON lists
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        ok = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
        if not ok or not 1 <= len(value) <= 1 + negatives:
            raise PairFileError(
                f"{where}: 'scores' must be a list of 1 to 1 + {negatives} finite numbers (the "
                f"score of the positive, then of each negative), got {row['scores']!r}."
            )
        return [float(v) for v in value]
    value = row.get("score")
    if value in (None, ""):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score) or isinstance(value, bool):
        raise PairFileError(f"{where}: 'score' must be a finite number, got {value!r}.")
    return [score]


def _all_or_none(scores: list[list[float] | None], wheres: list[str]) -> list[list[float]] | None:
    """Every row's scores, or None when no row has any; some rows without is an error."""
    missing_rows = [i for i, s in enumerate(scores) if s is None]
    if len(missing_rows) == len(scores):
        return None
    if missing_rows:
        raise PairFileError(
            f"{wheres[missing_rows[0]]}: no 'score'/'scores' while other rows have one; "
            "give every row a score or none."
        )
    return scores  # type: ignore[return-value]


def load_image_folder(
    root: str | Path,
    size: int | None = None,
    channels: int = 3,
    split: str = "all",
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ImageDataset:
    """A small folder decoded into memory at once: ``root/<class>/<file>`` or a flat folder.

    For folders that do not fit in memory (or any folder a trainer streams) use
    :class:`contrastkit.data.image_folder.ImageFiles`; this lists files the same way (sorted
    relative paths, the same split) and decodes them all.

    Args:
        root: the folder of class folders (or of images: labels -1).
        size: resize the shorter side to ``size`` and centre-crop ``size x size``; ``None``
            requires all images to share one size.
        channels: 3 (RGB) or 1 (grayscale).
        split: ``"all"`` (default), ``"train"`` or ``"test"`` (split by file).
        test_fraction: share of files held out.
        seed: changes which files are held out.

    Returns:
        :class:`ImageDataset` with ``images: (N, channels, H, W)`` uint8, ``labels: (N,)`` the
        class folder index into ``classes`` (sorted folder names).
    """
    check_split(split)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    root = Path(root)
    keys, labels, classes = list_image_folder(root)
    arrays = []
    for key in keys:
        # raises ImageDecodeError naming the file: an in-memory load has no batch to skip from
        array = decode_image(root / key, channels=channels, image_size=size)  # (C, H, W)
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(
                f"{root / key}: size {tuple(array.shape[1:])} differs from "
                f"{tuple(arrays[0].shape[1:])}; pass size= to resize."
            )
        arrays.append(array)
    data = ImageDataset(
        torch.stack(arrays),
        torch.tensor(labels, dtype=torch.long),
        classes,
    )
    return select_split(data, keys, split, test_fraction, seed)
