"""The served index: re-read when its file changes, searched in batches.

``contrastkit index RUN`` replaces ``RUN/index/corpus.ckindex`` by an atomic rename; on each
search :class:`IndexHolder` compares the file's inode, mtime and size with the loaded one, reads
a new file in a thread while requests keep the old index, then swaps one reference. A request
holds the :class:`LoadedIndex` it started with, so a swap never fails one. Needs no web framework.

A filter is answered from a map of metadata value -> positions (:func:`value_positions`, built
per field on its first filtered search): a value no item holds gets no hits without a search,
and a known one has only its items scored (:meth:`contrastkit.index.Index.search_among`), never
the whole index in rounds.

A Milvus collection (``--index milvus://...``, :class:`contrastkit.index.milvus.MilvusIndex`) is
opened once (it has no file to watch: writes go to the collection), and filters are pushed down
to Milvus as expressions instead of answered from the value map.

Shapes: ``vectors: (Q, D)`` queries; hits are dicts ``{"id", "position", "score", "metadata"}``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IndexHolder",
    "LoadedIndex",
    "NoIndexHolder",
    "search_batch",
    "search_index",
    "search_many",
    "value_positions",
]

_SCALARS = (str, int, float, bool)  # the metadata values a filter can equal


def value_positions(values: list[Any]) -> dict[Any, int | np.ndarray]:
    """Value -> the positions holding it, for one metadata field (``values[i]``: item i's value,
    None where it has none): an int for a value one item holds (ids, text snippets), else a
    sorted int64 array. Values compare as Python's ``==`` does (``1 == 1.0``), as the filter
    always has; lists and objects, which never equal a filter's scalar, are left out.

    >>> table = value_positions(["x", "y", "x", None, [1]])
    >>> table["x"].tolist(), table["y"], sorted(table)
    ([0, 2], 1, ['x', 'y'])
    """
    table: dict[Any, Any] = {}  # value -> its first position
    repeated: dict[Any, list[int]] = {}  # value -> all its positions, for values held twice+
    for position, value in enumerate(values):
        if isinstance(value, _SCALARS):
            first = table.setdefault(value, position)
            if first != position:
                repeated.setdefault(value, [first]).append(position)
    for value, positions in repeated.items():
        table[value] = np.asarray(positions, dtype=np.int64)
    return table


@dataclass(frozen=True)
class LoadedIndex:
    """One read of the index file: the index, the file's identity, the filterable metadata
    fields, a version (1 at start, +1 per swap) and when it was read. For filters it keeps, per
    field, a map of value -> positions (:func:`value_positions`), built on the field's first
    filtered search (one pass over the metadata) and reused until the next swap."""

    index: Any
    signature: tuple[int, int, int]  # (inode, mtime_ns, size) of the file it was read from
    fields: tuple[str, ...]  # metadata keys a filter may use (plus "id")
    version: int
    loaded_at: float
    _tables: dict[str, dict[Any, Any]] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _table(self, key: str) -> dict[Any, Any]:
        with self._lock:  # one build per field, whichever thread searches first
            if key not in self._tables:
                if key == "id":  # a filter's "id" is the item id
                    values: list[Any] = self.index.ids
                else:
                    values = [m.get(key) if isinstance(m, dict) else None
                              for m in self.index.metadata]  # fmt: skip
                self._tables[key] = value_positions(values)
            return self._tables[key]

    def matching(self, flt: dict[str, Any]) -> np.ndarray:
        """(P,) sorted positions of the items whose metadata equals every value of ``flt``
        (``"id"``: the item id); empty, without a search, when a value is held by no item."""
        found: np.ndarray | None = None
        for key, value in flt.items():
            try:
                hit = self._table(key).get(value)
            except TypeError:  # an unhashable value equals no scalar
                hit = None
            if hit is None:
                return np.empty(0, dtype=np.int64)
            hit = np.atleast_1d(np.asarray(hit, dtype=np.int64))
            found = hit if found is None else np.intersect1d(found, hit, assume_unique=True)
        return found if found is not None else np.arange(len(self.index), dtype=np.int64)


class IndexHolder:
    """The current index of ``path``; :meth:`current` swaps in a newer file when it appears.

    A swap replaces one reference: a request holds the ``LoadedIndex`` it started with until it is
    done. While a new file is being read, requests keep getting the old index.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        on_reload: Callable[[], None] | None = None,
        dim: int | None = None,
    ) -> None:
        self.remote = str(path).startswith("milvus://")  # a Milvus collection, not a file
        self.path = Path(path) if not self.remote else path  # type: ignore[assignment]
        self.dim = dim  # the model's embedding width: a wider index file is refused
        if not self.remote and not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path}: no index file; build it with `contrastkit index RUN` or pass "
                "--index PATH."
            )
        self.on_reload = on_reload
        self.loaded = self._read(version=1)
        self._lock = asyncio.Lock()
        self._bad: tuple[int, int, int] | None = None  # a file that failed to load

    def _signature(self) -> tuple[int, int, int] | None:
        if self.remote:
            return None  # never re-read: the collection is updated in place
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self, version: int) -> LoadedIndex:
        from contrastkit.index import load_index

        signature = self._signature()
        if self.remote:
            from contrastkit.index.milvus import MilvusIndex

            index: Any = MilvusIndex.open(str(self.path), dim=self.dim, metric="cosine")
            fields = tuple(sorted({*index.fields, "id"}))
            return LoadedIndex(index, (0, 0, 0), fields, version, time.time())
        index = load_index(self.path)
        # an index built with `contrastkit index RUN --dim D'` is narrower than the model:
        # queries are truncated to its width as `contrastkit search` does (Matryoshka)
        if self.dim is not None and index.dim > self.dim:
            raise ValueError(
                f"{self.path}: the index holds {index.dim}-d vectors but the model embeds "
                f"{self.dim}-d; build the index from this run (`contrastkit index RUN`) or pass "
                "its --index."
            )
        fields = sorted(
            {key for meta in index.metadata if isinstance(meta, dict) for key in meta} | {"id"}
        )
        return LoadedIndex(index, signature or (0, 0, 0), tuple(fields), version, time.time())

    async def current(self, force: bool = False) -> LoadedIndex:
        """The index to search now; re-read first when the file changed (or ``force``).

        A new file that cannot be read (written in place, not renamed; truncated) leaves the
        loaded index in service and is not retried until the file changes again; with ``force``
        the error is raised for the caller to report.
        """
        signature = self._signature()
        unchanged = signature is None or signature in (self.loaded.signature, self._bad)
        if not force and (unchanged or self._lock.locked()):
            return self.loaded  # (while another request reads the new file: the old index)
        async with self._lock:
            signature = self._signature()
            if force or signature not in (self.loaded.signature, self._bad):
                try:
                    loaded = await asyncio.to_thread(self._read, self.loaded.version + 1)
                except Exception as err:
                    self._bad = signature
                    if force:
                        raise
                    warnings.warn(
                        f"{self.path}: the new index file is not readable ({err}); still "
                        f"serving version {self.loaded.version}.",
                        RuntimeWarning,
                        stacklevel=1,
                    )
                    return self.loaded
                self.loaded, self._bad = loaded, None
                if self.on_reload is not None:
                    self.on_reload()
        return self.loaded


def search_many(
    loaded: LoadedIndex, vectors: Any, ks: list[int], filters: list[dict[str, Any]]
) -> list[list[dict]]:
    """The best hits of each query ``vectors: (Q, D)``: ``ks[i]`` of them, matching
    ``filters[i]`` exactly.

    Unfiltered queries are searched in one index call. A filtered query scores only the items
    its filter matches (:meth:`LoadedIndex.matching`, then ``index.search_among``); a filter
    value no item holds answers no hits without a search.
    """
    index = loaded.index
    out: list[list[dict]] = [[] for _ in ks]
    if getattr(index, "pushes_filters", False):  # Milvus: the filter is an expression there
        plain = [i for i, flt in enumerate(filters) if not flt]
        if plain:
            result = index.search(vectors[plain], max(ks[i] for i in plain))  # (len(plain), K)
            for row, i in enumerate(plain):
                out[i] = _hits(result, row)[: ks[i]]
        for i, flt in enumerate(filters):
            if flt:
                out[i] = _hits(index.search(vectors[i : i + 1], ks[i], filter=flt), 0)
        return out
    plain = [i for i, flt in enumerate(filters) if not flt]
    if plain:
        k = min(len(index), max(ks[i] for i in plain))
        result = index.search(vectors[plain], k)  # (len(plain), K)
        for row, i in enumerate(plain):
            out[i] = _hits(result, row)[: ks[i]]
    for i, flt in enumerate(filters):
        if not flt:
            continue
        among = loaded.matching(flt)  # (P,)
        if among.size:
            out[i] = _hits(index.search_among(vectors[i : i + 1], ks[i], among), 0)
    return out


def _hits(result: Any, row: int) -> list[dict]:
    """Row ``row`` of a search result as hits, empty slots dropped."""
    scores, positions = result.scores[row].tolist(), result.indices[row].tolist()
    return [
        {"id": id_, "position": int(pos), "score": float(score), "metadata": meta}
        for score, pos, id_, meta in zip(scores, positions, result.ids[row], result.metadata[row])
        if pos >= 0
    ]


def search_index(loaded: LoadedIndex, vector: Any, k: int, flt: dict[str, Any]) -> list[dict]:
    """:func:`search_many` for one query ``vector: (1, D)``."""
    return search_many(loaded, vector, [k], [flt])[0]


def search_batch(kind: str, items: list[tuple[LoadedIndex, Any, int, dict]]) -> list[list[dict]]:
    """The search batcher's call: queries of one index version, each ``(loaded, vector: (D,),
    k, filter)``, searched together."""
    import torch

    vectors = torch.stack([item[1] for item in items])  # (Q, D)
    return search_many(items[0][0], vectors, [i[2] for i in items], [i[3] for i in items])


class _NoIndex:
    """The index of a run that embeds nothing: empty, of no width (what ``/health`` reads)."""

    backend, metric, dim = "none", "none", None
    ids: tuple[str, ...] = ()
    metadata: tuple[Any, ...] = ()

    def __len__(self) -> int:
        return 0


class NoIndexHolder:
    """The holder of a run served without an index (a cross-encoder: ``POST /rerank`` only):
    :meth:`current` always answers the same empty :class:`LoadedIndex`.

    >>> holder = NoIndexHolder()
    >>> len(holder.loaded.index), holder.path is None
    (0, True)
    """

    remote = False
    path = None
    dim = None

    def __init__(self) -> None:
        self.loaded = LoadedIndex(_NoIndex(), (0, 0, 0), (), 1, time.time())

    async def current(self, force: bool = False) -> LoadedIndex:
        return self.loaded
