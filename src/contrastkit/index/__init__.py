"""Nearest-neighbour indexes over precomputed embeddings: one interface, several backends.

>>> import torch
>>> index = build_index(torch.eye(4), backend="exact", metric="cosine",
...                     ids=["a", "b", "c", "d"], metadata=[{"n": i} for i in range(4)])
>>> result = index.search(torch.tensor([[0.1, 0.0, 1.0, 0.0]]), k=2)
>>> result.ids, result.metadata
([['c', 'a']], [[{'n': 2}, {'n': 0}]])
>>> list_indexes()
['exact', 'faiss_binary', 'faiss_flat', 'faiss_fp16', 'faiss_hnsw', 'faiss_ivf', 'faiss_ivfpq', 'faiss_sq8']
>>> create_index("faiss_sq8", dim=384).bytes_per_vector  # compressed: 4x smaller than float32
384.0
"""

from contrastkit.index.base import (
    INDEXES,
    Index,
    SearchResult,
    atomic_write,
    build_index,
    create_index,
    list_indexes,
    load_index,
)
from contrastkit.index.exact import ExactIndex, chunked_topk
from contrastkit.index.faiss_backends import FaissFlatIndex, FaissHNSWIndex, FaissIVFIndex
from contrastkit.index.quantized import (
    FaissBinaryIndex,
    FaissFP16Index,
    FaissIVFPQIndex,
    FaissSQ8Index,
    default_ivfpq_params,
)

__all__ = [
    "INDEXES",
    "ExactIndex",
    "FaissBinaryIndex",
    "FaissFP16Index",
    "FaissFlatIndex",
    "FaissHNSWIndex",
    "FaissIVFIndex",
    "FaissIVFPQIndex",
    "FaissSQ8Index",
    "Index",
    "SearchResult",
    "atomic_write",
    "build_index",
    "chunked_topk",
    "create_index",
    "default_ivfpq_params",
    "list_indexes",
    "load_index",
]
