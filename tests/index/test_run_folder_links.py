"""A run folder from someone else may hold symbolic links: `contrastkit index RUN` never writes
through them (issue 33, point 4). Each case plants a link to a victim file (or folder) outside
the run; the command exits 2 with one line naming the link, and the victim is unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from contrastkit.cli import main

VICTIM = b"precious: must never be overwritten\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from tests.train.conftest import tiny_config

    root = tmp_path_factory.mktemp("run")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(root)))
    assert main(["train", str(cfg), "--run-dir", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """A fresh copy of the trained run (links planted in one case stay out of the others)."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, symlinks=True)
    shutil.rmtree(copy / "index", ignore_errors=True)
    return copy


@pytest.mark.parametrize(
    "planted", ["index/metadata.jsonl", "index/embeddings.f32", "index/progress.json"]
)
def test_index_never_writes_through_a_link_in_the_run_folder(run, tmp_path, capsys, planted):
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    link = run / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    code = main(["index", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert victim.read_bytes() == VICTIM
    if planted.endswith("progress.json"):
        # read as unreadable (start over) and replaced by the atomic writer: the link, not the
        # victim, is what gets replaced
        assert code == 0 and not link.is_symlink()
        return
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("contrastkit index: ")
    assert f"{link} is a symbolic link; contrastkit never writes through links" in err


def test_index_refuses_an_index_folder_that_is_a_link(run, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metadata.jsonl").write_bytes(VICTIM)
    (run / "index").symlink_to(elsewhere, target_is_directory=True)
    assert main(["index", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "index folder is a symbolic link" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in elsewhere.iterdir()) == ["metadata.jsonl"]
    assert (elsewhere / "metadata.jsonl").read_bytes() == VICTIM


def test_index_refuses_a_run_folder_that_is_a_link(run, tmp_path, capsys):
    link = tmp_path / "run-link"
    link.symlink_to(run, target_is_directory=True)
    assert main(["index", str(link), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "run folder is a symbolic link" in err and len(err.strip().splitlines()) == 1
    assert not (run / "index" / "corpus.ckindex").exists()


def test_stream_index_refuses_a_linked_metadata_file_on_resume(tmp_path):
    """The library path: a resumed build opens its files with O_NOFOLLOW too."""
    from contrastkit.index.streaming import EmbeddingSpec, IndexSpec, TensorSource, stream_index

    corpus = TensorSource(torch.eye(8, 4), [{"n": i} for i in range(8)])

    def stop_after_first_chunk(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream_index(
            corpus,
            tmp_path,
            IndexSpec("exact"),
            EmbeddingSpec(chunk=4),
            progress=False,
            on_chunk=stop_after_first_chunk,
        )
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_bytes(VICTIM)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.jsonl").symlink_to(victim)
    with pytest.raises(ValueError, match=r"metadata\.jsonl is a symbolic link"):
        stream_index(corpus, tmp_path, IndexSpec("exact"), EmbeddingSpec(chunk=4), progress=False)
    assert victim.read_bytes() == VICTIM
