"""Index a corpus larger than memory: embed it chunk by chunk into a memory-mapped file, then
train the index on a sample and add chunk by chunk; resumable from the last complete chunk.

Files written in ``folder`` (each chunk is complete before the progress file says so):

- ``embeddings.f32`` or ``embeddings.f16``: the (N, D) embeddings, raw little-endian, to be
  memory-mapped by readers (written and read here with positioned I/O, so the OS page cache, not
  the process, holds them: :class:`EmbeddingFile`);
- ``metadata.jsonl``: one JSON value per document, appended per chunk;
- ``progress.json``: written atomically after every chunk: the settings, the rows done, the
  metadata file's length at that point, and per chunk the sha256 of its embedding and metadata
  bytes. An interrupted run restarted with the same settings continues after the last chunk that
  still hashes to what was written (the metadata file is cut back to its length there; a
  damaged chunk and every later one are embedded again); other settings start over. It is
  removed once the index file is saved.

Peak memory is one chunk of embeddings, the training sample and the index itself (its codes plus
the ids and metadata every index keeps); it does not grow with N otherwise.

The corpus comes from a :class:`ChunkSource`: ``size()`` documents and ``chunk(start, stop) ->
(embeddings (n, W), metadata list)``. What to build is one :class:`IndexSpec` (the backend, its
metric and parameters, the training sample); how the embeddings are kept is one
:class:`EmbeddingSpec` (width, storage dtype, chunk, the model they come from).

>>> import torch, tempfile
>>> corpus = TensorSource(torch.eye(6, 4), [{"n": i} for i in range(6)])
>>> built = stream_index(corpus, tempfile.mkdtemp(), IndexSpec("exact"), EmbeddingSpec(chunk=4),
...                      progress=False)
>>> len(built.index), built.index.backend
(6, 'exact')
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from contrastkit.atomic import open_nofollow, pwrite_all, refuse_symlink
from contrastkit.errors import ArgumentError, ArgumentWarning
from contrastkit.index.base import Index, atomic_write, create_index

__all__ = [
    "EMBEDDINGS_FILES",
    "METADATA_FILE",
    "PROGRESS_FILE",
    "ChunkSource",
    "EmbeddedCorpus",
    "EmbeddingFile",
    "EmbeddingSpec",
    "IndexSpec",
    "StreamedIndex",
    "TensorSource",
    "embed_to_folder",
    "index_parts",
    "shard_rows",
    "stream_index",
    "stream_index_sharded",
    "warn_dim_not_trained",
]

EMBEDDINGS_FILES = {"float32": "embeddings.f32", "float16": "embeddings.f16"}
METADATA_FILE = "metadata.jsonl"
PROGRESS_FILE = "progress.json"
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class ChunkSource(Protocol):
    """What :func:`stream_index` reads: ``size()`` documents, embedded ``chunk(start, stop)`` at a
    time as ``(embeddings: (stop - start, W) float, metadata: stop - start JSON values)``."""

    def size(self) -> int: ...

    def chunk(self, start: int, stop: int) -> tuple[Tensor | np.ndarray, list[Any]]: ...


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


@dataclass(frozen=True)
class IndexSpec:
    """The index a streamed build makes.

    Args:
        backend: a registered index backend (:func:`contrastkit.index.list_indexes`).
        metric: the index metric (``"cosine"``, ``"dot"``, ``"euclidean"``).
        params: the backend's own parameters (``nlist``, ``m``, ``nbits``, ``ef_search``...).
        train_size: rows (evenly spaced over the corpus) a backend that needs training trains on.

    >>> IndexSpec("faiss_ivfpq", params={"nlist": 8}).create(dim=16).nlist
    8
    """

    backend: str = "faiss_flat"
    metric: str = "cosine"
    params: Mapping[str, Any] = field(default_factory=dict)
    train_size: int = 65536

    def __post_init__(self) -> None:
        _positive_int("train_size", self.train_size)
        if not isinstance(self.params, Mapping) or not all(isinstance(k, str) for k in self.params):
            raise TypeError(
                f"params must be a mapping of backend parameter names to values, got "
                f"{self.params!r}; e.g. params={{'nlist': 1024}}."
            )

    def create(self, dim: int) -> Index:
        """An empty index of this spec for ``dim``-wide vectors."""
        return create_index(self.backend, dim=dim, metric=self.metric, **self.params)


@dataclass(frozen=True)
class EmbeddingSpec:
    """How a streamed build keeps the corpus embeddings.

    Args:
        dim: keep the first ``dim`` coordinates, L2-renormalised (Matryoshka truncation);
            default: the full width.
        dtype: ``"float32"`` or ``"float16"`` storage of the embeddings file.
        chunk: documents embedded and added at once (the memory bound).
        fingerprint: identifies the model (e.g. its checkpoint); a progress file written with
            another fingerprint is not resumed.
        trained_dims: the Matryoshka dims the model was trained with; a ``dim`` below the full
            width and not among them gives a warning (it runs: a user may want to measure it).
    """

    dim: int | None = None
    dtype: str = "float32"
    chunk: int = 4096
    fingerprint: str = ""
    trained_dims: Sequence[int] | None = None

    def __post_init__(self) -> None:
        _positive_int("chunk", self.chunk)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}.")
        if self.dim is not None and (
            not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim <= 0
        ):
            raise ValueError(
                f"dim must be a positive int (the kept embedding width), got {self.dim!r}."
            )


@dataclass
class StreamedIndex:
    """The result of :func:`stream_index`."""

    index: Index
    path: Path
    embeddings_path: Path
    resumed_from: int  # rows found complete from an earlier, interrupted run (0 if fresh)


def _prefix(arr: np.ndarray, dim: int, renormalize: bool) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float32)[:, :dim]  # (n, dim)
    if renormalize:
        norm = np.linalg.norm(arr, axis=1, keepdims=True)
        arr = arr / np.where(norm > 1e-8, norm, 1.0)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _write_progress(folder: Path, state: dict[str, Any]) -> None:
    atomic_write(folder / PROGRESS_FILE, [json.dumps(state).encode("utf-8")])


def _read_progress(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    path = folder / PROGRESS_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # unreadable: start over
        return None
    if not isinstance(state, dict) or state.get("settings") != settings:
        return None
    done, meta_bytes = state.get("done"), state.get("metadata_bytes")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (done, meta_bytes)):
        return None
    meta = folder / METADATA_FILE
    if (
        not 0 <= done <= settings["n"]
        or not meta_bytes >= 0
        or (meta.is_file() and meta.stat().st_size < meta_bytes)
    ):
        return None  # not what this build wrote: start over
    return state


@dataclass
class EmbeddedCorpus:
    """Rows ``start:stop`` of a corpus embedded into ``folder`` (one shard, or the whole corpus)."""

    folder: Path
    start: int
    stop: int
    dim: int
    dtype: str
    resumed_from: int

    @property
    def embeddings_path(self) -> Path:
        return self.folder / EMBEDDINGS_FILES[self.dtype]

    @property
    def metadata_path(self) -> Path:
        return self.folder / METADATA_FILE


def stream_index(
    source: ChunkSource,
    folder: str | os.PathLike[str],
    index: IndexSpec | None = None,
    embedding: EmbeddingSpec | None = None,
    *,
    index_file: str = "corpus.ckindex",
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> StreamedIndex:
    """Embed ``source`` in chunks into ``folder`` and build an index over it.

    Args:
        source: the corpus (:class:`ChunkSource`).
        folder: where the embeddings, metadata, progress and index files go.
        index: what to build (:class:`IndexSpec`; default: ``faiss_flat``, cosine).
        embedding: how the embeddings are kept (:class:`EmbeddingSpec`; default: full width,
            float32, 4096-row chunks).
        index_file: the index file name inside ``folder``.
        progress: show a tqdm bar (documents and docs/s).
        on_chunk: called with the rows done after every complete chunk (tests use it to
            interrupt a run).

    Returns:
        A :class:`StreamedIndex` (the index is also saved to ``folder / index_file``).
    """
    index, embedding = index or IndexSpec(), embedding or EmbeddingSpec()
    embedded = embed_to_folder(source, folder, embedding, progress=progress, on_chunk=on_chunk)
    built, path = index_parts([embedded], Path(folder) / index_file, index, chunk=embedding.chunk)
    return StreamedIndex(built, path, embedded.embeddings_path, embedded.resumed_from)


def embed_to_folder(
    source: ChunkSource,
    folder: str | os.PathLike[str],
    embedding: EmbeddingSpec | None = None,
    *,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    rows: tuple[int, int] | None = None,
) -> EmbeddedCorpus:
    """The embedding phase of :func:`stream_index`: rows ``rows = (start, stop)`` of ``source``
    (default: all) into ``folder``'s embeddings and metadata files, resumable chunk by chunk."""
    embedding = embedding or EmbeddingSpec()
    dim, dtype, chunk = embedding.dim, embedding.dtype, embedding.chunk
    fingerprint, trained_dims = embedding.fingerprint, embedding.trained_dims
    total = int(source.size())
    if total <= 0:
        raise ValueError("the corpus is empty (0 documents); nothing to index.")
    lo, hi = (0, total) if rows is None else rows
    if not 0 <= lo <= hi <= total:
        raise ValueError(f"rows must satisfy 0 <= start <= stop <= {total}, got {rows!r}.")
    n = hi - lo
    folder = Path(folder)
    refuse_symlink(folder, "index folder")  # a planted link would send every write elsewhere
    folder.mkdir(parents=True, exist_ok=True)

    probe = min(lo, total - 1)  # a shard may be empty: its width still comes from one row
    first, first_meta = source.chunk(probe, min(probe + chunk, hi) if n else probe + 1)
    first_np = first.detach().cpu().float().numpy() if isinstance(first, Tensor) else first
    width = int(first_np.shape[1])
    if dim is not None and dim > width:
        raise ArgumentError(
            f"{{dim}}={dim} is larger than the embedding width {width}; pass {{dim}} <= {width} "
            "(ideally one of the run's Matryoshka dims).",
            "dim",
        )
    keep = width if dim is None else dim
    if keep < width:
        warn_dim_not_trained(keep, trained_dims)
    settings = {
        "n": n,
        "rows": [lo, hi],
        "width": width,
        "dim": keep,
        "dtype": dtype,
        "chunk": chunk,
        "fingerprint": fingerprint,
    }
    emb_path = folder / EMBEDDINGS_FILES[dtype]
    meta_path = folder / METADATA_FILE
    for leftover in folder.glob(f".{PROGRESS_FILE}.*.tmp"):  # a killed build's temporary file
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)
    state = _read_progress(folder, settings)
    chunks: list[list[Any]] = []
    if state is not None and emb_path.exists() and meta_path.exists():
        store = EmbeddingFile(emb_path, n, keep, dtype, create=False)
        # every chunk recorded must still hash to what was written; the build resumes after
        # the last one that does (a damaged chunk and all after it are embedded again)
        chunks = _intact_chunks(state, store, meta_path, chunk)
        done, meta_bytes = (chunks[-1][0], chunks[-1][1]) if chunks else (0, 0)
        fd = open_nofollow(meta_path, os.O_RDWR)  # drop a partial chunk's metadata
        try:
            os.ftruncate(fd, meta_bytes)
        finally:
            os.close(fd)
    else:
        done, meta_bytes = 0, 0
        os.close(open_nofollow(meta_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        store = EmbeddingFile(emb_path, n, keep, dtype, create=True)
    resumed_from = done
    renormalize = dim is not None and dim < width

    from tqdm.auto import tqdm

    bar = tqdm(
        total=n, initial=done, unit="doc", unit_scale=True, desc="embed", disable=not progress
    )
    with os.fdopen(open_nofollow(meta_path, os.O_WRONLY | os.O_APPEND), "ab") as meta_out:
        for start in range(done, n, chunk):
            stop = min(start + chunk, n)
            if start == 0 and probe == lo:
                emb, meta = first_np, first_meta
            else:
                emb, meta = source.chunk(lo + start, lo + stop)
                if isinstance(emb, Tensor):
                    emb = emb.detach().cpu().float().numpy()
            if emb.shape != (stop - start, width) or len(meta) != stop - start:
                raise ValueError(
                    f"chunk({lo + start}, {lo + stop}) returned embeddings of shape "
                    f"{tuple(emb.shape)} and {len(meta)} metadata values; expected "
                    f"({stop - start}, {width}) and {stop - start}."
                )
            data = store.write(start, _prefix(emb, keep, renormalize))
            lines = b"".join(json.dumps(m).encode("utf-8") + b"\n" for m in meta)
            meta_out.write(lines)
            meta_out.flush()
            os.fsync(meta_out.fileno())
            meta_bytes += len(lines)
            chunks.append([stop, meta_bytes, _chunk_digest(data, lines)])
            state = {"settings": settings, "done": stop, "metadata_bytes": meta_bytes}
            _write_progress(folder, {**state, "chunks": chunks})
            bar.update(stop - start)
            if on_chunk is not None:
                on_chunk(stop)
    bar.close()
    store.close()
    return EmbeddedCorpus(folder, lo, hi, keep, dtype, resumed_from)


def index_parts(
    parts: Sequence[EmbeddedCorpus],
    path: str | os.PathLike[str],
    index: IndexSpec | None = None,
    *,
    chunk: int = 4096,
) -> tuple[Index, Path]:
    """The index phase: train on an evenly spaced sample of all ``parts`` (in order: shard 0,
    1, ...), add them chunk by chunk (``chunk`` rows at once) with ids = global positions, save
    to ``path`` and remove the parts' progress files. Parts must tile ``0:N`` and agree on width
    and dtype."""
    spec = index or IndexSpec()
    _positive_int("chunk", chunk)
    train_size = spec.train_size
    if not parts:
        raise ValueError("parts is empty; embed at least one shard before indexing.")
    parts = sorted(parts, key=lambda p: p.start)
    expected = 0
    for part in parts:
        if part.start != expected:
            raise ValueError(
                f"shard {part.folder} starts at row {part.start}, expected {expected}: the shard "
                "set has a gap or an overlap; embed every rank's share with the same world size."
            )
        if (part.dim, part.dtype) != (parts[0].dim, parts[0].dtype):
            raise ArgumentError(
                f"shard {part.folder} has {{dim}}={part.dim}, {{dtype}}={part.dtype} but shard "
                f"{parts[0].folder} has {{dim}}={parts[0].dim}, {{dtype}}={parts[0].dtype}; "
                "embed all shards with the same {dim} and {dtype}.",
                "dim",
                "dtype",
            )
        expected = part.stop
    n, keep = expected, parts[0].dim
    refuse_symlink(Path(path).parent, "index folder")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(Path(path))
    files = [
        EmbeddingFile(p.embeddings_path, p.stop - p.start, keep, p.dtype, create=False)
        for p in parts
    ]
    try:
        index = spec.create(keep)
        index.spool_to(Path(path).parent)  # faiss_binary: float copies on disk, not in memory
        if not index.is_trained:
            rows = np.unique(np.linspace(0, n - 1, num=min(train_size, n)).astype(np.int64))
            sample = [
                f.rows(rows[(rows >= p.start) & (rows < p.stop)] - p.start, chunk)
                for f, p in zip(files, parts)
                if ((rows >= p.start) & (rows < p.stop)).any()
            ]
            index.train(np.concatenate(sample))  # (S, D) evenly spaced sample
        for f, part in zip(files, parts):
            with os.fdopen(open_nofollow(part.metadata_path, os.O_RDONLY), "rb") as meta_in:
                for start in range(0, part.stop - part.start, chunk):
                    stop = min(start + chunk, part.stop - part.start)
                    meta = _read_metadata(meta_in, part.metadata_path, start, stop - start)
                    index.add(
                        f.read(start, stop),
                        ids=[str(part.start + i) for i in range(start, stop)],
                        metadata=meta,
                    )
    finally:
        for f in files:
            f.close()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(path)
    for part in parts:  # complete: a later run starts fresh
        (part.folder / PROGRESS_FILE).unlink(missing_ok=True)
    return index, path


def _chunk_digest(embeddings: bytes, metadata: bytes) -> str:
    """What progress.json records per chunk: sha256 of its embedding and metadata bytes."""
    digest = hashlib.sha256(embeddings)
    digest.update(metadata)
    return digest.hexdigest()[:32]


def _intact_chunks(
    state: dict[str, Any], store: EmbeddingFile, meta_path: Path, chunk: int
) -> list[list[Any]]:
    """The recorded chunks, in order, up to the first whose embeddings or metadata no longer
    hash to what was written (or whose record is not one this build wrote)."""
    records = state.get("chunks")
    if not isinstance(records, list) or not records or not isinstance(records[-1], list):
        return []
    if records[-1][:2] != [state["done"], state["metadata_bytes"]]:
        return []
    intact: list[list[Any]] = []
    start, meta_start = 0, 0
    fd = open_nofollow(meta_path, os.O_RDONLY)
    try:
        for record in records:
            if not (
                isinstance(record, list)
                and len(record) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in record[:2])
                and record[0] == min(start + chunk, store.n)
                and meta_start <= record[1] <= state["metadata_bytes"]
                and isinstance(record[2], str)
            ):
                break
            stop, meta_end, digest = record
            lines = os.pread(fd, meta_end - meta_start, meta_start)
            if _chunk_digest(store.read_bytes(start, stop), lines) != digest:
                break
            intact.append(record)
            start, meta_start = stop, meta_end
    finally:
        os.close(fd)
    return intact


def _read_metadata(handle: Any, path: Path, start: int, n: int) -> list[Any]:
    """The next ``n`` lines of ``metadata.jsonl`` (rows ``start...``) as JSON values; a short or
    damaged file is a ValueError naming it (the embedding phase wrote one line per row)."""
    out = []
    for row in range(start, start + n):
        line = handle.readline()
        try:
            if not line.endswith(b"\n"):
                raise ValueError("missing")
            out.append(json.loads(line))
        except (ValueError, RecursionError):
            raise ValueError(
                f"{path}: line {row + 1} is missing or not JSON; the embedding phase was "
                "interrupted or the file was changed: remove the folder's progress.json and "
                "rebuild the index"
            ) from None
    return out


def remove_leftovers(path: Path) -> None:
    """Remove the temporary files a killed build of index file ``path`` left in its folder:
    the atomic writer's ``.<name>.*.tmp`` (index, float file) and the binary backend's spool
    ``.binary-floats.*.tmp``. Called with the folder's build lock held (``contrastkit index``
    takes ``RUN/index.lock``), so no live build's file is touched."""
    folder = path.parent
    patterns = (f".{glob.escape(path.name)}.*.tmp", ".binary-floats.*.tmp")
    for pattern in patterns:
        for leftover in folder.glob(pattern):
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink(missing_ok=True)


def shard_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous rows ``(start, stop)`` of ``n`` that process ``rank`` of ``world`` embeds.

    >>> [shard_rows(10, r, 3) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world={world}), got {rank!r}.")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def stream_index_sharded(
    source: ChunkSource,
    folder: str | os.PathLike[str],
    index: IndexSpec | None = None,
    embedding: EmbeddingSpec | None = None,
    *,
    index_file: str = "corpus.ckindex",
    progress: bool = True,
) -> StreamedIndex | None:
    """:func:`stream_index` under ``torchrun``: every process embeds its share
    (:func:`shard_rows`) into ``folder/shard-R-of-W/``, then rank 0 trains and fills one index
    from the shards in rank order, identical to a single-process build (same rows, same sample,
    same ids). Returns the index on rank 0 and ``None`` on the other ranks (after rank 0 saved).
    Without an initialised process group (or with one process) it is :func:`stream_index`.
    """
    import torch.distributed as dist

    index, embedding = index or IndexSpec(), embedding or EmbeddingSpec()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stream_index(
            source, folder, index, embedding, index_file=index_file, progress=progress
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = shard_rows(int(source.size()), rank, world)
    part = embed_to_folder(
        source,
        Path(folder) / f"shard-{rank}-of-{world}",
        embedding if rank == 0 else replace(embedding, trained_dims=None),
        rows=rows,
        progress=progress and rank == 0,
    )
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, part)
    result = None
    if rank == 0:
        built, path = index_parts(parts, Path(folder) / index_file, index, chunk=embedding.chunk)
        result = StreamedIndex(built, path, part.embeddings_path, part.resumed_from)
    dist.barrier()  # the other ranks return once the index is saved
    return result


class EmbeddingFile:
    """The (N, D) embeddings file, read and written with plain positioned I/O (``pwrite`` /
    ``pread``) rather than a memory map: the data then sits in the OS page cache, which the
    kernel can drop, instead of in this process's resident set. The file itself is a raw
    little-endian array that readers can memory-map: ``np.memmap(path, dtype, shape=(N, D))``."""

    def __init__(self, path: Path, n: int, dim: int, dtype: str, *, create: bool) -> None:
        self.dtype, self.dim, self.n = DTYPES[dtype], dim, n
        self.row_bytes = dim * self.dtype.itemsize
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self._handle = os.fdopen(open_nofollow(path, flags), "r+b")  # closed by close()
        if create or os.fstat(self._handle.fileno()).st_size != n * self.row_bytes:
            self._handle.truncate(n * self.row_bytes)

    def write(self, start: int, rows: np.ndarray) -> bytes:
        """Rows ``start .. start + len(rows)``, durable (fsync) before returning; returns the
        bytes written."""
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        pwrite_all(self._handle.fileno(), data, start * self.row_bytes)  # a short write resumes
        os.fsync(self._handle.fileno())
        return data

    def read_bytes(self, start: int, stop: int) -> bytes:
        """The raw bytes of rows ``start:stop``."""
        return os.pread(
            self._handle.fileno(), (stop - start) * self.row_bytes, start * self.row_bytes
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as (stop - start, D) float32."""
        nbytes = (stop - start) * self.row_bytes
        data = os.pread(self._handle.fileno(), nbytes, start * self.row_bytes)
        return (
            np.frombuffer(data, dtype=self.dtype).reshape(stop - start, self.dim).astype(np.float32)
        )

    def rows(self, rows: np.ndarray, chunk: int) -> np.ndarray:
        """The given sorted rows as (len(rows), D) float32, reading one chunk at a time."""
        parts = []
        for start in range(0, self.n, chunk):
            stop = min(start + chunk, self.n)
            inside = rows[(rows >= start) & (rows < stop)]
            if inside.size:
                parts.append(self.read(start, stop)[inside - start])
        return np.concatenate(parts)

    def close(self) -> None:
        self._handle.close()


class TensorSource:
    """A :class:`ChunkSource` over embeddings already in memory: ``embeddings: (N, W)``."""

    def __init__(self, embeddings: Tensor | np.ndarray, metadata: list[Any]) -> None:
        if len(metadata) != embeddings.shape[0]:
            raise ValueError(
                f"metadata must have one entry per embedding ({embeddings.shape[0]}), got "
                f"{len(metadata)}."
            )
        self.embeddings, self.metadata = embeddings, metadata

    def size(self) -> int:
        return int(self.embeddings.shape[0])

    def chunk(self, start: int, stop: int) -> tuple[Tensor | np.ndarray, list[Any]]:
        return self.embeddings[start:stop], self.metadata[start:stop]


def warn_dim_not_trained(dim: int, trained: Sequence[int] | None) -> None:
    """Warn when ``dim`` truncates to a width the model was not trained for (Matryoshka)."""
    dims = list(trained) if trained else []
    if dim not in dims:
        hint = (
            f"the run's Matryoshka dims are {dims}"
            if dims
            else "the run was not trained with Matryoshka dims ({trained_dims})"
        )
        warnings.warn(
            ArgumentWarning(
                f"{{dim}} {dim}: {hint}; a truncated embedding of another width may search much "
                "worse.",
                "dim",
                "trained_dims",
            ),
            stacklevel=3,
        )
