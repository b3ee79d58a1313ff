"""The served index: re-read when its file changes, searched in batches.

``contrastkit index RUN`` replaces ``RUN/index/corpus.ckindex`` by an atomic rename; on each
search :class:`IndexHolder` compares the file's inode, mtime and size with the loaded one, reads
a new file in a thread while requests keep the old index, then swaps one reference. A request
holds the :class:`LoadedIndex` it started with, so a swap never fails one. Needs no web framework.

Shapes: ``vectors: (Q, D)`` queries; hits are dicts ``{"id", "position", "score", "metadata"}``.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["IndexHolder", "LoadedIndex", "search_batch", "search_index", "search_many"]


@dataclass(frozen=True)
class LoadedIndex:
    """One read of the index file: the index, the file's identity, the filterable metadata
    fields, a version (1 at start, +1 per swap) and when it was read."""

    index: Any
    signature: tuple[int, int, int]  # (inode, mtime_ns, size) of the file it was read from
    fields: tuple[str, ...]  # metadata keys a filter may use (plus "id")
    version: int
    loaded_at: float


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
        self.path = Path(path)
        self.dim = dim  # the model's embedding width: a wider index file is refused
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path}: no index file; build it with `contrastkit index RUN` or pass "
                "--index PATH."
            )
        self.on_reload = on_reload
        self.loaded = self._read(version=1)
        self._lock = asyncio.Lock()
        self._bad: tuple[int, int, int] | None = None  # a file that failed to load

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self, version: int) -> LoadedIndex:
        from contrastkit.index import load_index

        signature = self._signature()
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
    ``filters[i]`` exactly, searched in one call per round.

    A filtered query asks the index for more neighbours (x4 each round, from ``max(4k, 64)``)
    until ``k`` match or the whole index was ranked, so a rare label is still found.
    """
    index = loaded.index
    n = len(index)
    wants = [min(n, k if not f else max(4 * k, 64)) for k, f in zip(ks, filters)]
    out: list[list[dict]] = [[] for _ in ks]
    todo = list(range(len(ks)))
    while todo:
        want = max(wants[i] for i in todo)
        result = index.search(vectors[todo], want)  # (len(todo), K)
        scores, positions = result.scores.tolist(), result.indices.tolist()
        ids, metadata = result.ids, result.metadata
        again = []
        for row, i in enumerate(todo):
            flt, hits = filters[i], []
            for score, pos, id_, meta in zip(scores[row], positions[row], ids[row], metadata[row]):
                if pos < 0:
                    continue
                record = meta if isinstance(meta, dict) else {}
                if all((id_ if key == "id" else record.get(key)) == v for key, v in flt.items()):
                    hits.append(
                        {"id": id_, "position": int(pos), "score": float(score), "metadata": meta}
                    )
            if len(hits) >= ks[i] or want >= n:
                out[i] = hits[: ks[i]]
            else:
                wants[i] = min(n, want * 4)
                again.append(i)
        todo = again
    return out


def search_index(loaded: LoadedIndex, vector: Any, k: int, flt: dict[str, Any]) -> list[dict]:
    """:func:`search_many` for one query ``vector: (1, D)``."""
    return search_many(loaded, vector, [k], [flt])[0]


def search_batch(kind: str, items: list[tuple[LoadedIndex, Any, int, dict]]) -> list[list[dict]]:
    """The search batcher's call: queries of one index version, each ``(loaded, vector: (D,),
    k, filter)``, searched together."""
    import torch

    vectors = torch.stack([item[1] for item in items])  # (Q, D)
    return search_many(items[0][0], vectors, [i[2] for i in items], [i[3] for i in items])
