"""Check a serialised FAISS index before FAISS's own deserialiser sees it.

FAISS's reader trusts its input: a size field is allocated as read, graph links and inverted-list
ids are used as read, and its maintainers say index files from untrusted sources are unsafe to
load. An index file's trailing sha256 only catches accidents (anyone can recompute it). So before
``faiss.deserialize_index`` runs, :func:`check_faiss_payload` walks the whole payload in Python:

- the FAISS type (its fourcc) must be the one the backend writes (``IxFI``/``IxF2`` for flat,
  ``IHNf`` for HNSW, ``IwFl`` for IVF, ``IxSQ`` for SQ8/FP16, ``IBxF`` for binary, ``IwPQ`` for
  IVF-PQ), nested indexes included (the HNSW storage, the IVF quantizer);
- the dimension, metric, vector count (the number of ids in the contrastkit header) and the
  backend's parameters (``m``, ``nlist``, the quantizer type, PQ ``m``/``nbits``) must match;
- every length field must fit in the bytes that remain, and the walk must end exactly at the
  payload's end;
- graph links and inverted-list ids must point at stored vectors.

Anything else is a ``ValueError`` (one line, the caller adds the file name). After FAISS has read
the payload, :func:`check_faiss_object` checks the object it built against the same numbers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FaissExpect", "check_faiss_object", "check_faiss_payload"]

_METRIC_IP, _METRIC_L2 = 0, 1


@dataclass(frozen=True)
class FaissExpect:
    """What a backend's payload must hold.

    Args:
        kind: ``"flat"``, ``"hnsw"``, ``"ivf"``, ``"sq"``, ``"binary"`` or ``"ivfpq"``.
        dim: D (bits are ``8 * ceil(D / 8)`` for ``binary``).
        ntotal: the number of vectors (the ids of the contrastkit header).
        metric: ``"euclidean"`` -> FAISS L2, anything else inner product (unused for binary).
        params: the backend parameters to match (``m`` for HNSW, ``nlist``, the scalar
            quantizer's ``qtype`` and ``code_size`` (required for ``sq``), PQ ``m``, ``nbits``);
            another missing key is not checked.
    """

    kind: str
    dim: int
    ntotal: int
    metric: str
    params: dict[str, Any]

    @property
    def faiss_metric(self) -> int:
        return _METRIC_L2 if self.metric == "euclidean" else _METRIC_IP


class _Reader:
    """A cursor over the payload: every read checks the bytes remain."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data).cast("B")
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > len(self.data) - self.pos:
            raise ValueError(
                f"FAISS payload: {what} needs {n} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} remain"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def fourcc(self) -> str:
        return bytes(self.take(4, "the index type")).decode("latin-1")

    def vector(self, dtype: str, what: str, count: int | None = None) -> np.ndarray:
        """A FAISS ``WRITEVECTOR``: a uint64 element count, then the elements."""
        n = self.unpack("Q", f"the length of {what}")
        if count is not None and n != count:
            raise ValueError(f"FAISS payload: {what} has {n} entries, expected {count}")
        size = np.dtype(dtype).itemsize
        if n > (len(self.data) - self.pos) // size:
            raise ValueError(f"FAISS payload: {what} claims {n} entries, more than the file holds")
        return np.frombuffer(self.take(n * size, what), dtype=dtype)


def _expect(name: str, got: object, want: object) -> None:
    if got != want:
        raise ValueError(f"FAISS payload: {name} is {got!r}, the index header says {want!r}")


def _index_header(r: _Reader, d: int, ntotal: int, metric: int) -> None:
    _expect("the dimension", r.unpack("i", "d"), d)
    _expect("the vector count", r.unpack("q", "ntotal"), ntotal)
    r.unpack("q", "a reserved field")
    r.unpack("q", "a reserved field")
    _expect("is_trained", r.unpack("B", "is_trained"), 1)
    _expect("the metric", r.unpack("i", "metric_type"), metric)


def _flat(r: _Reader, d: int, ntotal: int, metric: int) -> None:
    _expect("the flat index type", r.fourcc(), "IxF2" if metric == _METRIC_L2 else "IxFI")
    _index_header(r, d, ntotal, metric)
    r.vector("<f4", "the flat vectors", count=ntotal * d)


def _hnsw(r: _Reader, e: FaissExpect) -> None:
    _index_header(r, e.dim, e.ntotal, e.faiss_metric)
    r.vector("<f8", "assign_probas")
    cum = r.vector("<i4", "cum_nneighbor_per_level")
    levels = r.vector("<i4", "levels", count=e.ntotal)
    offsets = r.vector("<u8", "offsets", count=e.ntotal + 1)
    neighbors = r.vector("<i4", "neighbors")
    entry, max_level = r.unpack("i", "entry_point"), r.unpack("i", "max_level")
    r.unpack("i", "efConstruction")
    r.unpack("i", "efSearch")
    r.unpack("i", "upper_beam")
    if "m" in e.params:
        _expect("the graph degree", int(cum[1]) if len(cum) > 1 else None, 2 * e.params["m"])
    if len(cum) == 0 or cum[0] != 0 or np.any(np.diff(cum.astype(np.int64)) < 0):
        raise ValueError("FAISS payload: cum_nneighbor_per_level is not increasing from 0")
    if e.ntotal and (levels.min() < 1 or levels.max() >= len(cum)):
        raise ValueError("FAISS payload: an HNSW level outside the graph's levels")
    if offsets[0] != 0 or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise ValueError("FAISS payload: HNSW offsets are not increasing from 0")
    sizes = cum[levels.astype(np.int64)] if e.ntotal else np.zeros(0, np.int64)
    if np.any(np.diff(offsets.astype(np.int64)) != sizes) or int(offsets[-1]) != len(neighbors):
        raise ValueError("FAISS payload: HNSW offsets do not match the levels and links")
    if len(neighbors) and (neighbors.min() < -1 or neighbors.max() >= e.ntotal):
        raise ValueError("FAISS payload: an HNSW link points outside the stored vectors")
    if e.ntotal and not (0 <= entry < e.ntotal and 0 <= max_level < len(cum)):
        raise ValueError("FAISS payload: the HNSW entry point is outside the graph")
    _flat(r, e.dim, e.ntotal, e.faiss_metric)


def _ivf_header(r: _Reader, e: FaissExpect) -> int:
    _index_header(r, e.dim, e.ntotal, e.faiss_metric)
    nlist = r.unpack("Q", "nlist")
    if "nlist" in e.params:
        _expect("nlist", nlist, e.params["nlist"])
    r.unpack("Q", "nprobe")
    _flat(r, e.dim, nlist, e.faiss_metric)  # the coarse quantizer: nlist centroids
    _expect("the direct map", r.unpack("B", "the direct map type"), 0)
    r.vector("<i8", "the direct map", count=0)
    return nlist


def _inverted_lists(r: _Reader, nlist: int, code_size: int, ntotal: int) -> None:
    _expect("the inverted lists type", r.fourcc(), "ilar")
    _expect("the inverted lists' nlist", r.unpack("Q", "nlist"), nlist)
    _expect("the code size", r.unpack("Q", "code_size"), code_size)
    layout = r.fourcc()
    if layout == "full":
        sizes = r.vector("<u8", "the list sizes", count=nlist).astype(np.int64)
    elif layout == "sprs":
        pairs = r.vector("<u8", "the list sizes").astype(np.int64)
        if len(pairs) % 2 or (len(pairs) and (pairs[::2].max() >= nlist)):
            raise ValueError("FAISS payload: sparse list sizes name a list that does not exist")
        sizes = np.zeros(nlist, np.int64)
        sizes[pairs[::2]] = pairs[1::2]
    else:
        raise ValueError(f"FAISS payload: unknown inverted list layout {layout!r}")
    if np.any(sizes < 0) or int(sizes.sum()) != ntotal:
        raise ValueError(
            f"FAISS payload: the inverted lists hold {int(sizes.sum())} vectors, expected {ntotal}"
        )
    seen = np.zeros(ntotal, dtype=bool)
    for size in sizes[sizes > 0].tolist():
        r.take(size * code_size, "the codes of an inverted list")
        ids = np.frombuffer(r.take(size * 8, "the ids of an inverted list"), dtype="<i8")
        if ids.min() < 0 or ids.max() >= ntotal or seen[ids].any():
            raise ValueError("FAISS payload: an inverted list id is outside the stored vectors")
        seen[ids] = True


def check_faiss_payload(payload: bytes | memoryview, expect: FaissExpect) -> None:
    """Walk ``payload`` (a serialised FAISS index) and check it is what ``expect`` describes.

    Raises:
        ValueError: another FAISS type, another dimension / count / metric / parameter, a
            length that runs past the end, trailing bytes, or a link outside the vectors.
    """
    r = _Reader(payload)
    e = expect
    if e.kind == "flat":
        _flat(r, e.dim, e.ntotal, e.faiss_metric)
    elif e.kind == "binary":
        _expect("the index type", r.fourcc(), "IBxF")
        code_size = (e.dim + 7) // 8
        _expect("the number of bits", r.unpack("i", "d"), 8 * code_size)
        _expect("the code size", r.unpack("i", "code_size"), code_size)
        _expect("the vector count", r.unpack("q", "ntotal"), e.ntotal)
        _expect("is_trained", r.unpack("B", "is_trained"), 1)
        r.unpack("i", "metric_type")
        r.vector("u1", "the binary codes", count=e.ntotal * code_size)
    elif e.kind == "sq":
        _expect("the index type", r.fourcc(), "IxSQ")
        _index_header(r, e.dim, e.ntotal, e.faiss_metric)
        _expect("the quantizer type", r.unpack("i", "qtype"), e.params["qtype"])
        r.unpack("i", "rangestat")
        r.unpack("f", "rangestat_arg")
        _expect("the quantizer's dimension", r.unpack("Q", "d"), e.dim)
        code_size = r.unpack("Q", "code_size")
        _expect("the code size", code_size, e.params["code_size"])
        r.vector("<f4", "the quantizer ranges")
        r.vector("u1", "the codes", count=e.ntotal * code_size)
    elif e.kind == "hnsw":
        _expect("the index type", r.fourcc(), "IHNf")
        _hnsw(r, e)
    elif e.kind == "ivf":
        _expect("the index type", r.fourcc(), "IwFl")
        nlist = _ivf_header(r, e)
        _inverted_lists(r, nlist, 4 * e.dim, e.ntotal)
    elif e.kind == "ivfpq":
        _expect("the index type", r.fourcc(), "IwPQ")
        nlist = _ivf_header(r, e)
        _expect("by_residual", r.unpack("B", "by_residual"), 1)
        code_size = r.unpack("Q", "code_size")
        _expect("the PQ dimension", r.unpack("Q", "pq.d"), e.dim)
        m, nbits = r.unpack("Q", "pq.M"), r.unpack("Q", "pq.nbits")
        if "m" in e.params:
            _expect("m", m, e.params["m"])
        if "nbits" in e.params:
            _expect("nbits", nbits, e.params["nbits"])
        if not (1 <= m <= e.dim and e.dim % m == 0 and 1 <= nbits <= 16):
            raise ValueError(f"FAISS payload: PQ m={m}, nbits={nbits} for dim {e.dim}")
        _expect("the code size", code_size, (m * nbits + 7) // 8)
        r.vector("<f4", "the PQ centroids", count=e.dim * (1 << nbits))
        _inverted_lists(r, nlist, code_size, e.ntotal)
    else:  # pragma: no cover - a programming error
        raise ValueError(f"unknown FAISS kind {e.kind!r}")
    if r.pos != len(r.data):
        raise ValueError(
            f"FAISS payload: {len(r.data) - r.pos} unexpected bytes after the index "
            f"(read {r.pos} of {len(r.data)})"
        )


def check_faiss_object(index: Any, expect: FaissExpect) -> None:
    """The object FAISS built from a checked payload: its dimension, count, metric and
    parameters again."""
    code_size = (expect.dim + 7) // 8
    d = 8 * code_size if expect.kind == "binary" else expect.dim
    _expect("the loaded dimension", int(index.d), d)
    _expect("the loaded vector count", int(index.ntotal), expect.ntotal)
    if expect.kind != "binary":
        _expect("the loaded metric", int(index.metric_type), expect.faiss_metric)
    params = expect.params
    if expect.kind in ("ivf", "ivfpq") and "nlist" in params:
        _expect("the loaded nlist", int(index.nlist), params["nlist"])
    if expect.kind == "ivfpq":
        for name, value in (("m", int(index.pq.M)), ("nbits", int(index.pq.nbits))):
            if name in params:
                _expect(f"the loaded {name}", value, params[name])
    if expect.kind == "sq":
        _expect("the loaded code size", int(index.code_size), params["code_size"])
    if expect.kind == "binary":
        _expect("the loaded code size", int(index.code_size), code_size)
