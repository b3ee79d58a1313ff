"""Compressed FAISS backends: scalar quantisation (int8, float16), sign bits, IVF + product codes.

Same interface, registry and file format as every other backend
(:class:`~contrastkit.index.Index`); what changes is how many bytes each vector costs and how
close the top-K stays to exact search.

============  ===========================  ==========================  ==========================
backend       stored per vector            needs training              query-time setting
============  ===========================  ==========================  ==========================
faiss_fp16    ``2 D`` bytes (float16)      no                          -
faiss_sq8     ``D`` bytes (int8 per dim)   per-dim ranges (any sample)  -
faiss_binary  ``ceil(D / 8)`` bytes (+     no                          ``rescore`` (candidates
              ``4 D`` on disk, memmapped)                              per neighbour)
faiss_ivfpq   ``m * nbits / 8`` + 8 bytes  k-means: nlist cells, and   ``nprobe``
                                           2**nbits codes per subspace
============  ===========================  ==========================  ==========================

A backend that needs training trains on the first vectors given to ``add`` (or on
``index.train(sample)`` called first); the defaults are chosen from the dimension and the size
of that sample (see :class:`FaissIVFPQIndex`). Compressed backends refuse ``k > len(index)``
instead of returning fewer columns.

References: scalar quantisation and IVF-PQ in FAISS, Johnson, Douze & Jégou 2017,
https://arxiv.org/abs/1702.08734; product quantisation, Jégou, Douze & Schmid 2011,
https://doi.org/10.1109/TPAMI.2010.57; binary embeddings with float rescoring, as in
Shakir, Aarsen & Lee 2024, "Binary and scalar embedding quantization"
(https://huggingface.co/blog/embedding-quantization).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from contrastkit.index.base import INDEXES, atomic_write
from contrastkit.index.faiss_backends import _check_int, _FaissIndex, check_training_size

__all__ = [
    "FaissBinaryIndex",
    "FaissFP16Index",
    "FaissIVFPQIndex",
    "FaissSQ8Index",
    "default_ivfpq_params",
]


class _ScalarQuantizerIndex(_FaissIndex):
    """``IndexScalarQuantizer``: every dimension coded on its own, searched by a flat scan."""

    clamps_k = False
    quantizer_type: ClassVar[str] = ""
    bytes_per_dim: ClassVar[float] = 0.0
    faiss_kind = "sq"
    faiss_classes = ("IndexScalarQuantizer",)

    def _faiss_params(self) -> dict[str, Any]:
        qtype = int(getattr(self._lib.ScalarQuantizer, self.quantizer_type))
        return {"qtype": qtype, "code_size": int(self.bytes_per_dim * self.dim)}

    def _new_index(self) -> Any:
        lib = self._lib
        qtype = getattr(lib.ScalarQuantizer, self.quantizer_type)
        return lib.IndexScalarQuantizer(self.dim, qtype, self.faiss_metric)

    def _train_vectors(self, vectors: np.ndarray) -> None:
        self._faiss.train(vectors)

    @property
    def bytes_per_vector(self) -> float:
        return self.bytes_per_dim * self.dim


@INDEXES.register("faiss_sq8")
class FaissSQ8Index(_ScalarQuantizerIndex):
    """8-bit scalar quantisation (``QT_8bit``): ``D`` bytes per vector, 4x smaller than float32.

    Training learns each dimension's range from the sample (the first ``add`` or ``train``);
    later values outside it are clipped, so train on a representative sample.

    >>> g = torch.Generator().manual_seed(0)
    >>> index = FaissSQ8Index(dim=8)
    >>> index.add(torch.randn(100, 8, generator=g))
    >>> index.bytes_per_vector, index.search(torch.randn(1, 8, generator=g), k=3).indices.shape
    (8.0, torch.Size([1, 3]))
    """

    backend = "faiss_sq8"
    quantizer_type = "QT_8bit"
    bytes_per_dim = 1.0


@INDEXES.register("faiss_fp16")
class FaissFP16Index(_ScalarQuantizerIndex):
    """Float16 storage (``QT_fp16``): ``2 D`` bytes per vector, no training, near-exact scores."""

    backend = "faiss_fp16"
    quantizer_type = "QT_fp16"
    bytes_per_dim = 2.0


def sidecar_path(path: Path) -> Path:
    """A new name for :class:`FaissBinaryIndex`'s float32 vectors: ``<index file>.<token>.f32``.

    Every save writes a fresh file; the index file (renamed into place last) names it with its
    size and sha256, so a reader never pairs old codes with new vectors."""
    return path.with_name(f"{path.name}.{secrets.token_hex(8)}.f32")


class _HashedBlocks:
    """Blocks handed to the atomic writer, hashed (sha256) as they are written."""

    def __init__(self, blocks: Any, nbytes: int) -> None:
        self.blocks, self.nbytes = blocks, nbytes
        self.digest = hashlib.sha256()

    def __iter__(self) -> Any:
        for block in self.blocks:
            self.digest.update(block)
            yield block


@INDEXES.register("faiss_binary")
class FaissBinaryIndex(_FaissIndex):
    """Sign bits searched by Hamming distance, then rescored with the float vectors.

    Each vector becomes ``ceil(D / 8)`` bytes (bit ``j`` = ``x_j > 0``), searched exhaustively
    with FAISS ``IndexBinaryFlat`` (popcount). The ``rescore * k`` nearest codes of each query are
    then rescored exactly with the index's metric on the float32 vectors, which are saved beside
    the index file (``<file>.f32``) and memory-mapped on load: the RAM cost is the codes; the
    floats are read from disk for the few candidates only.

    Sign bits suit centred embeddings (cosine / dot of trained models); for ``euclidean`` the
    candidate stage is only a heuristic and recall depends on ``rescore``.

    Args:
        rescore: candidates per neighbour rescored in float (recall rises with it; default 10).
            A plain attribute: set ``index.rescore`` any time.

    >>> g = torch.Generator().manual_seed(0)
    >>> vectors = torch.randn(200, 16, generator=g)
    >>> index = FaissBinaryIndex(dim=16)
    >>> index.add(vectors)
    >>> index.bytes_per_vector, index.search(vectors[:2], k=1).indices.tolist()
    (2.0, [[0], [1]])
    """

    backend = "faiss_binary"
    clamps_k = False
    faiss_kind = "binary"
    faiss_classes = ("IndexBinaryFlat",)

    def __init__(self, dim: int, metric: str = "cosine", rescore: int = 10) -> None:
        self.rescore = _check_int("rescore", rescore)
        self._floats: list[np.ndarray] = []  # (n_i, D) float32 parts; after load part 0 is a memmap
        self._spool: Any = None  # an open temp file the float vectors are appended to (spool_to)
        self._spool_rows = 0
        super().__init__(dim, metric)

    def params(self) -> dict[str, Any]:
        return {"rescore": self.rescore}

    @property
    def code_bytes(self) -> int:
        return math.ceil(self.dim / 8)

    @property
    def bytes_per_vector(self) -> float:
        return float(self.code_bytes)

    @property
    def disk_bytes_per_vector(self) -> float:
        """Bytes per vector on disk: the codes plus the float32 vectors kept for rescoring."""
        return float(self.code_bytes + 4 * self.dim)

    def _new_index(self) -> Any:
        return self._lib.IndexBinaryFlat(8 * self.code_bytes)

    def _codes(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(vectors > 0, axis=1)  # (n, ceil(D / 8)) uint8, zero-padded bits

    def spool_to(self, folder: str | os.PathLike[str]) -> None:
        """Append the float vectors of later ``add`` calls to a temporary file in ``folder``
        (read back memory-mapped for rescoring) instead of keeping them in memory."""
        if self._spool is None and not self._floats:
            self._spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives with the index
                prefix=".binary-floats.", suffix=".tmp", dir=folder
            )

    def _add_vectors(self, vectors: np.ndarray) -> None:
        self._faiss.add(self._codes(vectors))
        if self._spool is not None:
            self._spool.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
            self._spool_rows += vectors.shape[0]
            return
        self._floats.append(vectors.copy())

    def _float_matrix(self) -> np.ndarray:
        if self._spool is not None:
            self._spool.flush()
            if not self._floats or self._floats[0].shape[0] != self._spool_rows:
                self._floats = [
                    np.memmap(
                        self._spool.name, dtype="<f4", mode="r", shape=(self._spool_rows, self.dim)
                    )
                ]
            return self._floats[0]
        if len(self._floats) > 1:  # vectors added after a load: join once (then one part again)
            self._floats = [np.concatenate(self._floats)]
        return self._floats[0]

    def _search_vectors(self, query: np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        n_cand = min(len(self), max(k, self.rescore * k))
        _, cand = self._faiss.search(self._codes(query), n_cand)  # (Q, C) Hamming neighbours
        floats = self._float_matrix()
        scores_parts, index_parts = [], []
        for start in range(0, query.shape[0], 256):  # bounds the (Qb, C, D) gather
            rows = cand[start : start + 256]  # (Qb, C)
            valid = rows >= 0
            picked = floats[np.where(valid, rows, 0).ravel()].reshape(*rows.shape, self.dim)
            q = query[start : start + 256, None, :]  # (Qb, 1, D)
            if self.metric == "euclidean":
                scores = -np.sqrt(((picked - q) ** 2).sum(-1))  # (Qb, C)
            else:
                scores = (picked * q).sum(-1)  # (Qb, C) inner product (cosine: unit rows)
            scores = np.where(valid, scores, -np.inf).astype(np.float32)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Qb, K)
            scores_parts.append(np.take_along_axis(scores, order, 1))
            index_parts.append(np.take_along_axis(rows, order, 1))
        scores_t = torch.from_numpy(np.concatenate(scores_parts))
        indices = torch.from_numpy(np.concatenate(index_parts).astype(np.int64))
        return scores_t, indices.masked_fill(torch.isinf(scores_t), -1)

    def _payload(self) -> bytes | memoryview:
        return memoryview(self._lib.serialize_index_binary(self._faiss)).cast("B")

    def _deserialize(self, array: np.ndarray) -> Any:
        return self._lib.deserialize_index_binary(array)

    def _save_sidecars(self, path: Path) -> dict[str, dict[str, Any]]:
        side = sidecar_path(path)
        if self._spool is not None:  # copy the spool in blocks (page cache, not process memory)
            self._spool.flush()
            size, fd = self._spool_rows * self.dim * 4, self._spool.fileno()
            step = 1 << 23  # two blocks are alive at once while the writer moves on: 16 MB
            blocks = _HashedBlocks(_pread_blocks(fd, size, step), size)
        else:
            floats = self._float_matrix() if self._floats else np.empty((0, self.dim), np.float32)
            rows = 1 << 16  # write in blocks: no second full copy of the vectors in memory
            parts = [
                memoryview(np.ascontiguousarray(floats[s : s + rows], dtype="<f4")).cast("B")
                for s in range(0, floats.shape[0], rows)
            ]
            blocks = _HashedBlocks(parts, floats.shape[0] * self.dim * 4)
        atomic_write(side, blocks)  # type: ignore[arg-type]
        return {side.name: {"size": blocks.nbytes, "sha256": blocks.digest.hexdigest()}}

    def _load_sidecars(self, path: Path, files: dict[str, dict[str, Any]]) -> None:
        names = [name for name in files if name.endswith(".f32")]
        if len(names) != 1:
            raise ValueError(
                f"{os.fspath(path)}: a faiss_binary index names one float32 file beside it, its "
                f"header names {len(names)}: rebuild the index."
            )
        side = path.parent / names[0]
        expected = len(self) * self.dim * 4
        if files[names[0]]["size"] != expected:
            raise ValueError(
                f"{os.fspath(side)!r} holds {files[names[0]]['size']} bytes but the index expects "
                f"{expected} ({len(self)} x {self.dim} float32): rebuild the index."
            )
        if expected == 0:
            self._floats = []
            return
        self._floats = [np.memmap(side, dtype="<f4", mode="r", shape=(len(self), self.dim))]


class _pread_blocks:
    """``size`` bytes of file descriptor ``fd`` as a sequence of ``step``-byte blocks, each read
    only when the writer asks for it."""

    def __init__(self, fd: int, size: int, step: int) -> None:
        self.fd, self.size, self.step = fd, size, step

    def __len__(self) -> int:
        return -(-self.size // self.step)

    @property
    def nbytes(self) -> int:
        """All blocks together (the size a write of them needs)."""
        return self.size

    def __getitem__(self, i: int) -> bytes:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return os.pread(self.fd, min(self.step, self.size - i * self.step), i * self.step)


def _largest_divisor_at_most(n: int, bound: int) -> int:
    return max(d for d in range(1, max(1, bound) + 1) if n % d == 0)


def default_ivfpq_params(dim: int, n_train: int) -> dict[str, int]:
    """The IVF-PQ defaults for ``dim`` and a training sample of ``n_train`` vectors.

    - ``m``: the largest divisor of ``dim`` that is at most ``dim // 4`` (sub-vectors of about 4
      dimensions: 384 -> 96 codes, 128 -> 32), at least 1;
    - ``nbits``: 8 (256 codes per sub-quantizer) when the sample gives every code at least 39
      training vectors (``n_train >= 9984``), else ``floor(log2(n_train / 39))``, at least 1;
    - ``nlist``: about ``4 * sqrt(n_train)`` cells, at most ``n_train // 39`` (39 vectors per
      cell, FAISS's rule of thumb), at least 1.

    >>> default_ivfpq_params(384, 100_000)
    {'m': 96, 'nbits': 8, 'nlist': 1264}
    >>> default_ivfpq_params(64, 2_000)
    {'m': 16, 'nbits': 5, 'nlist': 51}
    """
    ratio = max(n_train, 1) / 39
    return {
        "m": _largest_divisor_at_most(dim, dim // 4),
        "nbits": max(1, min(8, math.floor(math.log2(ratio)) if ratio >= 2 else 1)),
        "nlist": max(1, min(int(4 * math.sqrt(n_train)), n_train // 39)),
    }


@INDEXES.register("faiss_ivfpq")
class FaissIVFPQIndex(_FaissIndex):
    """Inverted file + product quantisation (``IndexIVFPQ``): ``m * nbits / 8`` bytes of code (+ an
    8-byte id) per vector; for corpora that do not fit in memory as floats.

    The vectors are split into ``m`` sub-vectors of ``D / m`` dimensions, each coded by the nearest
    of ``2 ** nbits`` centroids (of the residual to its IVF cell); a query visits ``nprobe`` of
    the ``nlist`` cells. Training (k-means for the cells and every sub-quantizer) runs on the
    first ``add`` or on ``train(sample)``; parameters left ``None`` are chosen then from ``D`` and
    the sample size (:func:`default_ivfpq_params`) and saved with the index.

    Args:
        nlist: IVF cells (default: from the sample size).
        m: sub-quantizers; must divide ``dim`` (default: from ``dim``).
        nbits: bits per sub-quantizer code, 1-16 (default: 8 if the sample is large enough).
        nprobe: cells visited per query (higher: better recall, slower). Default 16; also
            ``search(..., nprobe=N)``.
        seed: k-means seed, for reproducible builds.

    >>> g = torch.Generator().manual_seed(0)
    >>> index = FaissIVFPQIndex(dim=16)
    >>> index.add(torch.randn(2000, 16, generator=g))
    >>> index.params()
    {'nlist': 51, 'm': 4, 'nbits': 5, 'nprobe': 16, 'seed': 0}
    >>> index.bytes_per_vector
    11.0
    """

    backend = "faiss_ivfpq"
    clamps_k = False
    search_knobs = {"nprobe": "nprobe"}  # noqa: RUF012 - a read-only class table
    faiss_kind = "ivfpq"
    faiss_classes = ("IndexIVFPQ",)

    def _faiss_params(self) -> dict[str, Any]:
        named = {"nlist": self.nlist, "m": self.m, "nbits": self.nbits}
        return {k: v for k, v in named.items() if v is not None}

    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        nlist: int | None = None,
        m: int | None = None,
        nbits: int | None = None,
        nprobe: int = 16,
        seed: int = 0,
    ) -> None:
        self.nlist = None if nlist is None else _check_int("nlist", nlist)
        self.nbits = None if nbits is None else _check_int("nbits", nbits)
        if self.nbits is not None and self.nbits > 16:
            raise ValueError(f"nbits must be between 1 and 16 (8 is usual), got {nbits!r}.")
        self.m = None if m is None else _check_int("m", m)
        if self.m is not None and isinstance(dim, int) and dim > 0 and dim % self.m:
            divisors = [d for d in range(1, dim + 1) if dim % d == 0]
            raise ValueError(
                f"m={m} does not divide dim={dim}: product quantisation splits each vector into "
                f"m equal sub-vectors; pick m from the divisors of {dim}: {divisors}."
            )
        self.nprobe = _check_int("nprobe", nprobe)
        self.seed = _check_int("seed", seed, 0)
        super().__init__(dim, metric)

    def params(self) -> dict[str, Any]:
        return {
            "nlist": self.nlist,
            "m": self.m,
            "nbits": self.nbits,
            "nprobe": self.nprobe,
            "seed": self.seed,
        }

    def _new_index(self) -> Any:
        return None  # built by _train_vectors once the defaults can be chosen from the sample

    def _train_vectors(self, vectors: np.ndarray) -> None:
        n = vectors.shape[0]
        defaults = default_ivfpq_params(self.dim, n)
        nlist = self.nlist if self.nlist is not None else defaults["nlist"]
        nbits = self.nbits if self.nbits is not None else defaults["nbits"]
        m = self.m if self.m is not None else defaults["m"]
        check_training_size("IVF-PQ", n, "nlist", nlist)
        check_training_size("IVF-PQ", n, "nbits", 2**nbits)
        lib = self._lib
        quantizer = (
            lib.IndexFlatL2(self.dim) if self.metric == "euclidean" else lib.IndexFlatIP(self.dim)
        )
        index = lib.IndexIVFPQ(quantizer, self.dim, nlist, m, nbits, self.faiss_metric)
        index.cp.seed = self.seed
        index.pq.cp.seed = self.seed
        index.train(vectors)
        self._quantizer = quantizer  # keep the Python wrapper alive as long as the index
        self._faiss = index
        self.nlist, self.nbits, self.m = nlist, nbits, m
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self._faiss is not None:
            self._faiss.nprobe = self.nprobe

    @property
    def bytes_per_vector(self) -> float:
        m = self.m if self.m is not None else default_ivfpq_params(self.dim, 10_000)["m"]
        nbits = self.nbits if self.nbits is not None else 8
        return math.ceil(m * nbits / 8) + 8.0  # PQ code + the int64 id in the inverted list
