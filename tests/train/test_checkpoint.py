"""Checkpoints: exact round trip of a real training state without pickle, verification on load,
fallback to the newest good checkpoint, full disks and kill -9 mid-write."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from contrastkit.atomic import DiskFullError
from contrastkit.negatives.queue import EmbeddingQueue
from contrastkit.train.checkpoint import (
    CheckpointError,
    decode_state,
    encode_state,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Exact equality, types included (int dict keys stay ints, tuples stay tuples)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


def make(
    seed: int,
) -> tuple[nn.Module, torch.optim.Optimizer, Any, torch.Generator, EmbeddingQueue]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.98), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched, torch.Generator().manual_seed(seed), EmbeddingQueue(8, 3)


def step(
    model: nn.Module, opt: Any, sched: Any, gen: torch.Generator, queue: EmbeddingQueue
) -> None:
    x = torch.randn(4, 6, generator=gen)
    out = model(x)
    out.square().mean().backward()
    opt.step()
    opt.zero_grad()
    sched.step()
    queue.push(out.detach(), torch.arange(4))


def full_state(opt: Any, sched: Any, gen: torch.Generator, queue: EmbeddingQueue, n: int) -> dict:
    return {
        "step": n,
        "elapsed": 1.25,
        "nan": float("nan"),
        "inf": float("-inf"),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "queue": {k: v.clone() for k, v in queue.state_dict().items()},
        "nested": {1: [None, True, "x", (2, 3.5)], "empty": {}},
    }


def test_real_training_state_round_trips_and_resumes_exactly(tmp_path: Path) -> None:
    model, opt, sched, gen, queue = make(0)
    for _ in range(3):
        step(model, opt, sched, gen, queue)
    state = full_state(opt, sched, gen, queue, 3)
    skeleton, tensors = encode_state(state)
    assert_same(decode_state(skeleton, tensors), state)
    ckpt = save_checkpoint(tmp_path, 3, model, state)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "MANIFEST.json",
        "model.safetensors",
        "state.json",
        "state.safetensors",
    ]

    model2, opt2, sched2, gen2, queue2 = make(1)  # other weights, other seed
    loaded = load_checkpoint(latest_checkpoint(tmp_path), model2)
    assert_same(loaded, state)
    assert list(loaded["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys, not "0"
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    gen2.set_state(loaded["generator"])
    queue2.load_state_dict(loaded["queue"])
    for _ in range(3):  # continuing from the checkpoint equals never stopping, bit for bit
        step(model, opt, sched, gen, queue)
        step(model2, opt2, sched2, gen2, queue2)
    assert_same(model2.state_dict(), model.state_dict())
    assert_same(opt2.state_dict(), opt.state_dict())
    assert_same(queue2.state_dict(), queue.state_dict())


def test_state_that_needs_pickle_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['bad'\]: object"):
        save_checkpoint(tmp_path, 1, nn.Linear(2, 2), {"bad": object()})
    assert not list((tmp_path / "checkpoints").glob("step_*"))


def _two_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    model = nn.Linear(3, 3)
    first = save_checkpoint(tmp_path, 4, model, {"step": 4})
    with torch.no_grad():
        model.weight.add_(1.0)
    return first, save_checkpoint(tmp_path, 8, model, {"step": 8})


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest", "delete_state"])
def test_damaged_latest_falls_back_to_previous_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    first, second = _two_checkpoints(tmp_path)
    weights = second / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:50])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0x10
        weights.write_bytes(bytes(data))
    elif damage == "delete_manifest":
        (second / "MANIFEST.json").unlink()
    else:
        (second / "state.json").unlink()
    with caplog.at_level(logging.WARNING, logger="contrastkit.train.checkpoint"):
        assert latest_checkpoint(tmp_path) == first
    assert "skipping checkpoint step_0000008" in caplog.text
    model = nn.Linear(3, 3)
    assert load_checkpoint(first, model) == {"step": 4}
    with pytest.raises(CheckpointError, match="step_0000008"):
        load_weights(second, model)


def test_no_checkpoint_verifies_is_one_clear_error(tmp_path: Path) -> None:
    first, second = _two_checkpoints(tmp_path)
    for ckpt in (first, second):
        (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* verifies.*train it again"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "elsewhere") is None  # no checkpoints at all


def test_legacy_pickle_checkpoint_is_refused_unread(tmp_path: Path) -> None:
    legacy = tmp_path / "checkpoints" / "step_0000001"
    legacy.mkdir(parents=True)
    (legacy / "model.safetensors").write_bytes(b"")
    (legacy / "state.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle of 1
    with pytest.raises(CheckpointError, match="never unpickles"):
        latest_checkpoint(tmp_path)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path, 1, nn.Linear(3, 3), {"step": 1})
    with pytest.raises(CheckpointError, match="does not match the model built from"):
        load_weights(ckpt, nn.Linear(3, 4))  # other shape: a RuntimeError in torch
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(ckpt, nn.Sequential(nn.Linear(3, 3)))  # other names


def test_full_disk_keeps_previous_checkpoint_and_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, second = _two_checkpoints(tmp_path)
    pointer = (tmp_path / "checkpoints" / "latest").read_text()
    real = os.write

    def write(fd: int, data: bytes) -> int:
        if len(data) > 100:  # the weights file: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(DiskFullError, match=r"step_0000012/model\.safetensors.*needed"):
        save_checkpoint(tmp_path, 12, nn.Linear(30, 30), {"step": 12})
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / "latest").read_text() == pointer
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_0000004", "step_0000008"]  # no temp folder left
    assert latest_checkpoint(tmp_path) == second


WRITER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from contrastkit.train.checkpoint import save_checkpoint
    model = nn.Linear(256, 256)
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(sys.argv[1], step, model, {"step": step, "opt": {0: model.weight * 2}})
        if step == 3:
            print("saving", flush=True)
    """
)


def test_kill_9_during_checkpoint_writes_leaves_a_verified_checkpoint(tmp_path: Path) -> None:
    """A process writing checkpoints in a loop is SIGKILLed at several moments; each time the
    checkpoint latest_checkpoint picks verifies and holds consistent weights and state."""
    gen = torch.Generator().manual_seed(0)
    survived = []
    for round_ in range(3):
        run = tmp_path / f"run{round_}"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(run)], stdout=subprocess.PIPE, env=os.environ.copy()
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"saving\n"
        time.sleep(float(torch.rand((), generator=gen)) * 0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = latest_checkpoint(run)
        assert ckpt is not None
        model = nn.Linear(256, 256)
        state = load_checkpoint(ckpt, model)
        assert torch.all(model.weight == state["step"])
        assert torch.equal(state["opt"][0], model.weight * 2)
        survived.append(state["step"])
        save_checkpoint(run, 10_000, model, state)  # the next save sweeps the killed temp folder
        left = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        assert left == []
    assert all(s >= 3 for s in survived)


def test_full_disk_during_training_stops_with_one_line_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The disk fills up at the second checkpoint of a real run: `contrastkit train` stops with
    exit 5 and one line naming the file and the bytes; the first checkpoint is intact and
    --resume continues from it once there is space again."""
    import yaml

    from contrastkit.cli import main

    from .conftest import tiny_config

    raw = tiny_config(tmp_path)
    raw["eval"].update({"probe": False, "raw_baseline": False})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    real = os.write

    def write(fd: int, data: bytes) -> int:
        # the disk fills up when the second checkpoint (step 8) is written
        if "step_0000008" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run)]) == 5
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("contrastkit train:")]
    assert len(lines) == 1 and "Traceback" not in err, err  # the log's progress lines aside
    assert lines[0].startswith("contrastkit train: could not write ")
    assert "step_0000008/model.safetensors: the disk is full (needed " in lines[0]
    assert latest_checkpoint(run).name == "step_0000004"
    assert main(["train", "--resume", str(run)]) == 0
    assert latest_checkpoint(run).name == "step_0000012"


def test_kill_between_the_renames_of_a_same_step_rewrite_restores_the_old_copy(
    tmp_path: Path,
) -> None:
    """Rewriting step 4 moves the old step_0000004 aside before renaming the new one in; a
    kill in between leaves only the aside copy, which the next save puts back."""
    first, _ = _two_checkpoints(tmp_path)
    aside = first.parent / f".old_{first.name}.12345"
    os.replace(first, aside)
    save_checkpoint(tmp_path, 9, nn.Linear(3, 3), {"step": 9}, keep=3)
    assert first.is_dir() and not aside.exists()
    assert load_checkpoint(first, nn.Linear(3, 3)) == {"step": 4}
