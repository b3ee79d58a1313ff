"""Index a corpus larger than memory: embed it chunk by chunk into a memory-mapped file, then
train the index on a sample and add chunk by chunk; resumable from the last complete chunk.

Files written in ``folder`` (each chunk is complete before the progress file says so):

- ``embeddings.f32`` or ``embeddings.f16``: the (N, D) embeddings, raw little-endian, to be
  memory-mapped by readers (written and read here with positioned I/O, so the OS page cache, not
  the process, holds them: :class:`EmbeddingFile`);
- ``metadata.jsonl``: one JSON value per document, appended per chunk;
- ``progress.json``: written atomically after every chunk: the settings, the rows done and the
  metadata file's length at that point. An interrupted run restarted with the same settings
  continues from ``done`` (the metadata file is cut back to its recorded length); other
  settings start over. It is removed once the index file is saved.

Peak memory is one chunk of embeddings, the training sample and the index itself (its codes plus
the ids and metadata every index keeps); it does not grow with N otherwise.

The corpus comes from a :class:`ChunkSource`: ``size()`` documents and ``chunk(start, stop) ->
(embeddings (n, W), metadata list)``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from contrastkit.index.base import Index, atomic_write, create_index

__all__ = [
    "EMBEDDINGS_FILES",
    "METADATA_FILE",
    "PROGRESS_FILE",
    "ChunkSource",
    "EmbeddingFile",
    "StreamedIndex",
    "TensorSource",
    "stream_index",
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
    except (OSError, ValueError):
        return None
    if state.get("settings") != settings:
        return None
    return state


def stream_index(
    source: ChunkSource,
    folder: str | os.PathLike[str],
    *,
    backend: str = "faiss_flat",
    metric: str = "cosine",
    dim: int | None = None,
    chunk: int = 4096,
    dtype: str = "float32",
    train_size: int = 65536,
    fingerprint: str = "",
    trained_dims: Sequence[int] | None = None,
    index_file: str = "corpus.ckindex",
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    **params: Any,
) -> StreamedIndex:
    """Embed ``source`` in chunks into ``folder`` and build a ``backend`` index over it.

    Args:
        source: the corpus (:class:`ChunkSource`).
        folder: where the embeddings, metadata, progress and index files go.
        backend: a registered index backend (:func:`contrastkit.index.list_indexes`).
        metric: the index metric.
        dim: keep the first ``dim`` coordinates, L2-renormalised (Matryoshka truncation);
            default: the full width.
        chunk: documents embedded and added at once (the memory bound).
        dtype: ``"float32"`` or ``"float16"`` storage of the embeddings file.
        train_size: rows (evenly spaced over the corpus) a backend that needs training trains on.
        fingerprint: identifies the model (e.g. its checkpoint); a progress file written with
            another fingerprint is not resumed.
        trained_dims: the Matryoshka dims the model was trained with (``loss.matryoshka_dims``);
            a ``dim`` below the full width and not among them gives a warning (it runs: a user
            may want to measure it).
        index_file: the index file name inside ``folder``.
        progress: show a tqdm bar (documents and docs/s).
        on_chunk: called with the rows done after every complete chunk (tests use it to
            interrupt a run).
        params: backend parameters (``nlist``, ``m``, ``nbits``, ``ef_search``...).

    Returns:
        A :class:`StreamedIndex` (the index is also saved to ``folder / index_file``).
    """
    for name, value in (("chunk", chunk), ("train_size", train_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}.")
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0):
        raise ValueError(f"dim must be a positive int (the kept embedding width), got {dim!r}.")
    n = int(source.size())
    if n <= 0:
        raise ValueError("the corpus is empty (0 documents); nothing to index.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    first, first_meta = source.chunk(0, min(chunk, n))
    first_np = first.detach().cpu().float().numpy() if isinstance(first, Tensor) else first
    width = int(first_np.shape[1])
    if dim is not None and dim > width:
        raise ValueError(
            f"dim={dim} is larger than the embedding width {width}; pass --dim <= {width} "
            "(ideally one of the run's Matryoshka dims)."
        )
    keep = width if dim is None else dim
    if keep < width:
        warn_dim_not_trained(keep, trained_dims)
    settings = {
        "n": n,
        "width": width,
        "dim": keep,
        "dtype": dtype,
        "chunk": chunk,
        "fingerprint": fingerprint,
    }
    emb_path = folder / EMBEDDINGS_FILES[dtype]
    meta_path = folder / METADATA_FILE
    state = _read_progress(folder, settings)
    if state is not None and emb_path.exists() and meta_path.exists():
        done, meta_bytes = int(state["done"]), int(state["metadata_bytes"])
        with open(meta_path, "r+b") as handle:  # drop a partial chunk's metadata
            handle.truncate(meta_bytes)
        store = EmbeddingFile(emb_path, n, keep, dtype, create=False)
    else:
        done, meta_bytes = 0, 0
        meta_path.write_bytes(b"")
        store = EmbeddingFile(emb_path, n, keep, dtype, create=True)
    resumed_from = done
    renormalize = dim is not None and dim < width

    from tqdm.auto import tqdm

    bar = tqdm(
        total=n, initial=done, unit="doc", unit_scale=True, desc="embed", disable=not progress
    )
    with open(meta_path, "ab") as meta_out:
        for start in range(done, n, chunk):
            stop = min(start + chunk, n)
            if start == 0:
                emb, meta = first_np, first_meta
            else:
                emb, meta = source.chunk(start, stop)
                if isinstance(emb, Tensor):
                    emb = emb.detach().cpu().float().numpy()
            if emb.shape != (stop - start, width) or len(meta) != stop - start:
                raise ValueError(
                    f"chunk({start}, {stop}) returned embeddings of shape {tuple(emb.shape)} and "
                    f"{len(meta)} metadata values; expected ({stop - start}, {width}) and "
                    f"{stop - start}."
                )
            store.write(start, _prefix(emb, keep, renormalize))
            lines = b"".join(json.dumps(m).encode("utf-8") + b"\n" for m in meta)
            meta_out.write(lines)
            meta_out.flush()
            os.fsync(meta_out.fileno())
            meta_bytes += len(lines)
            _write_progress(
                folder, {"settings": settings, "done": stop, "metadata_bytes": meta_bytes}
            )
            bar.update(stop - start)
            if on_chunk is not None:
                on_chunk(stop)
    bar.close()
    del first_np, first_meta

    index = create_index(backend, dim=keep, metric=metric, **params)
    if not index.is_trained:
        rows = np.unique(np.linspace(0, n - 1, num=min(train_size, n)).astype(np.int64))
        index.train(store.rows(rows, chunk))  # (S, D) evenly spaced sample
    with open(meta_path, "rb") as meta_in:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            meta = [json.loads(next(meta_in)) for _ in range(stop - start)]
            index.add(
                store.read(start, stop),
                ids=[str(i) for i in range(start, stop)],
                metadata=meta,
            )
    store.close()
    path = folder / index_file
    index.save(path)
    (folder / PROGRESS_FILE).unlink(missing_ok=True)  # complete: a later run starts fresh
    return StreamedIndex(index, path, emb_path, resumed_from)


class EmbeddingFile:
    """The (N, D) embeddings file, read and written with plain positioned I/O (``pwrite`` /
    ``pread``) rather than a memory map: the data then sits in the OS page cache, which the
    kernel can drop, instead of in this process's resident set. The file itself is a raw
    little-endian array that readers can memory-map: ``np.memmap(path, dtype, shape=(N, D))``."""

    def __init__(self, path: Path, n: int, dim: int, dtype: str, *, create: bool) -> None:
        self.dtype, self.dim, self.n = DTYPES[dtype], dim, n
        self.row_bytes = dim * self.dtype.itemsize
        self._handle = open(path, "w+b" if create else "r+b")  # noqa: SIM115 - closed by close()
        if create or os.fstat(self._handle.fileno()).st_size != n * self.row_bytes:
            self._handle.truncate(n * self.row_bytes)

    def write(self, start: int, rows: np.ndarray) -> None:
        """Rows ``start .. start + len(rows)``, durable (fsync) before returning."""
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        os.pwrite(self._handle.fileno(), data, start * self.row_bytes)
        os.fsync(self._handle.fileno())

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
            else "the run was not trained with Matryoshka dims (loss.matryoshka_dims)"
        )
        warnings.warn(
            f"--dim {dim}: {hint}; a truncated embedding of another width may search much worse.",
            UserWarning,
            stacklevel=3,
        )
