"""Streaming indexing: chunked embedding into a memory-mapped file, training on a sample, adding
chunk by chunk, resuming an interrupted build from its last complete chunk, Matryoshka
truncation; and `contrastkit index` / `search` on a real tiny run (digits)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from contrastkit.index import build_index, load_index
from contrastkit.index.streaming import (
    PROGRESS_FILE,
    EmbeddingSpec,
    IndexSpec,
    TensorSource,
    stream_index,
)


class CountingSource:
    """A cheap deterministic encoder: document i -> a fixed random (seeded by i) 24-d vector.
    Records which chunks were embedded."""

    def __init__(self, n: int, width: int = 24) -> None:
        self.n, self.width, self.calls = n, width, []
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(n, width, generator=g)

    def size(self) -> int:
        return self.n

    def chunk(self, start: int, stop: int) -> tuple[torch.Tensor, list]:
        self.calls.append((start, stop))
        return self.table[start:stop], [{"doc": i} for i in range(start, stop)]


class Interrupt(Exception):
    pass


def test_streamed_index_equals_an_in_memory_build(tmp_path):
    source = CountingSource(1000)
    queries = torch.randn(20, 24, generator=torch.Generator().manual_seed(1))
    built = stream_index(
        source, tmp_path / "a", IndexSpec("exact"), EmbeddingSpec(chunk=128), progress=False
    )
    whole = build_index(source.table, "exact")
    assert torch.equal(built.index.search(queries, 10).indices, whole.search(queries, 10).indices)
    loaded = load_index(built.path)
    assert loaded.ids[:3] == ["0", "1", "2"] and loaded.metadata[999] == {"doc": 999}
    stored = np.memmap(built.embeddings_path, dtype="<f4", mode="r", shape=(1000, 24))
    np.testing.assert_array_equal(stored, source.table.numpy())
    assert not (tmp_path / "a" / PROGRESS_FILE).exists()  # complete: nothing to resume
    # A trainable backend trains on the (here: whole) sample, then gets the chunks one by one.
    pq = stream_index(
        source,
        tmp_path / "b",
        IndexSpec("faiss_ivfpq", train_size=1000),
        EmbeddingSpec(chunk=100),
        progress=False,
    )
    ref = build_index(source.table, "faiss_ivfpq")
    assert pq.index.params() == ref.params()
    assert torch.equal(pq.index.search(queries, 5).indices, ref.search(queries, 5).indices)


def test_an_interrupted_build_resumes_from_its_last_complete_chunk(tmp_path):
    source = CountingSource(1000)

    def stop_after_three(done: int) -> None:
        if done == 300:
            raise Interrupt

    with pytest.raises(Interrupt):
        stream_index(
            source,
            tmp_path,
            IndexSpec("faiss_sq8"),
            EmbeddingSpec(chunk=100),
            on_chunk=stop_after_three,
            progress=False,
        )
    assert json.loads((tmp_path / PROGRESS_FILE).read_text())["done"] == 300
    with open(tmp_path / "metadata.jsonl", "ab") as handle:  # a chunk half-written when killed
        handle.write(b'{"doc": 300}\n{"do')
    source.calls.clear()
    sq8, by_100 = IndexSpec("faiss_sq8"), EmbeddingSpec(chunk=100)
    resumed = stream_index(source, tmp_path, sq8, by_100, progress=False)
    assert resumed.resumed_from == 300
    # Only chunk 0 (to learn the width) and the missing chunks are embedded again.
    assert source.calls == [(0, 100)] + [(s, s + 100) for s in range(300, 1000, 100)]
    fresh = stream_index(CountingSource(1000), tmp_path / "fresh", sq8, by_100, progress=False)
    q = torch.randn(10, 24, generator=torch.Generator().manual_seed(2))
    assert torch.equal(resumed.index.search(q, 10).indices, fresh.index.search(q, 10).indices)
    assert resumed.index.metadata == fresh.index.metadata
    # Another model (fingerprint) or other settings never resume stale rows.
    with pytest.raises(Interrupt):
        stream_index(
            source,
            tmp_path,
            IndexSpec("exact"),
            EmbeddingSpec(chunk=100, fingerprint="step_4"),
            on_chunk=stop_after_three,
            progress=False,
        )
    again = stream_index(
        source,
        tmp_path,
        IndexSpec("exact"),
        EmbeddingSpec(chunk=100, fingerprint="step_8"),
        progress=False,
    )
    assert again.resumed_from == 0


def test_dim_truncates_and_renormalises_and_float16_halves_the_file(tmp_path):
    source = CountingSource(300)
    built = stream_index(
        source,
        tmp_path,
        IndexSpec("exact"),
        EmbeddingSpec(dim=8, dtype="float16", chunk=64, trained_dims=[8, 24]),
        progress=False,
    )
    assert built.index.dim == 8 and built.embeddings_path.name == "embeddings.f16"
    assert built.embeddings_path.stat().st_size == 300 * 8 * 2
    stored = np.memmap(built.embeddings_path, dtype="<f2", mode="r", shape=(300, 8))
    expected = torch.nn.functional.normalize(source.table[:, :8], dim=1).numpy()
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=1e-3)
    # the library names its arguments (dim, trained_dims); the CLI restates them (--dim, below)
    with pytest.raises(
        ValueError, match=r"^dim=25 is larger than the embedding width 24; pass dim <= 24"
    ):
        stream_index(source, tmp_path / "x", embedding=EmbeddingSpec(dim=25), progress=False)
    with pytest.warns(UserWarning, match=r"^dim 12: the run's Matryoshka dims are \[8, 24\]"):
        stream_index(
            source,
            tmp_path / "y",
            None,
            EmbeddingSpec(dim=12, trained_dims=[8, 24]),
            progress=False,
        )
    with pytest.warns(UserWarning, match=r"not trained with Matryoshka dims \(trained_dims\)"):
        stream_index(source, tmp_path / "z", embedding=EmbeddingSpec(dim=12), progress=False)
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float16'"):
        EmbeddingSpec(dtype="int8")
    with pytest.raises(ValueError, match="chunk must be a positive int, got 0"):
        EmbeddingSpec(chunk=0)
    with pytest.raises(ValueError, match="train_size must be a positive int"):
        IndexSpec(train_size=-1)
    with pytest.raises(TypeError, match="params must be a mapping"):
        IndexSpec("faiss_ivf", params=[("nlist", 4)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one entry per embedding"):
        TensorSource(torch.zeros(3, 2), [{}])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from tests.train.conftest import tiny_config

    from contrastkit.cli import main

    root = tmp_path_factory.mktemp("run")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(root)))
    assert main(["train", str(cfg), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def test_index_and_search_commands_on_a_real_run(tiny_run, capsys):
    from contrastkit.cli import main

    run = str(tiny_run)
    capsys.readouterr()
    argv = [
        "index",
        run,
        "--backend",
        "faiss_ivfpq",
        "--dim",
        "8",
        "--chunk",
        "500",
        "--param",
        "nlist=8",
        "--no-progress",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "indexed 1422 items" in captured.out
    assert (
        "--dim 8: the run was not trained with Matryoshka dims (loss.matryoshka_dims)"
        in captured.err
    )
    index = load_index(tiny_run / "index" / "corpus.ckindex")
    assert index.backend == "faiss_ivfpq" and index.dim == 8 and index.nlist == 8
    query = re.search(r"search it: .*?\bsearch (\S+) (\S+)$", captured.out, re.M).group(2)
    assert main(["search", run, query, "--nprobe", "8", "-k", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["search", run, query, "--ef", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contrastkit search: ef=32 is a search setting of faiss_hnsw")
    assert len(err.splitlines()) == 1
    assert main(["index", run, "--dim", "999", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--dim=999 is larger than the embedding width" in err
    assert re.search(r"; pass --dim <= \d+ ", err)
    assert main(["index", run, "--backend", "faiss_ivfpq", "--param", "m=3", "--no-progress"]) == 2
    assert "m=3 does not divide dim=" in capsys.readouterr().err
    assert main(["index", run, "--param", "nlist"]) == 2
    assert "expected KEY=INT" in capsys.readouterr().err
    assert main(["index", str(tiny_run.parent / "nope")]) == 4


def test_index_help_lists_recall_settings(capsys):
    from contrastkit.cli import main

    with pytest.raises(SystemExit):
        main(["index", "--help"])
    out = capsys.readouterr().out
    for word in ("faiss_sq8", "faiss_binary", "--nprobe", "--ef", "rescore", "--dim"):
        assert word in out


def test_shards_merged_equal_a_single_process_build(tmp_path):
    from contrastkit.index.streaming import embed_to_folder, index_parts, shard_rows

    source = CountingSource(1001)
    q = torch.randn(15, 24, generator=torch.Generator().manual_seed(3))
    for backend, params in (("exact", {}), ("faiss_ivfpq", {"nlist": 8, "m": 6, "nbits": 6})):
        spec, by_128 = IndexSpec(backend, params=params, train_size=500), EmbeddingSpec(chunk=128)
        single = stream_index(source, tmp_path / f"one-{backend}", spec, by_128, progress=False)
        parts = [
            embed_to_folder(
                source,
                tmp_path / backend / f"s{r}",
                by_128,
                rows=shard_rows(1001, r, 3),
                progress=False,
            )
            for r in (2, 0, 1)  # any order: merged by row
        ]
        merged, _ = index_parts(parts, tmp_path / backend / "merged.ckindex", spec, chunk=128)
        a, b = single.index.search(q, 10), merged.search(q, 10)
        assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
        assert a.ids == b.ids and merged.metadata == single.index.metadata
    with pytest.raises(ValueError, match=r"starts at row 334, expected 0.*gap or an overlap"):
        index_parts(parts[:1] + parts[2:], tmp_path / "x.ckindex")
    other = embed_to_folder(
        source,
        tmp_path / "dim8",
        EmbeddingSpec(dim=8, trained_dims=[8]),
        rows=(334, 667),
        progress=False,
    )
    with pytest.raises(ValueError, match=r"has dim=8, dtype=float32 but shard .* has dim=24"):
        index_parts([parts[1], other, parts[0]], tmp_path / "y.ckindex")


SHARD_WORKER = r"""
import json, sys
import torch
import torch.distributed as dist
from contrastkit.index.streaming import EmbeddingSpec, IndexSpec, stream_index_sharded

rank, store, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
table = torch.randn(1001, 24, generator=torch.Generator().manual_seed(0))

class Source:
    calls = []
    def size(self):
        return 1001
    def chunk(self, start, stop):
        self.calls.append([start, stop])
        return table[start:stop], [{"doc": i} for i in range(start, stop)]

source = Source()
index = IndexSpec("faiss_ivfpq", params={"nlist": 8, "m": 6, "nbits": 6}, train_size=500)
built = stream_index_sharded(source, folder, index, EmbeddingSpec(chunk=128), progress=False)
with open(f"{folder}/rank{rank}.json", "w") as handle:
    json.dump({"calls": source.calls, "built": built is not None}, handle)
dist.destroy_process_group()
"""


def test_two_processes_build_one_index_identical_to_a_single_process(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(SHARD_WORKER)
    folder = tmp_path / "index"
    folder.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(tmp_path / "store"), str(folder)],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    reports = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["built"] for r in reports] == [True, False]
    # Each process embedded only its own share (rows 0:501 and 501:1001).
    assert {tuple(c) for c in reports[0]["calls"]} <= {
        (s, min(s + 128, 501)) for s in range(0, 501, 128)
    }
    assert all(c[0] >= 501 for c in reports[1]["calls"])
    merged = load_index(folder / "corpus.ckindex")
    single = stream_index(
        CountingSource(1001),
        tmp_path / "one",
        IndexSpec("faiss_ivfpq", params={"nlist": 8, "m": 6, "nbits": 6}, train_size=500),
        EmbeddingSpec(chunk=128),
        progress=False,
    ).index
    q = torch.randn(15, 24, generator=torch.Generator().manual_seed(3))
    a, b = single.search(q, 10), merged.search(q, 10)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
    assert a.ids == b.ids and merged.metadata == single.metadata


def test_index_command_under_torchrun_equals_one_process(tiny_run, tmp_path):
    """`torchrun --nproc_per_node 2 -m contrastkit.cli index RUN`: two ranks embed half the
    corpus each, rank 0 builds the index; it answers exactly like a one-process build."""
    import os
    import shutil
    import subprocess
    import sys

    from contrastkit.cli import main

    run = str(tiny_run)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "contrastkit.cli",
        "index",
        run,
        "--backend",
        "faiss_sq8",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("indexed 1422 items") == 1  # rank 0 reports, once
    assert (tiny_run / "index" / "shard-1-of-2").is_dir()
    shutil.copy(tiny_run / "index" / "corpus.ckindex", tmp_path / "sharded.ckindex")
    assert main(["index", run, "--backend", "faiss_sq8", "--no-progress"]) == 0
    sharded = load_index(tmp_path / "sharded.ckindex")
    single = load_index(tiny_run / "index" / "corpus.ckindex")
    q = torch.randn(10, single.dim, generator=torch.Generator().manual_seed(4))
    a, b = single.search(q, 10), sharded.search(q, 10)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.scores, b.scores)
    assert a.ids == b.ids and sharded.metadata == single.metadata


def test_a_streamed_binary_index_keeps_its_floats_on_disk(tmp_path):
    source = CountingSource(700)
    built = stream_index(
        source, tmp_path, IndexSpec("faiss_binary"), EmbeddingSpec(chunk=100), progress=False
    )
    index = built.index
    assert index._spool is not None and isinstance(index._float_matrix(), np.memmap)
    in_memory = build_index(source.table, "faiss_binary")
    q = torch.randn(12, 24, generator=torch.Generator().manual_seed(5))
    a, b, c = in_memory.search(q, 5), index.search(q, 5), load_index(built.path).search(q, 5)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.indices, c.indices)
    torch.testing.assert_close(a.scores, c.scores, rtol=0, atol=0)
    (side,) = tmp_path.glob("corpus.ckindex.*.f32")
    assert side.stat().st_size == 700 * 24 * 4


def test_task_corpus_chunks_equal_the_whole_corpus(tiny_run):
    """The task protocol's chunked corpus (`corpus_size()`, `embed_corpus_chunk(start, stop)`)
    gives the vectors and labels of the whole `embed_corpus()`, one chunk at a time."""
    from contrastkit.train.run import load_run
    from contrastkit.train.search import corpus_chunks

    _, task, _ = load_run(tiny_run)
    source = corpus_chunks(task)
    assert source.size() == task.corpus_size() == 1422
    a, meta = source.chunk(100, 164)
    whole = task.embed_corpus()
    torch.testing.assert_close(a, whole.embeddings[100:164], rtol=1e-5, atol=1e-5)
    assert [m["label"] for m in meta] == whole.labels[100:164]
    assert meta[0] == {"label": meta[0]["label"], "text": ""}
