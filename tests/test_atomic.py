"""contrastkit.atomic: readers see the old file or the new one; a failed write leaves the old one
and says which path and how many bytes; folders verify against their manifest."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest
import torch

from contrastkit.atomic import (
    CorruptFolderError,
    DiskFullError,
    WriteFailedError,
    atomic_folder,
    open_atomic,
    verify_manifest,
    write_bytes,
    write_json,
    write_text,
)
from contrastkit.index import build_index, load_index


def _fail_after(monkeypatch: pytest.MonkeyPatch, calls: int, code: int) -> None:
    """os.write succeeds ``calls`` times, then raises OSError(code) (a disk filling up)."""
    real, seen = os.write, []

    def write(fd: int, data: bytes) -> int:
        seen.append(fd)
        if len(seen) > calls:
            raise OSError(code, os.strerror(code))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writers_round_trip(tmp_path: Path) -> None:
    write_bytes(tmp_path / "a", [b"ab", b"cd"])
    write_text(tmp_path / "b", "héllo")
    write_json(tmp_path / "c", {"k": [1, 2.5, None]})
    with open_atomic(tmp_path / "d") as f:
        f.write(b"x" * 10)
        f.write(memoryview(b"yz"))
        assert f.tell() == 12
    assert (tmp_path / "a").read_bytes() == b"abcd"
    assert (tmp_path / "b").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c").read_text()) == {"k": [1, 2.5, None]}
    assert (tmp_path / "d").read_bytes() == b"x" * 10 + b"yz"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "code, kind", [(errno.ENOSPC, DiskFullError), (errno.EIO, WriteFailedError)]
)
def test_failed_write_keeps_previous_file_and_names_path_and_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, kind: type
) -> None:
    path = tmp_path / "eval.json"
    write_bytes(path, b"old")
    _fail_after(monkeypatch, 1, code)
    with pytest.raises(kind) as info:
        write_bytes(path, [b"n" * 1000, b"e" * 2345])
    monkeypatch.undo()
    message = str(info.value)
    assert str(path) in message and "3,345 bytes" in message and "\n" not in message
    assert info.value.errno == code and isinstance(info.value, OSError)
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_fsync_failure_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    write_bytes(path, b"old")

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteFailedError, match="Input/output error"):
        write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_exception_inside_stream_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    with pytest.raises(RuntimeError), open_atomic(path) as f:
        f.write(b"half")
        raise RuntimeError("the producer failed")
    assert not path.exists() and _leftovers(tmp_path) == []


def test_folder_manifest_and_verification(tmp_path: Path) -> None:
    final = tmp_path / "step_1"
    with atomic_folder(final) as folder:
        folder.write_bytes("w.bin", b"\x00" * 100)
        folder.write_json("s.json", {"a": 1})
    manifest = json.loads((final / "MANIFEST.json").read_text())
    assert manifest["files"]["w.bin"]["size"] == 100 and len(manifest["files"]) == 2
    verify_manifest(final)
    # rewriting the same folder replaces it whole
    with atomic_folder(final) as folder:
        folder.write_bytes("other.bin", b"1")
    assert sorted(p.name for p in final.iterdir()) == ["MANIFEST.json", "other.bin"]
    assert _leftovers(tmp_path) == []
    (final / "other.bin").write_bytes(b"2")  # same size, other bytes
    with pytest.raises(CorruptFolderError, match=r"other\.bin: sha256"):
        verify_manifest(final)
    (final / "other.bin").write_bytes(b"")
    with pytest.raises(CorruptFolderError, match="0 bytes"):
        verify_manifest(final)
    (final / "other.bin").unlink()
    with pytest.raises(CorruptFolderError, match="missing"):
        verify_manifest(final)
    (final / "MANIFEST.json").write_text("{garbage")
    with pytest.raises(CorruptFolderError, match="unreadable manifest"):
        verify_manifest(final)
    (final / "MANIFEST.json").unlink()
    with pytest.raises(CorruptFolderError, match="no MANIFEST"):
        verify_manifest(final)


def test_failed_folder_write_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "step_2"
    _fail_after(monkeypatch, 1, errno.ENOSPC)
    with pytest.raises(DiskFullError, match=r"step_2/b\.bin"), atomic_folder(final) as folder:
        folder.write_bytes("a.bin", b"a")
        folder.write_bytes("b.bin", b"b" * 50)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def _index(n: int, seed: int) -> object:
    g = torch.Generator().manual_seed(seed)
    return build_index(
        torch.randn(n, 8, generator=g), "exact", ids=[f"s{seed}-{i}" for i in range(n)]
    )


def test_concurrent_writers_and_reader_see_whole_indexes(tmp_path: Path) -> None:
    """Two threads save different indexes to one path while a third loads it in a loop: every
    load is one complete index (all ids of one writer), never a mix or a partial file."""
    path = tmp_path / "corpus.ckindex"
    small, large = _index(50, 1), _index(400, 2)
    small.save(path)
    expected = {len(small): small.ids, len(large): large.ids}
    stop, seen, errors = threading.Event(), set(), []

    def writer(index: object) -> None:
        try:
            for _ in range(15):
                index.save(path)
        except Exception as err:  # surfaced below
            errors.append(err)

    def reader() -> None:
        while not stop.is_set():
            try:
                loaded = load_index(path)
                assert loaded.ids == expected[len(loaded)], "a mix of two indexes"
            except Exception as err:  # AssertionError included: surfaced below
                errors.append(err)
                return
            seen.add(len(loaded))

    threads = [threading.Thread(target=writer, args=(i,)) for i in (small, large)]
    read = threading.Thread(target=reader)
    read.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    read.join()
    assert errors == []
    assert seen and seen <= set(expected)
    assert load_index(path).ids in (small.ids, large.ids)
    assert _leftovers(tmp_path) == []


def test_written_files_and_folders_get_the_usual_permissions(tmp_path: Path) -> None:
    """Temp files are private (0600) while written; the result is what open()/mkdir() give."""
    umask = os.umask(0o022)
    os.umask(umask)
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    (tmp_path / "plain_dir").mkdir()
    write_bytes(tmp_path / "f", b"x")
    with atomic_folder(tmp_path / "d") as folder:
        folder.write_bytes("w", b"x")
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "f") == mode(plain)
    assert mode(tmp_path / "d") == mode(tmp_path / "plain_dir")
    assert mode(tmp_path / "d" / "w") == mode(plain)


def test_a_lazy_sequence_of_blocks_is_written_one_block_at_a_time(tmp_path: Path) -> None:
    """write_bytes of a sequence that is not a list (blocks read on demand, e.g. a binary index's
    float file) asks for block i only after blocks 0..i-1 are on disk: the whole is never held
    in memory (before, ``list(data)`` read all of them first: 1.5 GB at 10^6 x 384 floats)."""
    step, n = 1000, 5
    target = tmp_path / "big.bin"

    class Blocks:
        nbytes = step * n

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> bytes:
            if not 0 <= i < n:
                raise IndexError(i)
            (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith(".big.bin.")]
            assert partial.stat().st_size == i * step  # every earlier block already written
            return bytes([i]) * step

    write_bytes(target, Blocks())
    assert target.read_bytes() == b"".join(bytes([i]) * step for i in range(n))


# -- issue 33, point 9: every write atomic and checked ---------------------------------------


def _fsynced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path of every fd passed to os.fsync (the real fsync still runs)."""
    real, seen = os.fsync, []

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd")
def test_files_written_into_an_atomic_folder_by_other_writers_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export writes with third-party writers (save_pretrained, torch.onnx.export) into the
    temporary folder: each of its files and subfolders is fsync'ed before the folder's rename,
    so a power loss after the rename cannot leave an empty file behind a valid name."""
    seen = _fsynced_paths(monkeypatch)
    with atomic_folder(tmp_path / "export") as folder:
        (folder.path / "tokenizer").mkdir()
        (folder.path / "tokenizer" / "vocab.txt").write_text("a\nb\n")  # a plain open()
        (folder.path / "export.json").write_text("{}")
    names = [Path(p).name for p in seen]
    assert "vocab.txt" in names and "export.json" in names and "tokenizer" in names


def test_fsync_dir_raises_an_io_error_and_ignores_only_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contrastkit.atomic import fsync_dir

    real = os.fsync
    code = [errno.EIO]

    def fsync(fd: int) -> None:
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(code[0], os.strerror(code[0]))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteFailedError, match=r"could not persist the files renamed in .*check"):
        fsync_dir(tmp_path)
    with pytest.raises(WriteFailedError):  # and so does a write that needs it
        write_bytes(tmp_path / "a", b"1")
    code[0] = errno.EINVAL  # a filesystem that cannot fsync a folder: not an error
    fsync_dir(tmp_path)
    write_bytes(tmp_path / "b", b"2")
    assert (tmp_path / "b").read_bytes() == b"2"


def test_a_short_pwrite_is_completed_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """os.pwrite may write fewer bytes than asked; the embeddings file gets every row."""
    import numpy as np

    from contrastkit.index.streaming import EmbeddingFile

    real = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:  # at most 5 bytes per call
        return real(fd, bytes(memoryview(data)[:5]), offset)

    store = EmbeddingFile(tmp_path / "e.f32", 4, 3, "float32", create=True)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3) + 0.5
    monkeypatch.setattr(os, "pwrite", pwrite)
    store.write(0, rows)
    monkeypatch.undo()
    np.testing.assert_array_equal(store.read(0, 4), rows)
    store.close()


def test_save_encoder_never_truncates_the_previous_save(tmp_path: Path) -> None:
    """A real file-size limit (RLIMIT_FSIZE) stops the second save of a larger encoder halfway:
    the error names the file and the first save's weights still load."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        import torch
        from contrastkit.encoders.registry import create_encoder
        from contrastkit.encoders.saved import save_encoder
        folder = Path(sys.argv[1])
        opts = dict(in_features=4, hidden_features=8, embedding_dim=2)
        save_encoder(create_encoder("mlp", **opts), folder, "mlp", **opts)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        size = (folder / "model.safetensors").stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64, size + 64))
        big = dict(in_features=4, hidden_features=4096, embedding_dim=2)
        try:
            save_encoder(create_encoder("mlp", **big), folder, "mlp", **big)
        except Exception as err:
            print(type(err).__name__, str(err).splitlines()[0])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert "model.safetensors" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    from contrastkit.encoders.saved import load_encoder

    encoder = load_encoder(tmp_path)  # the first save, whole
    assert encoder(torch.rand(3, 4)).shape == (3, 2)
    assert _leftovers(tmp_path) == []


def test_a_killed_index_builds_temporary_files_are_removed_by_the_next_build(tmp_path: Path):
    from contrastkit.index.streaming import EmbeddingSpec, IndexSpec, TensorSource, stream_index

    # what kill -9 leaves: the atomic writer's temp files (index, float file, progress) and the
    # binary backend's spool, named as their writers name them
    planted = [
        ".corpus.ckindex.k3j2_1xq.tmp",
        ".corpus.ckindex.0123456789abcdef.f32.zz9_q.tmp",
        ".binary-floats.a8s7d6.tmp",
        ".progress.json.q1w2e3.tmp",
    ]
    for name in planted:
        (tmp_path / name).write_bytes(b"\0" * 64)
    corpus = TensorSource(
        torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), [None] * 40
    )
    stream_index(
        corpus, tmp_path, IndexSpec("faiss_binary"), EmbeddingSpec(chunk=16), progress=False
    )
    assert _leftovers(tmp_path) == []
