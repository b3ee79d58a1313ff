"""Index a run's corpus and search it (uses :mod:`contrastkit.index`).

The corpus is what the run's task says it is (train images for image runs, the key side for pair
runs); each stored vector carries ``{"label", "text"}`` metadata and its position as id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

INDEX_FILE = "index/corpus.ckindex"


def build_index(run: str | os.PathLike, backend: str = "faiss_flat") -> tuple[Path, int]:
    """Embed the run's corpus with its latest checkpoint and save a cosine index in the run."""
    from contrastkit.index import build_index as make_index
    from contrastkit.index import list_indexes
    from contrastkit.train.run import load_run

    _, task, _ = load_run(run)
    corpus = task.embed_corpus()
    if backend not in list_indexes():
        backend = "exact"
    metadata = [
        {"label": label, "text": item if isinstance(item, str) else ""}
        for label, item in zip(corpus.labels, corpus.items)
    ]
    try:
        index = make_index(corpus.embeddings, backend=backend, metric="cosine", metadata=metadata)
    except ImportError:  # faiss missing: exact search is always available
        index = make_index(corpus.embeddings, backend="exact", metric="cosine", metadata=metadata)
    path = Path(run) / INDEX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(path)
    return path, len(index)


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
        Image.fromarray(array.contiguous().numpy()).save(path)
        out.append(str(path))
    return out


def _load(run: str | os.PathLike) -> Any:
    from contrastkit.index import load_index

    path = Path(run) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `contrastkit index {run}` first.")
    return load_index(path)


def search(run: str | os.PathLike, query: str, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` nearest corpus items of a text or image-path ``query``."""
    from contrastkit.train.run import load_run

    if k <= 0:
        raise ValueError(f"k must be a positive int, got {k}.")
    index = _load(run)
    _, task, _ = load_run(run)
    vector, _ = task.embed_query(query)
    return _hits(index.search(vector, k), 0)


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
        out.append((label, _hits(index.search(vector, k), 0)))
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


__all__ = ["build_index", "example_queries", "search", "search_neighbours_of_test"]
