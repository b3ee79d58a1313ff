"""Index files from someone else: crafted with a valid checksum, they are refused with one
ValueError naming the file before FAISS's deserialiser sees them, never a crash (issue 33,
points 1 and 8). The checksum is recomputed here as anyone could: the file ends in the sha256
of every byte before it."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("faiss")

from contrastkit.index import base as index_base
from contrastkit.index import create_index, load_index

MAGIC = b"CKINDEX1"


def split(path: Path) -> tuple[dict, bytes]:
    """The header and FAISS payload of an index file (the trailing sha256 dropped)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[8:16])
    return json.loads(data[16 : 16 + n]), data[16 + n : -32]


def forge(path: Path, header: dict, payload: bytes, checksum: bool = True) -> None:
    """Write an index file with a valid trailing sha256, as an attacker can."""
    head = json.dumps(header).encode()
    body = MAGIC + struct.pack("<Q", len(head)) + head + payload
    path.write_bytes(body + (hashlib.sha256(body).digest() if checksum else b""))


def saved(tmp_path: Path, backend: str, n: int = 300, name: str = "x.ckindex", **params) -> Path:
    index = create_index(backend, dim=8, **params)
    index.add(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)))
    index.save(tmp_path / name)
    return tmp_path / name


LOAD_AND_SEARCH = textwrap.dedent(
    """
    import sys, torch
    from contrastkit.index import load_index
    try:
        index = load_index(sys.argv[1])
    except ValueError as err:
        print("refused:", err)
        sys.exit(3)
    result = index.search(torch.randn(4, index.dim), k=5)
    print("loaded", result.ids)
    """
)


def load_in_subprocess(path: Path) -> subprocess.CompletedProcess:
    """Load and search ``path`` in a child with 4 GB of address space: a crash or an attempt to
    allocate what a forged count claims ends the child, not the test run."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
    return subprocess.run(
        [sys.executable, "-c", limit + LOAD_AND_SEARCH, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def assert_refused(path: Path) -> None:
    proc = load_in_subprocess(path)
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    line = proc.stdout.strip()
    assert line.startswith(f"refused: {path}: ") and "\n" not in line, line


def test_another_faiss_type_under_a_flat_header_is_refused(tmp_path):
    flat = saved(tmp_path, "faiss_flat")
    header, _ = split(flat)
    _, hnsw_payload = split(saved(tmp_path, "faiss_hnsw", name="h.ckindex", m=8))
    forge(flat, header, hnsw_payload)
    assert_refused(flat)
    with pytest.raises(ValueError, match=r"x\.ckindex: corrupt index .*index type is 'IHNf'"):
        load_index(flat)


def test_a_huge_ntotal_with_a_valid_checksum_is_refused_not_allocated(tmp_path):
    path = saved(tmp_path, "faiss_flat")
    header, payload = split(path)
    forged = bytearray(payload)
    huge = 1 << 37
    forged[8:16] = struct.pack("<q", huge)  # ntotal, after the fourcc and d
    at = len(payload) - 300 * 8 * 4 - 8  # the codes vector's length field
    forged[at : at + 8] = struct.pack("<Q", huge * 8)
    forge(path, header, bytes(forged))
    assert_refused(path)


def test_an_hnsw_link_outside_the_graph_is_refused_not_followed(tmp_path):
    path = saved(tmp_path, "faiss_hnsw", m=8)
    header, payload = split(path)
    index = load_index(path)
    # the first link of vector 0 (level 0) -> a vector far outside the 300 stored
    import faiss

    offsets = faiss.vector_to_array(index.faiss_index.hnsw.offsets)
    links = faiss.vector_to_array(index.faiss_index.hnsw.neighbors)
    tail = links.tobytes()
    at = payload.index(tail)
    first = at + int(offsets[0]) * 4
    assert links[offsets[0]] >= 0
    forged = payload[:first] + struct.pack("<i", 10**8) + payload[first + 4 :]
    forge(path, header, forged)
    assert_refused(path)


def test_an_inverted_list_id_outside_the_vectors_is_refused(tmp_path):
    path = saved(tmp_path, "faiss_ivf", nlist=4)
    header, payload = split(path)
    index = load_index(path)
    lists = index.faiss_index.invlists
    size = next(i for i in range(4) if lists.list_size(i) > 0)
    import faiss

    ids = faiss.rev_swig_ptr(lists.get_ids(size), lists.list_size(size)).copy()
    at = payload.index(ids.astype("<i8").tobytes())
    forged = payload[:at] + struct.pack("<q", 10**6) + payload[at + 8 :]
    forge(path, header, forged)
    assert_refused(path)


@pytest.mark.parametrize(
    "change, says",
    [
        ({"dim": 16}, "the dimension is 8"),
        ({"metric": "euclidean"}, "the metric is 0"),
        ({"params": {"m": 16, "ef_construction": 80, "ef_search": 64}}, "graph degree"),
    ],
)
def test_a_header_that_disagrees_with_the_faiss_payload_is_refused(tmp_path, change, says):
    path = saved(tmp_path, "faiss_hnsw", m=8)
    header, payload = split(path)
    forge(path, {**header, **change}, payload)
    with pytest.raises(ValueError, match=rf"x\.ckindex: corrupt index .*{says}"):
        load_index(path)


@pytest.mark.parametrize("backend", ["exact", "faiss_flat", "faiss_ivfpq"])
def test_fewer_ids_than_vectors_is_refused(tmp_path, backend):
    path = saved(tmp_path, backend, n=300)
    header, payload = split(path)
    header["ids"], header["metadata"] = header["ids"][:-1], header["metadata"][:-1]
    forge(path, header, payload)
    with pytest.raises(ValueError, match=r"x\.ckindex: corrupt index"):
        load_index(path)


def test_a_header_without_checksum_is_refused(tmp_path):
    path = saved(tmp_path, "faiss_flat")
    header, payload = split(path)
    del header["checksum"]
    forge(path, header, payload, checksum=False)
    with pytest.raises(ValueError, match=r"x\.ckindex: no sha256 checksum in the index header"):
        load_index(path)


def test_a_binary_sidecar_of_the_right_size_but_other_bytes_is_refused(tmp_path):
    path = saved(tmp_path, "faiss_binary")
    sides = [p for p in tmp_path.iterdir() if p.name.endswith(".f32")]
    assert len(sides) == 1
    data = bytearray(sides[0].read_bytes())
    data[100] ^= 0x10  # same size, one bit of one float
    sides[0].write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"\.f32.*does not match the size and sha256"):
        load_index(path)


def test_a_reader_between_the_sidecar_and_the_index_write_sees_the_old_pair(tmp_path, monkeypatch):
    """The index file is the one commit point: while a new save has written its float vectors
    but not yet its index file, a reader loads the old codes with the old vectors."""
    path = saved(tmp_path, "faiss_binary")
    query = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    old = load_index(path).search(query, 5)
    newer = create_index("faiss_binary", dim=8)
    newer.add(torch.randn(300, 8, generator=torch.Generator().manual_seed(9)))
    seen = []
    write = index_base.atomic_write

    def reader_in_between(target, chunks):
        if Path(target) == path:  # the index file: the sidecar is already written
            between = load_index(path).search(query, 5)
            seen.append(torch.equal(between.scores, old.scores))
        write(target, chunks)

    monkeypatch.setattr(index_base, "atomic_write", reader_in_between)
    newer.save(path)
    assert seen == [True]
    after = load_index(path).search(query, 5)
    assert torch.equal(after.scores, newer.search(query, 5).scores)
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".f32")]) == 1  # old one gone
