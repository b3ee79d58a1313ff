"""Index a run's corpus and search it (uses :mod:`contrastkit.index`).

The corpus is what the run's task says it is (train images for image runs, the key side for pair
runs); each stored vector carries ``{"label", "text"}`` metadata and its position as id.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contrastkit.atomic import write_bytes

INDEX_FILE = "index/corpus.ckindex"


class TaskCorpus:
    """The run's corpus as a :class:`contrastkit.index.streaming.ChunkSource`: the task's
    ``corpus_size()`` and ``embed_corpus_chunk(start, stop)`` (one chunk embedded at a time, so
    memory stays bounded). Metadata per document: ``{"label", "text"}``."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def size(self) -> int:
        return int(self.task.corpus_size())

    def chunk(self, start: int, stop: int) -> tuple[Any, list[Any]]:
        part = self.task.embed_corpus_chunk(start, stop)
        meta = [
            {"label": label, "text": item if isinstance(item, str) else ""}
            for label, item in zip(part.labels, part.items)
        ]
        return part.embeddings, meta


def corpus_chunks(task: Any) -> TaskCorpus:
    """The chunked corpus source of a task (see :class:`TaskCorpus`)."""
    return TaskCorpus(task)


def _fingerprint(run: Path) -> str:
    from contrastkit.train.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run)
    if ckpt is None:
        return ""
    weights = ckpt / "model.safetensors"
    stamp = weights.stat().st_mtime_ns if weights.exists() else 0
    return f"{ckpt.name}:{stamp}"


def _join_torchrun() -> None:
    """Under ``torchrun`` (``WORLD_SIZE > 1``), join the process group so the ranks split the
    corpus (gloo: the index build exchanges only small objects and a barrier)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def build_index(
    run: str | os.PathLike,
    backend: str = "faiss_flat",
    *,
    dim: int | None = None,
    chunk: int = 4096,
    dtype: str = "float32",
    progress: bool = False,
    train_size: int = 65536,
    **params: Any,
) -> tuple[Path, int]:
    """Embed the run's corpus with its latest checkpoint and save a cosine index in the run.

    Under ``torchrun`` every process embeds its share of the corpus into
    ``RUN/index/shard-R-of-W/`` and rank 0 builds the one index from the shards (identical to a
    single-process build). The corpus is streamed ``chunk`` documents at a time into ``RUN/index/embeddings.f32`` (or
    ``.f16``) and then into the index (see :func:`contrastkit.index.streaming.stream_index`):
    an interrupted build resumes from its last complete chunk. ``dim`` keeps the first ``dim``
    coordinates, renormalised (Matryoshka); it warns when ``dim`` is not among the run's
    ``loss.matryoshka_dims``. ``params`` go to the backend (``nlist``, ``m``, ``nbits``...).
    """
    from contrastkit.atomic import refuse_symlink
    from contrastkit.index import list_indexes
    from contrastkit.index.streaming import EmbeddingSpec, IndexSpec, stream_index_sharded
    from contrastkit.train.run import load_run

    _join_torchrun()
    cfg, task, _ = load_run(run)
    if backend not in list_indexes():
        from contrastkit.index import create_index

        create_index(backend, dim=1)  # raises the registry's error with a suggestion
    trained_dims = getattr(getattr(cfg, "loss", None), "matryoshka_dims", None)
    folder = (Path(run) / INDEX_FILE).parent
    refuse_symlink(Path(run), "run folder")  # the index folder and its files: index/streaming.py
    embedding = EmbeddingSpec(
        dim=dim,
        dtype=dtype,
        chunk=chunk,
        fingerprint=_fingerprint(Path(run)),
        trained_dims=trained_dims,
    )
    index = IndexSpec(backend, "cosine", params, train_size)
    options: dict[str, Any] = {"index_file": Path(INDEX_FILE).name, "progress": progress}
    source = corpus_chunks(task)
    with _one_builder(Path(run)):
        try:
            built = stream_index_sharded(source, folder, index, embedding, **options)
        except ImportError:
            if backend != "faiss_flat":
                raise
            # faiss missing and the default backend asked: exact search is always available
            exact = IndexSpec("exact", "cosine", {}, train_size)
            built = stream_index_sharded(source, folder, exact, embedding, **options)
    path = folder / Path(INDEX_FILE).name
    if built is None:  # torchrun, rank > 0: rank 0 wrote the index from every rank's shard
        return path, source.size()
    return built.path, len(built.index)


@contextlib.contextmanager
def _one_builder(run: Path) -> Iterator[None]:
    """One index build of a run at a time (``RUN/index.lock``, an exclusive ``flock``): two
    `contrastkit index RUN` at once would share the streaming build's embeddings and progress
    files. Readers never wait: the index file itself is replaced atomically. Under torchrun
    the ranks build one index together, so no lock is taken."""
    from contrastkit.atomic import exclusive_lock

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        yield
        return
    run.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(run / "index.lock", what=f"the index build of {run}", wait=True):
        yield


QUERIES_DIR = "queries"


def example_queries(run: str | os.PathLike, n: int = 3) -> list[str]:
    """Queries to try ``search`` with: the first ``n`` held-out texts of a text run, or, for an
    image run, its first ``n`` test images written as PNG files under ``RUN/queries/``."""
    from contrastkit.train.run import load_run

    _, task, _ = load_run(run)
    out = []
    for i, (item, label) in enumerate(task.examples(n)):
        if isinstance(item, str):
            out.append(item)
            continue
        from PIL import Image

        pixels = (item.float().clamp(0, 1) * 255).round().byte()  # (C, H, W) in [0, 1]
        array = pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0)
        name = "".join(c if c.isalnum() else "_" for c in str(label)).strip("_").lower()
        path = Path(run) / QUERIES_DIR / f"test_{i}_{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(array.contiguous().numpy()).save(buffer, format="PNG")
        write_bytes(path, buffer.getvalue())
        out.append(str(path))
    return out


def _load(run: str | os.PathLike) -> Any:
    from contrastkit.index import load_index

    path = Path(run) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `contrastkit index {run}` first.")
    return load_index(path)


def _fit(vector: Any, index: Any) -> Any:
    """A query embedding at the index's width: truncated and renormalised when the index was
    built with ``--dim`` (Matryoshka)."""
    if vector.shape[-1] > index.dim:
        from contrastkit.losses.matryoshka import truncate_embeddings

        return truncate_embeddings(vector, index.dim)
    return vector


def search(
    run: str | os.PathLike,
    query: str,
    k: int = 5,
    *,
    nprobe: int | None = None,
    ef: int | None = None,
    index: str | None = None,
    filter: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` nearest corpus items of a text or image-path ``query``; ``nprobe`` (IVF) and
    ``ef`` (HNSW) override the index's search settings for this query. ``index``: another index
    file, or a Milvus collection (``milvus://...``, see :mod:`contrastkit.index.milvus`);
    ``filter``: metadata field -> value, all equal (``"id"``: the item id), pushed down to Milvus
    or, for a file index, scoring only the matching items."""
    from contrastkit.train.run import load_run

    if k <= 0:
        raise ValueError(f"k must be a positive int, got {k}.")
    remote = index is not None and _is_milvus(index)
    loaded = None if remote else (_load(run) if index is None else _load_file(index))
    _, task, _ = load_run(run)
    vector, _ = task.embed_query(query)
    if remote:
        from contrastkit.index.milvus import MilvusIndex

        collection = MilvusIndex.open(str(index), dim=int(vector.shape[-1]), metric="cosine")
        if nprobe is not None or ef is not None:
            raise ValueError("--nprobe/--ef are FAISS settings; a Milvus collection takes neither.")
        return _hits(collection.search(vector, k, filter=filter), 0)
    vector = _fit(vector, loaded)
    if filter:
        if nprobe is not None or ef is not None:
            raise ValueError("--nprobe/--ef do not apply to a filtered search; drop them.")
        among = [i for i, (id_, meta) in enumerate(zip(loaded.ids, loaded.metadata))
                 if all((id_ if key == "id" else (meta or {}).get(key)) == value
                        for key, value in filter.items())]  # fmt: skip
        return _hits(loaded.search_among(vector, k, among), 0) if among else []
    return _hits(loaded.search(vector, k, nprobe=nprobe, ef=ef), 0)


def _is_milvus(spec: str) -> bool:
    return str(spec).startswith("milvus://")


def _load_file(path: str | os.PathLike) -> Any:
    from contrastkit.index import load_index

    if not Path(path).is_file():
        raise FileNotFoundError(f"--index {path}: no such index file.")
    return load_index(path)


def search_neighbours_of_test(
    run: str | os.PathLike, n_queries: int = 5, k: int = 5
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Neighbours of the first test examples (the demo's printout and the report's table)."""
    from contrastkit.train.run import load_run

    index = _load(run)
    _, task, _ = load_run(run)
    examples = task.examples(n_queries)
    out = []
    for item, label in examples:
        if isinstance(item, str):
            vector, _ = task.embed_query(item)
        else:
            vector = task.features(item.unsqueeze(0))
        out.append((label, _hits(index.search(_fit(vector, index), k), 0)))
    return out


def _hits(result: Any, row: int) -> list[dict[str, Any]]:
    hits = []
    for score, pos, id_, meta in zip(
        result.scores[row].tolist(),
        result.indices[row].tolist(),
        result.ids[row],
        result.metadata[row],
    ):
        if pos < 0:
            continue
        hits.append({"score": float(score), "id": id_, "position": int(pos), **(meta or {})})
    return hits


__all__ = [
    "TaskCorpus",
    "build_index",
    "corpus_chunks",
    "example_queries",
    "index_to_milvus",
    "search",
    "search_neighbours_of_test",
]


def index_to_milvus(
    run: str | os.PathLike,
    uri: str,
    collection: str = "corpus",
    *,
    chunk: int = 4096,
    progress: bool = False,
) -> tuple[str, int]:
    """Embed the run's corpus chunk by chunk into the Milvus collection ``collection`` at
    ``uri`` (a server's ``http://HOST:19530``, or a milvus-lite file ``PATH.db``): vectors, ids
    (positions, as the file index) and metadata (``{"label", "text"}``). An older collection of
    the same width and metric is replaced; another is refused. Returns the ``milvus://`` spec
    that ``serve --index`` and ``search --index`` take, and the count written."""
    from contrastkit.index.milvus import MilvusIndex
    from contrastkit.train.run import load_run

    if not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}.")
    _, task, _ = load_run(run)
    source = corpus_chunks(task)
    total = source.size()
    target: MilvusIndex | None = None
    fields: set[str] = set()
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        vectors, meta = source.chunk(start, stop)  # (n, D), n dicts
        fields |= {key for m in meta if isinstance(m, dict) for key in m}
        if target is None:
            strings = sorted(key for key in fields  # mirrored in VARCHAR columns: fast filters
                             if all(isinstance((m or {}).get(key), str) for m in meta))  # fmt: skip
            target = MilvusIndex.create(uri, collection, int(vectors.shape[1]), "cosine",
                                        sorted({"label", "text"} | fields), strings)  # fmt: skip
        target.add(vectors, [str(i) for i in range(start, stop)], meta, start)
        if progress:
            print(f"\rmilvus: {stop}/{total}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if target is None:
        raise ValueError(f"{run}: the corpus is empty; nothing to index.")
    target.flush()
    location = uri if uri.endswith(".db") else uri.removeprefix("http://")
    return f"milvus://{location}#{collection}", total
