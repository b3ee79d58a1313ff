"""FAISS backends: flat (exact), HNSW and IVF (approximate), behind :class:`~contrastkit.index.Index`.

FAISS is optional (``pip install 'contrastkit[index]'``, i.e. ``faiss-cpu``) and imported only when
a FAISS index is created. Metric mapping: ``cosine`` -> inner product on L2-normalised vectors,
``dot`` -> inner product, ``euclidean`` -> L2 (FAISS returns squared distances; scores are
reported as ``-sqrt(d2)`` to match :func:`contrastkit.functional.similarity_matrix`).

Ties among equal scores are ordered as FAISS returns them (not guaranteed by lower index; use
:class:`~contrastkit.index.ExactIndex` when tie order matters).

References: HNSW, Malkov & Yashunin 2016, https://arxiv.org/abs/1603.09320; FAISS / IVF,
Johnson, Douze & Jégou 2017, https://arxiv.org/abs/1702.08734.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from contrastkit.index.base import INDEXES, Index
from contrastkit.index.faiss_format import FaissExpect, check_faiss_object, check_faiss_payload

__all__ = [
    "BLAS_MIN_QUERIES",
    "FaissFlatIndex",
    "FaissHNSWIndex",
    "FaissIVFIndex",
    "check_training_size",
]

BLAS_MIN_QUERIES = 4
"""A search of at least this many queries scores them as one matrix product (BLAS GEMM).

FAISS's flat search takes its per-query path below ``distance_compute_blas_threshold`` queries
(the faiss-cpu wheel installed here reads 128,000): each query rescans the corpus alone. On a
60,000 x 1,152 float32 corpus at one thread (measured, ``notes/serve32.md``): per-query path
~20 ms per query at any batch size; one GEMM ~11 ms per query for 4 queries, ~3.5 ms for 32,
but ~45 ms for a single query. So batches of 4 and more take the GEMM, smaller ones the
per-query scan. A micro-batch of the service (:mod:`contrastkit.serve.live_index`) and
``contrastkit search --queries`` both reach FAISS through :meth:`Index.search` and gain alike.
"""


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FAISS backends need faiss: pip install 'contrastkit[index]' (faiss-cpu), or use "
            "backend='exact'."
        ) from err
    # process-wide: every flat search (and IVF's coarse quantizer) of >= BLAS_MIN_QUERIES
    # queries is one GEMM; results are the same up to float rounding
    if faiss.cvar.distance_compute_blas_threshold != BLAS_MIN_QUERIES:
        faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES
    return faiss


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


class _FaissIndex(Index):
    """Shared plumbing: a FAISS index object in ``self._faiss`` and metric conversions."""

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        super().__init__(dim, metric)
        self._lib = import_faiss()
        self._faiss = self._new_index()

    @property
    def faiss_metric(self) -> int:
        lib = self._lib
        return lib.METRIC_L2 if self.metric == "euclidean" else lib.METRIC_INNER_PRODUCT

    def _new_index(self) -> Any:
        raise NotImplementedError

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (for tuning or direct calls)."""
        return self._faiss

    @property
    def is_trained(self) -> bool:
        return self._faiss is not None and bool(self._faiss.is_trained)

    def _add_vectors(self, vectors: np.ndarray) -> None:
        self._faiss.add(vectors)

    def _search_vectors(self, query: np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        self._apply_search_params()  # search-time knobs (ef_search, nprobe) may have changed
        distances, labels = self._faiss.search(query, k)
        scores = torch.from_numpy(distances)
        if self.metric == "euclidean":
            scores = scores.clamp_min_(0.0).sqrt_().neg_()
        indices = torch.from_numpy(labels)
        empty = indices < 0
        if empty.any():
            scores = scores.masked_fill(empty, float("-inf"))
        return scores, indices

    def _search_among(
        self, query: np.ndarray, k: int, positions: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        # Flat and scalar-quantised indexes scan their codes and score only the ids a selector
        # admits; IVF and HNSW would visit a filtered subset of their cells or graph (missing
        # matches), binary codes score differently: those rank everything (the default).
        lib = self._lib
        if not isinstance(self._faiss, (lib.IndexFlat, lib.IndexScalarQuantizer)):
            return super()._search_among(query, k, positions)
        params = lib.SearchParameters(sel=lib.IDSelectorBatch(positions))
        distances, labels = self._faiss.search(query, k, params=params)
        scores = torch.from_numpy(distances)
        if self.metric == "euclidean":
            scores = scores.clamp_min_(0.0).sqrt_().neg_()
        indices = torch.from_numpy(labels)
        return scores.masked_fill(indices < 0, float("-inf")), indices

    def _payload(self) -> bytes | memoryview:
        # A view, not .tobytes(): saving a large index then holds one serialised copy, not two.
        return memoryview(self._lib.serialize_index(self._faiss)).cast("B")

    #: What :mod:`contrastkit.index.faiss_format` checks a loaded payload against: the FAISS
    #: layout this backend writes and the class FAISS must build from it.
    faiss_kind: ClassVar[str] = ""
    faiss_classes: ClassVar[tuple[str, ...]] = ()

    def _faiss_params(self) -> dict[str, Any]:
        """The parameters the payload must match (see :class:`FaissExpect`)."""
        return {}

    def _expect(self, count: int) -> FaissExpect:
        return FaissExpect(self.faiss_kind, self.dim, count, self.metric, self._faiss_params())

    def _restore(self, payload: bytes, count: int) -> None:
        # FAISS's reader trusts what it reads: walk the payload first (type, dimension, count,
        # parameters, every length field), then check the object it built.
        expect = self._expect(count)
        check_faiss_payload(payload, expect)
        loaded = self._deserialize(np.frombuffer(payload, dtype=np.uint8).copy())
        if type(loaded).__name__ not in self.faiss_classes:
            raise ValueError(
                f"FAISS built a {type(loaded).__name__}, a {self.backend} index is one of "
                f"{self.faiss_classes}"
            )
        check_faiss_object(loaded, expect)
        self._faiss = loaded
        self._apply_search_params()

    def _deserialize(self, array: np.ndarray) -> Any:
        return self._lib.deserialize_index(array)

    def _apply_search_params(self) -> None:
        """Re-apply search-time parameters that FAISS does not serialise."""


@INDEXES.register("faiss_flat")
class FaissFlatIndex(_FaissIndex):
    """FAISS brute force (``IndexFlatIP`` / ``IndexFlatL2``): exact, multi-threaded BLAS."""

    backend = "faiss_flat"
    faiss_kind = "flat"
    faiss_classes = ("IndexFlatIP", "IndexFlatL2")

    def _new_index(self) -> Any:
        lib = self._lib
        return (
            lib.IndexFlatL2(self.dim) if self.metric == "euclidean" else lib.IndexFlatIP(self.dim)
        )


@INDEXES.register("faiss_hnsw")
class FaissHNSWIndex(_FaissIndex):
    """FAISS HNSW graph (``IndexHNSWFlat``): no training, fast approximate search.

    Args:
        m: graph degree (links per node; memory grows with it). Default 32.
        ef_construction: candidate list while building (higher: better graph, slower build).
        ef_search: candidate list while searching (higher: better recall, slower queries);
            should be >= k. A plain attribute: set ``index.ef_search`` any time, no rebuild.
    """

    backend = "faiss_hnsw"
    search_knobs = {"ef": "ef_search"}  # noqa: RUF012 - a read-only class table
    faiss_kind = "hnsw"
    faiss_classes = ("IndexHNSWFlat",)

    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
    ) -> None:
        self.m = _check_int("m", m, 2)
        self.ef_construction = _check_int("ef_construction", ef_construction)
        self.ef_search = _check_int("ef_search", ef_search)
        super().__init__(dim, metric)

    def params(self) -> dict[str, Any]:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _faiss_params(self) -> dict[str, Any]:
        return {"m": self.m}

    def _new_index(self) -> Any:
        index = self._lib.IndexHNSWFlat(self.dim, self.m, self.faiss_metric)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def _apply_search_params(self) -> None:
        self._faiss.hnsw.efSearch = self.ef_search

    @property
    def bytes_per_vector(self) -> float:
        # float32 vector + level-0 links (2 * m int32); upper levels add ~1/m of that again.
        return 4.0 * self.dim + 4.0 * 2 * self.m * (1 + 1 / self.m)


@INDEXES.register("faiss_ivf")
class FaissIVFIndex(_FaissIndex):
    """FAISS inverted file (``IndexIVFFlat``): k-means cells, search visits ``nprobe`` of them.

    The index is trained (k-means on the vectors) on the first ``add``; that batch should hold
    at least ``39 * nlist`` vectors for good centroids (FAISS warns otherwise).

    Args:
        nlist: number of cells (rule of thumb: about ``4 * sqrt(N)``). Default 256.
        nprobe: cells visited per query (higher: better recall, slower). Default 16. A plain
            attribute: set ``index.nprobe`` any time, no rebuild.
        seed: k-means seed, for reproducible builds.
    """

    backend = "faiss_ivf"
    search_knobs = {"nprobe": "nprobe"}  # noqa: RUF012 - a read-only class table
    faiss_kind = "ivf"
    faiss_classes = ("IndexIVFFlat",)

    def __init__(
        self, dim: int, metric: str = "cosine", nlist: int = 256, nprobe: int = 16, seed: int = 0
    ) -> None:
        self.nlist = _check_int("nlist", nlist)
        self.nprobe = _check_int("nprobe", nprobe)
        self.seed = _check_int("seed", seed, 0)
        super().__init__(dim, metric)

    def params(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "seed": self.seed}

    def _faiss_params(self) -> dict[str, Any]:
        return {"nlist": self.nlist}

    def _new_index(self) -> Any:
        lib = self._lib
        quantizer = (
            lib.IndexFlatL2(self.dim) if self.metric == "euclidean" else lib.IndexFlatIP(self.dim)
        )
        index = lib.IndexIVFFlat(quantizer, self.dim, self.nlist, self.faiss_metric)
        index.cp.seed = self.seed
        index.nprobe = self.nprobe
        self._quantizer = quantizer  # keep the Python wrapper alive as long as the index
        return index

    def _train_vectors(self, vectors: np.ndarray) -> None:
        check_training_size("IVF", vectors.shape[0], "nlist", self.nlist)
        self._faiss.train(vectors)

    def _apply_search_params(self) -> None:
        self._faiss.nprobe = self.nprobe

    @property
    def bytes_per_vector(self) -> float:
        return 4.0 * self.dim + 8.0  # float32 vector + its int64 id in the inverted list


def check_training_size(kind: str, n: int, name: str, clusters: int) -> None:
    """k-means needs at least one training vector per cluster; say which knob to lower."""
    if n < clusters:
        raise ValueError(
            f"training the {kind} index needs at least {name}={clusters} vectors (ideally "
            f"{39 * clusters}), got {n}; train on a larger sample (index.train(sample) or a larger "
            f"first add) or pass a smaller {name}."
        )
