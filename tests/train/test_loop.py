from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrastkit.losses import list_losses
from contrastkit.train import TrainingDiverged, load_config_dict, load_run, train
from contrastkit.train.checkpoint import latest_checkpoint, load_weights
from contrastkit.train.tasks import ImageTask

from .conftest import tiny_config, tiny_pairs_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fast(tmp_path: Path, **sections: object):
    cfg = tiny_config(tmp_path, **sections)
    cfg["eval"].update({"probe": False, "raw_baseline": False})
    return load_config_dict(cfg)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    return load_file(str(ckpt / "model.safetensors"))


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = fast(tmp_path, loss={"learnable_temperature": True})
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", stop_after=5)
    assert latest_checkpoint(part).name == "step_0000005"
    train(cfg, part, resume=True)
    a, b = final_weights(full), final_weights(part)
    assert a.keys() == b.keys()
    assert "loss.temperature.log_scale" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed run logged the remaining steps after the first part
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 12


def test_nan_loss_stops_with_diagnostic_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original = ImageTask.loss_terms

    def poisoned(self, batch, loss_fn):
        terms, z = original(self, batch, loss_fn)
        calls["n"] += 1
        if calls["n"] == 7:  # step 7 diverges; checkpoints were written at step 4
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms, z

    monkeypatch.setattr(ImageTask, "loss_terms", poisoned)
    cfg = fast(tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, tmp_path / "nan")
    msg = str(info.value)
    assert "step 7" in msg and "'nt_xent'" in msg and "optim.lr" in msg
    ckpt = latest_checkpoint(tmp_path / "nan")
    assert ckpt is not None and ckpt.name == "step_0000004"
    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    _, task, _ = load_run(tmp_path / "nan")  # the run is loadable from the good checkpoint
    assert task.model["encoder"].training is False


def test_ctrl_c_saves_and_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = ImageTask.loss_terms

    def interrupting(self, batch, loss_fn):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, loss_fn)

    monkeypatch.setattr(ImageTask, "loss_terms", interrupting)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    run = train(fast(tmp_path), tmp_path / "int")
    assert latest_checkpoint(run).name == "step_0000003"
    assert not (run / "eval.json").exists()
    assert signal.getsignal(signal.SIGINT) is before


def test_logs_config_and_checkpoint_layout(tmp_path: Path) -> None:
    cfg = fast(tmp_path, train={"eval_every": 6, "tensorboard": True})
    run = train(cfg)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert run == Path(cfg.train.output_dir) / "tiny"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 6, 8, 10, 12]
    assert all(r["temperature"] == 0.3 and r["items_per_s"] > 0 for r in losses)
    assert any("monitor" in r and r["monitor"]["std"] > 0 for r in records)
    assert any(r.get("quick") for r in records)
    assert (run / "config.yaml").exists() and (run / "eval.json").exists()
    # only the newest two checkpoints are kept
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_0000008",
        "step_0000012",
    ]
    # a second run with the same name gets a fresh folder
    assert train(cfg).name == "tiny-2"
    load_weights(
        latest_checkpoint(run),
        torch.nn.ModuleDict({"model": load_run(run)[1].model, "loss": torch.nn.Module()}),
    )


def test_supervised_task_and_schedule_fit_to_budget(tmp_path: Path) -> None:
    cfg = fast(
        tmp_path,
        task="supervised",
        loss={"name": "supcon", "params": {"temperature": 0.1}},
        train={"time_budget_s": 1e-3, "fit_schedule_to_budget": True, "calibration_steps": 2},
    )
    run = train(cfg, tmp_path / "sup")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fitted = [r for r in records if r.get("event") == "schedule_fitted"]
    assert fitted and fitted[0]["total_steps"] == 2  # the calibration steps always run
    assert json.loads((run / "eval.json").read_text())["step"] == 2


def test_schedule_is_fitted_twice_and_never_beyond_max_steps(tmp_path: Path) -> None:
    """A budget that is never reached: both fits (after 2 and 10 steps) keep max_steps."""
    cfg = fast(
        tmp_path,
        train={"time_budget_s": 1e6, "fit_schedule_to_budget": True, "calibration_steps": 2},
    )
    run = train(cfg, tmp_path / "fit")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fitted = [(r["step"], r["total_steps"]) for r in records if r.get("event") == "schedule_fitted"]
    assert fitted == [(2, cfg.train.max_steps), (10, cfg.train.max_steps)]


class _SpeedingUpClock:
    """A stand-in for the loop's ``time`` module: each ``perf_counter`` call advances 0.5 s
    until ``fast_after`` calls, then 0.25 s (the machine gets twice as fast)."""

    def __init__(self, fast_after: int) -> None:
        self.now, self.calls, self.fast_after = 0.0, 0, fast_after

    def perf_counter(self) -> float:
        self.calls += 1
        self.now += 0.5 if self.calls <= self.fast_after else 0.25
        return self.now


def test_schedule_is_refitted_when_the_machine_changes_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps take 0.5 s, then 0.25 s after step 10: the fits at half and 80 % of a 20 s budget
    lengthen the schedule from 40 to 70 steps and the run spends its whole budget."""
    from contrastkit.train import loop

    # one clock call starts the throughput timer, then two per step (start and end)
    monkeypatch.setattr(loop, "time", _SpeedingUpClock(fast_after=1 + 2 * 10))
    cfg = fast(
        tmp_path,
        train={
            "max_steps": 1000,
            "time_budget_s": 20.0,
            "fit_schedule_to_budget": True,
            "calibration_steps": 2,
            "log_every": 1000,
            "monitor_every": 0,
            "checkpoint_every": 0,
        },
    )
    run = train(cfg, tmp_path / "refit")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fitted = [(r["step"], r["total_steps"]) for r in records if r.get("event") == "schedule_fitted"]
    assert fitted == [(2, 40), (10, 40), (30, 70), (54, 70)]
    assert json.loads((run / "eval.json").read_text())["step"] == 70


def test_pairs_task_with_gradient_caching_matches_plain_step(tmp_path: Path) -> None:
    """WordNet adverb lemma -> gloss with a tiny from-scratch BERT (no dropout): the
    gradient-cached run ends with the weights of the plain run; masks and baseline are wired."""
    raw = tiny_pairs_config(tmp_path)
    plain = train(load_config_dict(raw), tmp_path / "plain")
    cached = train(load_config_dict(raw, ["train.grad_cache_chunk=4"]), tmp_path / "cached")
    a, b = final_weights(plain), final_weights(cached)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    ev = json.loads((plain / "eval.json").read_text())
    assert ev["baseline_name"] == "before training"
    assert set(ev["metrics"]) >= {"R@1", "R@10", "MRR"} and set(ev["baseline"]) >= {"R@1"}


# Losses whose inputs are not two views of a batch: scalar scores (preference task) or
# explicit (a, b, is_positive) pairs.
NOT_FOR_VIEWS = {"preference", "contrastive_margin"}


@pytest.mark.parametrize("name", sorted(set(list_losses()) - NOT_FOR_VIEWS))
def test_every_registered_loss_trains_in_the_loop(tmp_path: Path, name: str) -> None:
    """Generated from the loss registry: each loss runs 2 steps on two views of digits (labels
    for label-based losses; predictor + EMA teacher for BYOL/SimSiam) and logs a finite loss."""
    from contrastkit.losses import LOSSES
    from contrastkit.train.tasks import _takes_labels

    task = "supervised" if _takes_labels(LOSSES.get(name)) or name == "supcon" else "views"
    cfg = fast(
        tmp_path,
        task=task,
        loss={"name": name, "params": {}},
        train={"max_steps": 2, "log_every": 1, "monitor_every": 0},
    )
    run = train(cfg, tmp_path / name)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_place_ignore_blocks_matches_the_global_mask_within_each_process() -> None:
    """Per-process id masks placed into the global batch equal the global id mask on every
    same-process pair and ignore nothing across processes."""
    from contrastkit.train.loop import place_ignore_blocks

    world, b = 3, 4
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (world * b,), generator=g)  # (G*B,) global ids
    neg_ids = torch.randint(0, 5, (world * b,), generator=g)
    local = []
    for r in range(world):
        q = ids[r * b : (r + 1) * b]
        keys, negs = ids[r * b : (r + 1) * b], neg_ids[r * b : (r + 1) * b]
        local.append(torch.cat([q[:, None] == keys[None, :], q[:, None] == negs[None, :]], 1))
    placed = place_ignore_blocks(torch.cat(local), world)  # (G*B, 2*G*B)
    same_process = torch.arange(world * b)[:, None] // b == torch.arange(world * b)[None, :] // b
    full = torch.cat([ids[:, None] == ids[None, :], ids[:, None] == neg_ids[None, :]], 1)
    expected = full & same_process.repeat(1, 2)
    assert torch.equal(placed, expected)
