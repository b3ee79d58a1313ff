"""One writer per run folder, no hidden checkpoint, no torn log (issue 33, points 5-7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from contrastkit.train import load_config_dict, train
from contrastkit.train.checkpoint import latest_checkpoint, save_checkpoint
from contrastkit.train.run import claim_run_dir

from .conftest import tiny_config


def test_two_trainings_of_one_run_folder_the_second_gets_one_line(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path, train={"max_steps": 100_000, "time_budget_s": 60.0})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "live"
    cmd = [sys.executable, "-m", "contrastkit.cli", "train", str(config), "--run-dir", str(run)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists():  # the first run holds its lock by now
            assert first.poll() is None and time.monotonic() < deadline, first.stderr
            time.sleep(0.2)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "in use" in lines[0]
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143  # checkpoint saved, as documented
    assert latest_checkpoint(run) is not None


def test_concurrent_namings_claim_distinct_folders(tmp_path: Path) -> None:
    base, claimed, barrier = tmp_path / "runs" / "tiny", [], threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        claimed.append(claim_run_dir(base, explicit=False))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in claimed}) == 8 and all(p.is_dir() for p in claimed)


def test_rotation_keeps_the_newest_steps_by_number(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    for step in (9_999_999, 10_000_000, 10_000_001):  # "step_10000000" < "step_9999999" by name
        save_checkpoint(tmp_path, step, model, {"step": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_10000000", "step_10000001"]


def test_the_final_save_never_rewrites_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contrastkit.train import loop

    saved: list[int] = []
    real = loop.save_checkpoint

    def counting(run, step, *args, **kwargs):  # type: ignore[no-untyped-def]
        saved.append(step)
        return real(run, step, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", counting)
    cfg = load_config_dict(tiny_config(tmp_path, train={"max_steps": 8, "checkpoint_every": 4}))
    train(cfg, tmp_path / "run")
    assert saved == [4, 8]  # the final save at step 8 would have rewritten step_0000008


def test_a_checkpoint_set_aside_by_a_killed_rewrite_is_used(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    for step in (2, 4):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep=2)
    root = tmp_path / "checkpoints"
    os.replace(root / "step_0000004", root / ".old_step_0000004.4242")  # killed between renames
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name == ".old_step_0000004.4242"
    save_checkpoint(tmp_path, 6, model, {"step": 6}, keep=2)  # the next save puts it back
    assert (root / "step_0000004").is_dir() and not list(root.glob(".old_*"))


def test_a_torn_last_log_line_is_dropped_before_resume_appends(tmp_path: Path) -> None:
    cfg = load_config_dict(tiny_config(tmp_path, train={"max_steps": 6, "log_every": 1}))
    run = train(cfg, tmp_path / "run", stop_after=3)
    log = run / "metrics.jsonl"
    with log.open("a") as f:
        f.write('{"step": 4, "loss": 1.2')  # the crash cut this line
    train(cfg, run, resume=True)
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line parses
    assert [r["step"] for r in records if "loss" in r][-3:] == [4, 5, 6]
    assert torch.isfinite(torch.tensor([r["loss"] for r in records if "loss" in r])).all()
