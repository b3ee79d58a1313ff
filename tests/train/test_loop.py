from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrastkit.losses import list_losses, loss_spec
from contrastkit.train import (
    TrainingDiverged,
    TrainingInterrupted,
    load_config_dict,
    load_run,
    train,
)
from contrastkit.train.checkpoint import latest_checkpoint, load_weights
from contrastkit.train.tasks.base import Step
from contrastkit.train.tasks.image import ImageTask

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
        out = original(self, batch, loss_fn)
        calls["n"] += 1
        if calls["n"] == 7:  # step 7 diverges; checkpoints were written at step 4
            return Step({k: v * float("nan") for k, v in out.terms.items()}, out.embeddings)
        return out

    monkeypatch.setattr(ImageTask, "loss_terms", poisoned)
    cfg = fast(tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, tmp_path / "nan")
    msg = str(info.value)
    assert "step 7" in msg and "'nt_xent'" in msg and "optim.lr" in msg
    assert "the last finite loss was" in msg and "step_0000004" in msg  # names the survivor
    ckpt = latest_checkpoint(tmp_path / "nan")
    assert ckpt is not None and ckpt.name == "step_0000004"
    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    _, task, _ = load_run(tmp_path / "nan")  # the run is loadable from the good checkpoint
    assert task.model["encoder"].training is False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_and_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    calls = {"n": 0}
    original = ImageTask.loss_terms

    def interrupting(self, batch, loss_fn):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signum)
        return original(self, batch, loss_fn)

    monkeypatch.setattr(ImageTask, "loss_terms", interrupting)
    before = signal.getsignal(signum)  # SIG_IGN when the suite runs as a background job
    with pytest.raises(TrainingInterrupted) as info:
        train(fast(tmp_path), tmp_path / "int")
    assert info.value.signum == signum and info.value.step == 3
    run = tmp_path / "int"
    assert latest_checkpoint(run).name == "step_0000003"
    assert not (run / "eval.json").exists()
    assert signal.getsignal(signum) is before


def test_huge_learning_rate_diverges_with_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: lr 1e6 without clipping. The trainer's divergence path (exit 3, the
    step, the tensor, suggestions), not a loss's input check (exit 2); the checkpoint it names
    holds finite weights."""
    import yaml

    from contrastkit.cli import main

    raw = tiny_config(tmp_path, train={"max_steps": 40, "checkpoint_every": 1})
    raw["eval"].update({"probe": False, "raw_baseline": False})
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["train", str(path), "--set", "optim.lr=1e6", "--set", "optim.grad_clip=null"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "training diverged at step" in err and "lower optim.lr" in err
    assert "Traceback" not in err
    ckpt = latest_checkpoint(tmp_path / "runs" / "tiny")
    assert ckpt is not None and ckpt.name in err
    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_logs_config_and_checkpoint_layout(tmp_path: Path) -> None:
    cfg = fast(tmp_path, train={"eval_every": 6, "tensorboard": True})
    run = train(cfg)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert run == Path(cfg.train.output_dir) / "tiny"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 6, 8, 10, 12]
    assert all("temperature" not in r and r["items_per_s"] > 0 for r in losses)  # not learned
    # the monitor's vocabulary is CollapseMonitor's, the same in metrics.jsonl and the report
    monitors = [r["monitor"] for r in records if "monitor" in r]
    assert monitors and all(m["std_ratio"] > 0 and "positive_similarity" in m for m in monitors)
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


def test_schedule_is_fitted_once_and_never_beyond_max_steps(tmp_path: Path) -> None:
    """A budget that is never reached: the fit after 2 steps keeps max_steps, no later check
    changes it, and the run says that max_steps ended it before the budget."""
    cfg = fast(
        tmp_path,
        train={"time_budget_s": 1e6, "fit_schedule_to_budget": True, "calibration_steps": 2},
    )
    run = train(cfg, tmp_path / "fit")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fitted = [(r["step"], r["total_steps"]) for r in records if r.get("event") == "schedule_fitted"]
    assert fitted == [(2, cfg.train.max_steps)]
    used = [r for r in records if r.get("event") == "budget_used"]
    assert [u["reason"] for u in used] == ["max_steps"]


class _SpeedingUpClock:
    """A stand-in for the loop's ``time`` module: each ``perf_counter`` call advances 0.5 s
    until ``fast_after`` calls, then 0.25 s (the machine gets twice as fast). Phase timings
    (``monotonic``) do not move it."""

    def __init__(self, fast_after: int) -> None:
        self.now, self.calls, self.fast_after = 0.0, 0, fast_after

    def monotonic(self) -> float:
        return 0.0

    def perf_counter(self) -> float:
        self.calls += 1
        self.now += 0.5 if self.calls <= self.fast_after else 0.25
        return self.now


def test_schedule_is_refitted_when_the_machine_changes_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps take 0.5 s, then 0.25 s after step 10: once the median of the recent steps shows
    the new speed (step 15, then 20 with all ten recent steps fast) the schedule is lengthened
    from 40 to 70 steps and the run spends its whole budget."""
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
    assert fitted == [(2, 40), (15, 51), (20, 70)]
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


@pytest.mark.parametrize(
    "name", [n for n in list_losses() if loss_spec(n).inputs in ("pair", "prediction", "labelled")]
)
def test_every_registered_loss_trains_in_the_loop(tmp_path: Path, name: str) -> None:
    """Generated from the loss registry: each loss that takes embeddings runs 2 steps on two
    views of digits, in the task its declared inputs call for (labels: supervised; predictor +
    EMA teacher for BYOL/SimSiam) and logs a finite loss."""
    task = "supervised" if loss_spec(name).inputs == "labelled" else "views"
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


def test_every_registered_loss_declares_how_it_is_called() -> None:
    for name in list_losses():
        spec = loss_spec(name)  # raises when a declaration is missing
        assert spec.inputs and spec.distributed


def lrs(run: Path) -> list[float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["lr"] for r in records if "lr" in r]


def test_short_run_reaches_its_peak_learning_rate(tmp_path: Path) -> None:
    """warmup_steps 50 on a 12-step run: the warm-up is capped at 10 % of the schedule."""
    cfg = fast(tmp_path, optim={"warmup_steps": 50}, train={"log_every": 1})
    values = lrs(train(cfg, tmp_path / "short"))
    assert max(values) == pytest.approx(cfg.optim.lr)
    assert values[-1] < values[1]


def test_refits_never_raise_the_learning_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule is refitted longer at half the budget (the machine got faster): the rate
    keeps falling instead of jumping back up."""
    from contrastkit.train import loop

    monkeypatch.setattr(loop, "time", _SpeedingUpClock(fast_after=1 + 2 * 10))
    cfg = fast(
        tmp_path,
        optim={"warmup_steps": 2},
        train={
            "max_steps": 1000,
            "time_budget_s": 20.0,
            "calibration_steps": 2,
            "log_every": 1,
            "monitor_every": 0,
            "checkpoint_every": 0,
        },
    )
    values = lrs(train(cfg, tmp_path / "refit"))
    peak = values.index(max(values))
    assert all(b <= a + 1e-12 for a, b in zip(values[peak:], values[peak + 1 :]))


def test_fp16_trains_with_a_grad_scaler(tmp_path: Path) -> None:
    cfg = fast(tmp_path, train={"precision": "fp16", "max_steps": 4, "log_every": 1})
    run = train(cfg, tmp_path / "fp16")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["precision"] == "fp16"
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)


def test_precision_defaults_to_auto(tmp_path: Path) -> None:
    from contrastkit.train.loop import native_bf16

    raw = tiny_config(tmp_path, train={"max_steps": 1})
    raw["train"].pop("precision")
    cfg = load_config_dict(raw)
    assert cfg.train.precision == "auto"
    run = train(cfg, tmp_path / "auto")
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert start["precision"] == ("bf16" if native_bf16() else "fp32")


def test_m_per_class_sampler_shapes_batches_and_resumes_exactly(tmp_path: Path) -> None:
    from contrastkit.train.batches import build_order
    from contrastkit.train.tasks import build_task

    cfg = fast(
        tmp_path, data={"sampler": "m_per_class"}, task="supervised", loss={"name": "supcon"}
    )
    task = build_task(cfg)
    order = build_order(cfg, task)
    for _ in range(3):  # 32 / 4 = 8 classes, 4 items each
        counts = torch.bincount(task.train_labels[order.next()])
        assert sorted(counts[counts > 0].tolist()) == [4] * 8
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", stop_after=5)
    train(cfg, part, resume=True)
    a, b = final_weights(full), final_weights(part)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_no_duplicates_sampler_keeps_one_row_per_group(tmp_path: Path) -> None:
    from contrastkit.train.batches import build_order
    from contrastkit.train.tasks import build_task

    raw = tiny_pairs_config(tmp_path, data={"sampler": "no_duplicates"})
    cfg = load_config_dict(raw)
    task = build_task(cfg)
    order = build_order(cfg, task, rank=1, world=2)  # rank 1 of 2: its share of each batch
    for _ in range(4):
        ids = task.train_groups[order.next()]
        assert len(ids) == 16 and len(set(ids.tolist())) == 16
    state = order.state_dict()
    expected = order.next()
    again = build_order(cfg, task, rank=1, world=2)
    again.load_state_dict(state)
    assert torch.equal(again.next(), expected)


def test_matryoshka_dims_train_and_evaluate_each_width(tmp_path: Path) -> None:
    """loss.matryoshka_dims wraps the loss; the evaluation reports kNN at every width."""
    cfg = fast(tmp_path, loss={"matryoshka_dims": [4, 8]}, train={"max_steps": 2})
    run = train(cfg, tmp_path / "mrl")
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert {"knn_accuracy", "knn_accuracy @4d", "knn_accuracy @8d"} <= set(metrics)
    from contrastkit.train import ConfigError

    with pytest.raises(ConfigError, match=r"loss\.matryoshka_dims: got \[0\]"):
        load_config_dict(tiny_config(tmp_path, loss={"matryoshka_dims": [0]}))


def test_gradient_caching_refuses_fp16_with_one_line(tmp_path: Path) -> None:
    """fp16 needs the loop's GradScaler inside the chunked backward, which is not wired: the run
    stops at its first step naming both keys instead of training on unscaled gradients."""
    raw = tiny_pairs_config(tmp_path)
    cfg = load_config_dict(raw, ["train.grad_cache_chunk=4", "train.precision=fp16"])
    with pytest.raises(ValueError, match=r"train.grad_cache_chunk: .* set train.precision"):
        train(cfg, tmp_path / "fp16")


def test_fused_adamw_only_where_every_parameter_is_contiguous() -> None:
    """The fused AdamW walks parameters and moments as flat memory: a channels-last weight
    (whose moments come back contiguous from a checkpoint) keeps torch's own choice."""
    from contrastkit.train.loop import fused_adamw_ok

    linear = torch.nn.Linear(4, 3)
    assert fused_adamw_ok(list(linear.parameters())) is True
    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    assert fused_adamw_ok([*linear.parameters(), *conv.parameters()]) is None
    assert fused_adamw_ok([]) is None
