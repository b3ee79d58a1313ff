"""Text pairs from a Hugging Face ``datasets`` dataset on local disk.

``root`` is either a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
(read with ``datasets.load_from_disk``), or local data files (one ``.jsonl``/``.json``,
``.csv`` or ``.parquet`` file, or a folder of them) read with ``datasets.load_dataset("json" |
"csv" | "parquet", data_files=...)``. Nothing is downloaded: the Hub is switched off
(``HF_DATASETS_OFFLINE=1``) and ``root`` must be a local path.

The ``columns`` mapping is the one :func:`contrastkit.data.files.load_pairs` takes:
``{"query": ..., "positive": ..., "negatives": [...], "id": ..., "label": ...}`` (values are the
dataset's column names; any number of hard-negative columns, each a string or a list of
strings). A ``ClassLabel`` label column gives its class names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from contrastkit.data._common import TextPairs, cache_dir, check_split, missing
from contrastkit.data.files import PAIR_FORMATS, _mapped, check_columns, pairs_from_rows
from contrastkit.errors import ArgumentError

_BUILDERS = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}


def _datasets() -> Any:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local paths only, never the Hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "Hugging Face datasets input needs the datasets package: pip install "
            "'contrastkit[data]' (or pip install datasets)."
        ) from err
    datasets.disable_progress_bars()
    return datasets


def _data_files(root: Path) -> tuple[str, list[str]] | None:
    """(builder, files) for a data file or a folder of data files of one format."""
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.is_file())
    kinds = {PAIR_FORMATS.get(p.suffix.lower()) for p in files} - {None}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    chosen = [str(p) for p in files if PAIR_FORMATS.get(p.suffix.lower()) == kind]
    return _BUILDERS[kind], chosen  # type: ignore[index]


def _open(root: Path, hf_split: str | None) -> Any:
    datasets = _datasets()
    if root.is_dir() and any(
        (root / marker).is_file()
        for marker in ("dataset_info.json", "state.json", "dataset_dict.json")
    ):
        data = datasets.load_from_disk(str(root))
    else:
        found = _data_files(root)
        if found is None:
            raise ValueError(
                f"root {str(root)!r} is neither a save_to_disk folder nor data files of one "
                f"format ({', '.join(sorted(PAIR_FORMATS))}); pass a folder written by "
                "Dataset.save_to_disk or a .jsonl/.csv/.parquet file."
            )
        builder, files = found
        data = datasets.load_dataset(
            builder, data_files=files, cache_dir=str(cache_dir() / "hf_datasets")
        )
    if isinstance(data, datasets.DatasetDict):
        names = list(data)
        if hf_split is None:
            if len(names) != 1 and "train" not in names:
                raise ArgumentError(
                    f"{{root}} {str(root)!r} holds the splits {', '.join(names)}; pick one "
                    "with {hf_split}.",
                    "hf_split",
                    "root",
                )
            hf_split = names[0] if len(names) == 1 else "train"
        if hf_split not in data:
            raise ValueError(
                f"hf_split={hf_split!r} is not a split of {str(root)!r}; its splits: "
                f"{', '.join(names)}."
            )
        return data[hf_split]
    if hf_split is not None:
        raise ValueError(
            f"hf_split={hf_split!r} was given but {str(root)!r} is a single dataset without "
            "splits; drop hf_split."
        )
    return data


def load_hf_pairs(
    root: str | Path,
    columns: dict[str, Any] | None = None,
    split: str = "all",
    test_fraction: float = 0.1,
    seed: int = 0,
    hf_split: str | None = None,
) -> TextPairs:
    """Pairs (or triplets) from a local Hugging Face dataset.

    Args:
        root: a ``save_to_disk`` folder, or a local ``.jsonl``/``.csv``/``.parquet`` file (or a
            folder of them).
        columns: the dataset's column names for the pair fields (see
            :func:`contrastkit.data.files.check_columns`); default: columns named ``query``,
            ``positive`` (and ``negative``/``negatives``, ``id``, ``label``).
        split: ``"all"`` (default), ``"train"`` or ``"test"``: contrastkit's split by ``id``
            (or query), deterministic and disjoint by group.
        test_fraction: share of groups held out.
        seed: changes which groups are held out.
        hf_split: which split of a ``DatasetDict`` to read (default: its only split, or
            ``"train"``).

    Returns:
        :class:`TextPairs` as :func:`contrastkit.data.files.load_pairs` returns them.

    >>> import tempfile, datasets
    >>> root = tempfile.mkdtemp()
    >>> datasets.Dataset.from_dict({"q": ["hi"], "a": ["hello"]}).save_to_disk(root)
    >>> load_hf_pairs(root, columns={"query": "q", "positive": "a"}).positive
    ['hello']
    """
    check_split(split)
    root = Path(root)
    if not root.exists():
        raise missing("Hugging Face dataset", root, None, "root")
    data = _open(root, hf_split)
    available = list(data.column_names)
    mapping = check_columns(columns if columns is not None else {}, available, str(root))
    assert mapping is not None
    if columns is None:  # the standard names, whichever of the optional ones exist
        mapping.update({k: k for k in ("id", "label") if k in available})
        negs = [c for c in available if c in ("negative", "negatives") or c.startswith("negative_")]
        if negs:
            mapping["negatives"] = negs
    label_names = None
    label_col = mapping.get("label")
    if isinstance(label_col, str):
        feature = data.features[label_col]
        label_names = getattr(feature, "names", None)  # a ClassLabel
    rows = []
    for i, row in enumerate(data.to_list()):
        mapped = _mapped(row, mapping)
        if (
            label_names is not None
            and isinstance(mapped.get("label"), int)
            and mapped["label"] >= 0
        ):
            mapped["label"] = label_names[mapped["label"]]
        rows.append((f"{root}[row {i}]", str(i), mapped))
    return pairs_from_rows(rows, str(root), split, test_fraction, seed)
