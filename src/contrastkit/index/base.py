"""The index interface shared by every backend, the search result and the on-disk format.

Shapes: ``vectors: (N, D)`` corpus, ``query: (Q, D)``, results ``(Q, K)`` with
``K = min(k, len(index))``.

Scores follow :mod:`contrastkit.functional.similarity`: larger always means more similar
(``cosine`` and ``dot`` are inner products, cosine on L2-normalised vectors; ``euclidean`` is the
negative L2 distance). The metric is fixed when the index is created, stored with it and applied to
every query, so a query cannot be searched with the wrong one.

File format (one file, written atomically): ``MAGIC``, an 8-byte little-endian header length, a
UTF-8 JSON header (backend, metric, dim, params, ids, metadata), the backend payload (raw
float32 vectors or a serialised FAISS index) and the 32-byte sha256 of everything before it
(checked on load: a flipped bit or a truncated file is an error naming the file). No pickle:
loading a file never runs code.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from contrastkit._checks import check_tensor
from contrastkit.atomic import write_bytes
from contrastkit.functional.similarity import check_metric
from contrastkit.registry import Registry

__all__ = [
    "INDEXES",
    "Index",
    "SearchResult",
    "atomic_write",
    "build_index",
    "create_index",
    "list_indexes",
    "load_index",
]

MAGIC = b"CKINDEX1"
FORMAT_VERSION = 1

INDEXES: Registry[Any] = Registry("index backend")
"""Every backend: each module registers its :class:`Index` subclasses here, and each class
declares what it is in its class attributes (``backend``, ``search_knobs``, ``clamps_k``). The
package ``__init__`` imports the backend modules, so importing anything from
``contrastkit.index`` fills the registry; this module imports none of them (no import cycle)."""


class SearchResult:
    """Top-K neighbours of each query, best first.

    Attributes:
        scores: (Q, K) float32 similarities (larger is closer; ``-inf`` in empty slots).
        indices: (Q, K) long positions in the index (insertion order); ``-1`` in empty slots
            (an approximate backend may return fewer than K neighbours).

    ``ids`` and ``metadata`` are looked up on first access only, so searching costs nothing
    for callers that need positions alone.
    """

    def __init__(
        self, scores: Tensor, indices: Tensor, ids: Sequence[str], metadata: Sequence[Any]
    ) -> None:
        self.scores = scores
        self.indices = indices
        self._all_ids = ids
        self._all_metadata = metadata
        self._ids: list[list[str | None]] | None = None
        self._metadata: list[list[Any]] | None = None

    @property
    def ids(self) -> list[list[str | None]]:
        """(Q, K) nested list of string ids; ``None`` in empty slots."""
        if self._ids is None:
            ids = self._all_ids
            self._ids = [[ids[i] if i >= 0 else None for i in row] for row in self.indices.tolist()]
        return self._ids

    @property
    def metadata(self) -> list[list[Any]]:
        """(Q, K) nested list of the metadata stored with each neighbour; ``None`` in empty slots."""
        if self._metadata is None:
            meta = self._all_metadata
            self._metadata = [
                [meta[i] if i >= 0 else None for i in row] for row in self.indices.tolist()
            ]
        return self._metadata

    def __repr__(self) -> str:
        return f"SearchResult(queries={self.indices.shape[0]}, k={self.indices.shape[1]})"


def as_float32_numpy(name: str, x: object, dim: int | None = None) -> np.ndarray:
    """Check ``x`` is a finite (N, D) float tensor or array; return it as contiguous float32 numpy.

    The checks run in numpy, single-threaded: a torch parallel region here would wait for an
    OpenMP helper thread, which on a busy machine costs more than a fast ANN search.
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name} must be a floating array, got dtype {x.dtype}.")
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}.")
    else:
        check_tensor(name, x, ndim=2, finite=False)
        x = x.detach().to("cpu", torch.float32).numpy()  # type: ignore[union-attr]
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.shape[1] == 0:
        raise ValueError(
            f"{name} must have a non-empty embedding dimension, got shape {arr.shape}."
        )
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name} has dimension {arr.shape[1]} but the index was built for dimension {dim}; "
            "encode the query with the same model (and projection) as the indexed vectors."
        )
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s); check the encoder output "
            "(a diverged step, a learning rate too high, or fp16 overflow)."
        )
    return arr


class Index(ABC):
    """One interface over every backend: ``add`` / ``search`` / ``save`` / ``load``.

    Args:
        dim: D, the embedding dimension.
        metric: ``"cosine"`` (inner product on L2-normalised vectors), ``"dot"`` or
            ``"euclidean"`` (scores are negative L2 distances). Fixed for the index's lifetime.

    Every vector carries a string id (default: its position as a string) and a JSON-serialisable
    metadata value (default ``None``); both are saved with the vectors.
    """

    backend: ClassVar[str] = ""
    #: Query-time settings ``search`` accepts, public name -> attribute (e.g. ``{"nprobe":
    #: "nprobe"}``); a backend without a setting rejects it with a clear error.
    search_knobs: ClassVar[dict[str, str]] = {}
    #: Whether ``search`` may return fewer than ``k`` columns when ``k > len(index)``. The
    #: compressed backends refuse instead: their codes cannot tell a caller which of the
    #: returned neighbours are real, so a too-large ``k`` is a mistake worth naming.
    clamps_k: ClassVar[bool] = True

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"dim must be a positive int (the embedding width D), got {dim!r}.")
        self.dim = dim
        self.metric = check_metric(metric)
        self._ids: list[str] = []
        self._metadata: list[Any] = []
        self._id_set: set[str] = set()

    # -- backend hooks -------------------------------------------------------------------
    @abstractmethod
    def _add_vectors(self, vectors: np.ndarray) -> None:
        """Append (n, D) float32 vectors (already normalised for cosine)."""

    @abstractmethod
    def _search_vectors(self, query: np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        """(Q, K) scores and long positions for (Q, D) float32 queries (normalised for cosine)."""

    @abstractmethod
    def _payload(self) -> bytes | memoryview:
        """Backend state as bytes (the vectors or a serialised FAISS index)."""

    @abstractmethod
    def _restore(self, payload: bytes, count: int) -> None:
        """Inverse of ``_payload`` on a freshly constructed index that must hold ``count``
        vectors (the ids of the header); raise ``ValueError`` if the payload is anything else."""

    def params(self) -> dict[str, Any]:
        """Constructor keyword arguments other than ``dim`` and ``metric`` (saved with the index)."""
        return {}

    def _train_vectors(self, vectors: np.ndarray) -> None:  # noqa: B027 - optional hook, no-op by default
        """Train on (n, D) float32 vectors (already normalised for cosine); only called while
        ``is_trained`` is False. Backends that need training override it."""

    def _save_sidecars(self, path: Path) -> dict[str, dict[str, Any]]:
        """Write files that live beside the index file (before the index file is written) under
        names no earlier save used; return ``{file name: {"size", "sha256"}}`` for the header.
        The index file, written last, is the one commit point: it names the files it goes with."""
        return {}

    def _load_sidecars(self, path: Path, files: dict[str, dict[str, Any]]) -> None:  # noqa: B027
        """Open the files :meth:`_save_sidecars` wrote (already checked against ``files``),
        after ``_restore``."""

    def spool_to(self, folder: str | os.PathLike[str]) -> None:  # noqa: B027 - optional hook
        """Let a backend that keeps float copies beside its codes (``faiss_binary``) keep them in a
        file under ``folder`` instead of memory while it is built; other backends ignore it.
        Streaming builds call it so memory does not grow with the float vectors."""

    @property
    def is_trained(self) -> bool:
        """False until a backend that needs training (IVF, PQ, SQ8) has seen its sample."""
        return True

    @property
    def bytes_per_vector(self) -> float:
        """Bytes the backend keeps in memory per stored vector: its codes plus FAISS's own
        per-vector bookkeeping (graph links, inverted-list ids). Excludes the string ids and
        metadata every backend keeps alike. Float32 storage: ``4 * D``."""
        return 4.0 * self.dim

    # -- public interface ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        """The string id of every stored vector, in insertion order (a copy)."""
        return list(self._ids)

    @property
    def metadata(self) -> list[Any]:
        """The metadata of every stored vector, in insertion order (a copy)."""
        return list(self._metadata)

    def add(
        self,
        vectors: Tensor | np.ndarray,
        ids: Sequence[str] | None = None,
        metadata: Sequence[Any] | None = None,
    ) -> None:
        """Append vectors with their ids and metadata.

        Args:
            vectors: (N, D) floating, finite.
            ids: N unique strings (default: ``str(position)``); must not repeat stored ids.
            metadata: N JSON-serialisable values (default ``None`` each).
        """
        arr = as_float32_numpy("vectors", vectors, self.dim)
        n = arr.shape[0]
        ids = self._check_ids(ids, n)
        metadata = self._check_metadata(metadata, n)
        if n == 0:
            return
        if self.metric == "cosine":
            arr = _normalize_rows(arr)
        if not self.is_trained:  # the first vectors are the training sample
            self._train_vectors(arr)
        self._add_vectors(arr)
        self._ids.extend(ids)
        self._id_set.update(ids)
        self._metadata.extend(metadata)

    def train(self, sample: Tensor | np.ndarray) -> None:
        """Train the backend on ``sample: (n, D)`` before adding (IVF centroids, PQ codebooks,
        SQ8 ranges). Without it, the first ``add`` trains on its own vectors. Backends that need
        no training (exact, flat, HNSW, fp16, binary) accept a sample and ignore it; a trained
        index ignores further samples (retraining would invalidate stored codes)."""
        arr = as_float32_numpy("sample", sample, self.dim)
        if arr.shape[0] == 0:
            raise ValueError("sample is empty (0 rows); train on a sample of the corpus vectors.")
        if self.is_trained:
            return
        if self.metric == "cosine":
            arr = _normalize_rows(arr)
        self._train_vectors(arr)

    def search(
        self,
        query: Tensor | np.ndarray,
        k: int,
        *,
        metric: str | None = None,
        nprobe: int | None = None,
        ef: int | None = None,
    ) -> SearchResult:
        """The ``k`` most similar stored vectors for each query row.

        Args:
            query: (Q, D) floating, finite, with the index's D.
            k: neighbours per query; K = min(k, len(index)) columns are returned (the compressed
                backends raise instead when ``k > len(index)``).
            metric: optional assertion: if given it must equal the index's metric (the metric
                itself always comes from the index).
            nprobe: IVF backends only: cells visited for this call (default: the index's
                ``nprobe``).
            ef: HNSW only: candidate list for this call (default: the index's ``ef_search``).

        Returns:
            A :class:`SearchResult` with (Q, K) ``scores`` and ``indices``.
        """
        knobs = {
            name: value for name, value in (("nprobe", nprobe), ("ef", ef)) if value is not None
        }
        for name, value in knobs.items():
            if name not in self.search_knobs:
                takes = (
                    "IVF backends (faiss_ivf, faiss_ivfpq)" if name == "nprobe" else "faiss_hnsw"
                )
                raise ValueError(
                    f"{name}={value!r} is a search setting of {takes}; this index is "
                    f"{self.backend!r}: drop {name}, or build the index with one of those backends."
                )
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not knobs:
            return self._search(query, k, metric)
        saved = {name: getattr(self, self.search_knobs[name]) for name in knobs}
        try:
            for name, value in knobs.items():
                setattr(self, self.search_knobs[name], value)
            return self._search(query, k, metric)
        finally:
            for name, value in saved.items():
                setattr(self, self.search_knobs[name], value)

    def _search(self, query: Tensor | np.ndarray, k: int, metric: str | None) -> SearchResult:
        if metric is not None and metric != self.metric:
            raise ValueError(
                f"this index was built with metric={self.metric!r}, got metric={metric!r}; "
                f"search it with metric={self.metric!r} (or omit metric), or build a new index "
                f"with metric={metric!r}."
            )
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}.")
        arr = as_float32_numpy("query", query, self.dim)
        if len(self) == 0:
            raise ValueError("the index is empty; call add(vectors) before search.")
        if k > len(self) and not self.clamps_k:
            raise ValueError(
                f"k={k} is more than the {len(self)} vectors this {self.backend} index holds; "
                f"ask for k <= {len(self)} (or add more vectors)."
            )
        if self.metric == "cosine":
            arr = _normalize_rows(arr)
        scores, indices = self._search_vectors(arr, min(k, len(self)))
        return SearchResult(scores, indices, self._ids, self._metadata)

    def search_among(
        self, query: Tensor | np.ndarray, k: int, positions: Sequence[int] | np.ndarray
    ) -> SearchResult:
        """The ``k`` most similar stored vectors among ``positions`` (e.g. the items a metadata
        filter matches) for each query row. Backends that can score a subset alone (exact,
        ``faiss_flat``, ``faiss_sq8``, ``faiss_fp16``) score only those vectors; the others rank
        the whole index once and keep those positions.

        Args:
            query: (Q, D) floating, finite, with the index's D.
            k: neighbours per query; K = min(k, P) columns, P the distinct positions.
            positions: (P,) positions in the index (insertion order); order and repeats ignored.

        Returns:
            A :class:`SearchResult` with (Q, K) ``scores`` and ``indices`` (``-1`` / ``-inf`` in
            slots an approximate backend left empty).
        """
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}.")
        among = np.unique(np.asarray(positions, dtype=np.int64).ravel())  # (P,) sorted
        if among.size and (among[0] < 0 or among[-1] >= len(self)):
            bad = int(among[0] if among[0] < 0 else among[-1])
            raise ValueError(
                f"positions holds {bad}, outside this index of {len(self)} vectors; pass "
                f"positions from 0 to {len(self) - 1}."
            )
        arr = as_float32_numpy("query", query, self.dim)
        if among.size == 0:
            empty = torch.empty((arr.shape[0], 0))
            return SearchResult(empty, empty.long(), self._ids, self._metadata)
        if self.metric == "cosine":
            arr = _normalize_rows(arr)
        scores, indices = self._search_among(arr, min(k, among.size), among)
        return SearchResult(scores, indices, self._ids, self._metadata)

    def _search_among(
        self, query: np.ndarray, k: int, positions: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        """(Q, k) scores and positions among sorted ``positions: (P,)``, k <= P. This default
        ranks the whole index and keeps the rows at ``positions``; backends that can score a
        subset alone override it."""
        scores, indices = self._search_vectors(query, len(self))  # (Q, N) best first
        keep = np.isin(indices.numpy(), positions)  # (Q, N)
        out_scores = torch.full((query.shape[0], k), float("-inf"))
        out_indices = torch.full((query.shape[0], k), -1, dtype=torch.long)
        for row in range(query.shape[0]):
            cols = torch.from_numpy(np.flatnonzero(keep[row])[:k])
            out_scores[row, : len(cols)] = scores[row, cols]
            out_indices[row, : len(cols)] = indices[row, cols]
        return out_scores, out_indices

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to one file atomically (temp file, fsync, ``os.replace``)."""
        header = {
            "format": FORMAT_VERSION,
            "backend": self.backend,
            "dim": self.dim,
            "metric": self.metric,
            "params": self.params(),
            "ids": self._ids,
            "metadata": self._metadata,
        }
        header["checksum"] = CHECKSUM  # the file ends in the sha256 of all bytes before it
        # Sidecars first, under new names; the index file naming them (and their sha256) is
        # renamed into place last: a reader sees the old pair or the new pair, never a mix.
        header["sidecars"] = sidecars = self._save_sidecars(Path(path))
        head = json.dumps(header).encode("utf-8")
        chunks = [MAGIC, struct.pack("<Q", len(head)), head, self._payload()]
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        atomic_write(path, [*chunks, digest.digest()])
        _drop_old_sidecars(Path(path), keep=set(sidecars))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Index:
        """Read an index written by :meth:`save` (any backend; see :func:`load_index`)."""
        return load_index(path)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}{extra}, size={len(self)})"

    # -- helpers -------------------------------------------------------------------------
    def _check_ids(self, ids: Sequence[str] | None, n: int) -> list[str]:
        if ids is None:
            start = len(self._ids)
            ids = [str(start + i) for i in range(n)]
        else:
            ids = list(ids)
            if len(ids) != n:
                raise ValueError(f"ids must have one entry per vector ({n}), got {len(ids)}.")
            bad = next((i for i in ids if not isinstance(i, str)), None)
            if bad is not None:
                raise TypeError(f"ids must be strings, got {bad!r} ({type(bad).__name__}).")
        seen = set(ids)
        if len(seen) != n:
            raise ValueError("ids must be unique; the batch repeats an id.")
        clash = seen & self._id_set
        if clash:
            raise ValueError(
                f"ids already in the index: {sorted(clash)[:5]}; use new ids for new vectors."
            )
        return ids

    @staticmethod
    def _check_metadata(metadata: Sequence[Any] | None, n: int) -> list[Any]:
        if metadata is None:
            return [None] * n
        metadata = list(metadata)
        if len(metadata) != n:
            raise ValueError(f"metadata must have one entry per vector ({n}), got {len(metadata)}.")
        for i, m in enumerate(metadata):
            try:
                json.dumps(m)
            except (TypeError, ValueError) as err:
                raise TypeError(
                    f"metadata[{i}] must be JSON-serialisable (dict/list/str/number/bool/None), "
                    f"got {type(m).__name__}: {err}."
                ) from None
        return metadata


def _normalize_rows(arr: np.ndarray) -> np.ndarray:
    # Same rule as contrastkit.functional.similarity.normalize: zero rows stay zero.
    norm = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / np.where(norm > 1e-8, norm, 1.0), dtype=np.float32)


def atomic_write(path: str | os.PathLike[str], chunks: Sequence[bytes | memoryview]) -> None:
    """Write ``chunks`` to ``path`` so that readers see the old file or the new one, never half.

    A thin name kept for the index's callers: :func:`contrastkit.atomic.write_bytes` (temp file in
    the same folder, fsync, ``os.replace``, fsync of the folder; on an error the previous file is
    intact and a :class:`contrastkit.atomic.WriteFailedError` names the path and bytes needed).
    """
    write_bytes(path, chunks)


CHECKSUM = "sha256-trailer"
_REBUILD = "rebuild it with `contrastkit index RUN` (or Index.save)"


def _bad_file(path: str | os.PathLike[str], what: str) -> ValueError:
    return ValueError(f"{os.fspath(path)}: {what}; {_REBUILD}.")


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """The header and payload of an index file; a ValueError naming the file if it is not one."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{os.fspath(path)}: no index file; build it with `contrastkit "
            "index RUN` (or Index.save)."
        )
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise _bad_file(path, "not a contrastkit index file (bad magic bytes)")
    start = len(MAGIC) + 8
    if len(data) < start:
        raise _bad_file(path, f"truncated index file ({len(data)} bytes)")
    (head_len,) = struct.unpack("<Q", data[len(MAGIC) : start])
    if start + head_len > len(data):
        raise _bad_file(
            path, f"truncated index file ({len(data)} bytes, header needs {start + head_len})"
        )
    try:
        header = json.loads(data[start : start + head_len].decode("utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise _bad_file(path, f"corrupt index header ({err})") from None
    if not isinstance(header, dict):
        raise _bad_file(path, "corrupt index header (not a JSON object)")
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{os.fspath(path)} has index format {header.get('format')!r}; this contrastkit "
            f"reads format {FORMAT_VERSION}; {_REBUILD}."
        )
    if header.get("checksum") != CHECKSUM:  # an older file, or one that dropped the field
        raise _bad_file(path, "no sha256 checksum in the index header (an older or foreign file)")
    end = len(data) - 32
    if end < start + head_len or hashlib.sha256(data[:end]).digest() != data[end:]:
        raise _bad_file(path, "corrupt index (its sha256 does not match the content)")
    return header, data[start + head_len : end]


def _drop_old_sidecars(path: Path, keep: set[str]) -> None:
    """Remove the sidecars of earlier saves of ``path`` (any ``<name>.*.f32``, and the
    ``<name>.f32`` of older contrastkit) once the index file naming ``keep`` is in place."""
    for old in path.parent.glob(f"{glob_escape(path.name)}.*f32"):
        if old.name not in keep and old.is_file() and not old.is_symlink():
            old.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters quoted."""
    import glob

    return glob.escape(name)


def check_sidecars(path: Path, files: object) -> dict[str, dict[str, Any]]:
    """Check the ``sidecars`` entry of an index header: every file named beside ``path``, of
    the recorded size and sha256. Returns the entries; a ValueError / FileNotFoundError names
    the file."""
    if not isinstance(files, dict):
        raise _bad_file(path, f"corrupt index header (sidecars is {type(files).__name__})")
    checked: dict[str, dict[str, Any]] = {}
    for name, entry in files.items():
        if (
            not isinstance(name, str)
            or not name.startswith(path.name + ".")
            or "/" in name
            or "\\" in name
            or not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise _bad_file(path, f"corrupt index header (sidecar entry {name!r})")
        side = path.parent / name
        if not side.is_file():
            raise FileNotFoundError(
                f"{os.fspath(side)!r} is missing: {path.name} keeps part of its data in it; copy "
                "both files together, or rebuild the index."
            )
        size = side.stat().st_size
        if size != entry["size"] or _file_sha256(side) != entry["sha256"]:
            raise ValueError(
                f"{os.fspath(side)!r} ({size} bytes) does not match the size and sha256 that "
                f"{path.name} records for it: the files come from different saves or one is "
                "damaged: rebuild the index."
            )
        checked[name] = entry
    return checked


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_indexes(pattern: str = "*") -> list[str]:
    """Registered backend names, e.g. ``['exact', 'faiss_flat', 'faiss_hnsw', 'faiss_ivf']``."""
    return INDEXES.list(pattern)


def create_index(backend: str, dim: int, metric: str = "cosine", **params: Any) -> Index:
    """An empty index of a registered backend.

    >>> create_index("exact", dim=4, metric="dot")
    ExactIndex(dim=4, metric='dot', chunk_size=16384, size=0)
    """
    return INDEXES.get(backend)(dim=dim, metric=metric, **params)


def build_index(
    vectors: Tensor | np.ndarray,
    backend: str = "exact",
    metric: str = "cosine",
    ids: Sequence[str] | None = None,
    metadata: Sequence[Any] | None = None,
    **params: Any,
) -> Index:
    """Create an index sized to ``vectors: (N, D)`` and add them (IVF trains on them first).

    >>> index = build_index(torch.eye(3), metric="cosine", ids=["a", "b", "c"])
    >>> index.search(torch.tensor([[0.0, 2.0, 0.1]]), k=2).ids
    [['b', 'c']]
    """
    if not isinstance(vectors, (Tensor, np.ndarray)) or vectors.ndim != 2:
        raise ValueError(
            f"vectors must be a 2-D (N, D) tensor or array, got {type(vectors).__name__} "
            f"with shape {tuple(getattr(vectors, 'shape', ()))}."
        )
    index = create_index(backend, dim=int(vectors.shape[1]), metric=metric, **params)
    index.add(vectors, ids=ids, metadata=metadata)
    return index


def load_index(path: str | os.PathLike[str]) -> Index:
    """Read any index written by ``Index.save``; it answers queries exactly as the saved one.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a complete index file (foreign, truncated or corrupted);
            the message names the file and says to rebuild it.
    """
    for attempt in range(3):
        before = _identity(path)
        try:
            return _load(path)
        except FileNotFoundError:
            # a sidecar of the file read was removed by a save that replaced the index file
            # meanwhile: read the new pair (a missing file of an unchanged index is an error)
            if attempt == 2 or _identity(path) in (before, None):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _load(path: str | os.PathLike[str]) -> Index:
    header, payload = _read(path)
    ids, metadata = header.get("ids"), header.get("metadata")
    if not isinstance(ids, list) or not isinstance(metadata, list):
        raise _bad_file(path, "corrupt index header (ids and metadata must be lists)")
    if len(metadata) != len(ids):
        raise _bad_file(path, f"corrupt index ({len(ids)} ids, {len(metadata)} metadata)")
    if not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
        raise _bad_file(path, "corrupt index header (ids must be unique strings)")
    params = header.get("params")
    if not isinstance(params, dict):
        raise _bad_file(path, "corrupt index header (params is not a mapping)")
    sidecars = check_sidecars(Path(path), header.get("sidecars", {}))
    try:
        index = INDEXES.get(header["backend"])(dim=header["dim"], metric=header["metric"], **params)
        index._restore(payload, len(ids))  # the payload must hold exactly one vector per id
    except Exception as err:  # any inconsistency of header and payload is a corrupt file
        raise _bad_file(path, f"corrupt index ({type(err).__name__}: {err})") from None
    index._ids = ids
    index._id_set = set(index._ids)
    index._metadata = metadata
    index._load_sidecars(Path(path), sidecars)
    return index
