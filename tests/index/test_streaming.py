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
from contrastkit.index.streaming import PROGRESS_FILE, TensorSource, stream_index


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
    built = stream_index(source, tmp_path / "a", backend="exact", chunk=128, progress=False)
    whole = build_index(source.table, "exact")
    assert torch.equal(built.index.search(queries, 10).indices, whole.search(queries, 10).indices)
    loaded = load_index(built.path)
    assert loaded.ids[:3] == ["0", "1", "2"] and loaded.metadata[999] == {"doc": 999}
    stored = np.memmap(built.embeddings_path, dtype="<f4", mode="r", shape=(1000, 24))
    np.testing.assert_array_equal(stored, source.table.numpy())
    assert not (tmp_path / "a" / PROGRESS_FILE).exists()  # complete: nothing to resume
    # A trainable backend trains on the (here: whole) sample, then gets the chunks one by one.
    pq = stream_index(
        source, tmp_path / "b", backend="faiss_ivfpq", chunk=100, train_size=1000, progress=False
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
            backend="faiss_sq8",
            chunk=100,
            on_chunk=stop_after_three,
            progress=False,
        )
    assert json.loads((tmp_path / PROGRESS_FILE).read_text())["done"] == 300
    with open(tmp_path / "metadata.jsonl", "ab") as handle:  # a chunk half-written when killed
        handle.write(b'{"doc": 300}\n{"do')
    source.calls.clear()
    resumed = stream_index(source, tmp_path, backend="faiss_sq8", chunk=100, progress=False)
    assert resumed.resumed_from == 300
    # Only chunk 0 (to learn the width) and the missing chunks are embedded again.
    assert source.calls == [(0, 100)] + [(s, s + 100) for s in range(300, 1000, 100)]
    fresh = stream_index(
        CountingSource(1000), tmp_path / "fresh", backend="faiss_sq8", chunk=100, progress=False
    )
    q = torch.randn(10, 24, generator=torch.Generator().manual_seed(2))
    assert torch.equal(resumed.index.search(q, 10).indices, fresh.index.search(q, 10).indices)
    assert resumed.index.metadata == fresh.index.metadata
    # Another model (fingerprint) or other settings never resume stale rows.
    with pytest.raises(Interrupt):
        stream_index(
            source,
            tmp_path,
            backend="exact",
            chunk=100,
            fingerprint="step_4",
            on_chunk=stop_after_three,
            progress=False,
        )
    again = stream_index(
        source, tmp_path, backend="exact", chunk=100, fingerprint="step_8", progress=False
    )
    assert again.resumed_from == 0


def test_dim_truncates_and_renormalises_and_float16_halves_the_file(tmp_path):
    source = CountingSource(300)
    built = stream_index(
        source,
        tmp_path,
        backend="exact",
        dim=8,
        dtype="float16",
        chunk=64,
        trained_dims=[8, 24],
        progress=False,
    )
    assert built.index.dim == 8 and built.embeddings_path.name == "embeddings.f16"
    assert built.embeddings_path.stat().st_size == 300 * 8 * 2
    stored = np.memmap(built.embeddings_path, dtype="<f2", mode="r", shape=(300, 8))
    expected = torch.nn.functional.normalize(source.table[:, :8], dim=1).numpy()
    np.testing.assert_allclose(stored.astype(np.float32), expected, atol=1e-3)
    with pytest.raises(ValueError, match=r"dim=25 is larger than the embedding width 24"):
        stream_index(source, tmp_path / "x", dim=25, progress=False)
    with pytest.warns(UserWarning, match=r"--dim 12: the run's Matryoshka dims are \[8, 24\]"):
        stream_index(source, tmp_path / "y", dim=12, trained_dims=[8, 24], progress=False)
    with pytest.warns(UserWarning, match="not trained with Matryoshka dims"):
        stream_index(source, tmp_path / "z", dim=12, progress=False)
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float16'"):
        stream_index(source, tmp_path / "w", dtype="int8", progress=False)
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
    assert "--dim 8: the run was not trained with Matryoshka dims" in captured.err
    index = load_index(tiny_run / "index" / "corpus.ckindex")
    assert index.backend == "faiss_ivfpq" and index.dim == 8 and index.nlist == 8
    query = re.search(r"search it: contrastkit search (\S+) (\S+)", captured.out).group(2)
    assert main(["search", run, query, "--nprobe", "8", "-k", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["search", run, query, "--ef", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contrastkit search: ef=32 is a search setting of faiss_hnsw")
    assert len(err.splitlines()) == 1
    assert main(["index", run, "--dim", "999", "--no-progress"]) == 2
    assert "dim=999 is larger than the embedding width" in capsys.readouterr().err
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
