"""A time budget is used: refits ahead and behind, robust to warm-up and stalls (issue 35)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from contrastkit.train import train
from contrastkit.train.budget import BudgetFit, BudgetSummary

from .conftest import tiny_config


def simulate(budget: float, calibration: int, seconds: Callable[[int], float]) -> tuple[int, float]:
    """The loop's budget logic on step times ``seconds(step)``: (steps, elapsed) at the end."""
    fit, elapsed, total, step = BudgetFit(budget, calibration, 100_000), 0.0, 100_000, 0
    while step < total:
        step += 1
        elapsed += seconds(step)
        total = fit.update(step, elapsed) or total
        if elapsed >= budget and not fit.calibrating(step):
            break
    return step, elapsed


def test_a_run_slowed_in_its_first_steps_uses_its_budget() -> None:
    """The newcomer's run: 24-26 s per step at first (another process), then 2 s; it used to be
    fitted to a few dozen steps and stop after half of its 480 s budget."""
    steps, elapsed = simulate(480.0, 20, lambda s: 25.0 if s <= 12 else 2.0)
    assert elapsed >= 0.9 * 480.0 and elapsed <= 1.05 * 480.0, (steps, elapsed)


@pytest.mark.parametrize(
    "seconds",
    [
        lambda s: 1.0,  # steady
        lambda s: 5.0 if s <= 3 else 1.0,  # warm-up
        lambda s: 30.0 if s in (40, 41, 42) else 1.0,  # a stall in the middle
        lambda s: 1.0 if s <= 100 else 0.5,  # the machine gets faster
        lambda s: 0.5 if s <= 100 else 1.0,  # ... or slower
        lambda s: 1.0 + 0.5 * (s % 2),  # noisy
        lambda s: 40.0,  # slow steps: 20 calibration steps would take 800 s
    ],
    ids=["steady", "warm-up", "stall", "faster", "slower", "noisy", "slow"],
)
def test_the_budget_is_used_whatever_the_step_times(seconds: Callable[[int], float]) -> None:
    steps, elapsed = simulate(600.0, 20, seconds)
    assert 0.9 * 600.0 <= elapsed <= 600.0 + 30.0, (steps, elapsed)


def test_max_steps_caps_and_is_named_as_the_reason() -> None:
    fit = BudgetFit(1000.0, 4, max_steps=50)
    fitted = [fit.update(s, 0.1 * s) for s in range(1, 51)]
    assert [f for f in fitted if f is not None] == [50]
    used = BudgetSummary.of(1000.0, 50, 5.0, 50, stopped_at_budget=False)
    assert used.reason == "max_steps" and "train.max_steps" in used.message()
    assert used.record()["fraction"] == pytest.approx(0.005)


def test_a_training_run_slowed_on_purpose_uses_90_percent_of_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first 5 steps of a real run sleep 0.5 s each (a busy machine), the rest take a few
    ms: the run must still train until its 4 s budget is spent, and say so."""
    from contrastkit.train import loop

    real, calls = loop.forward_checked, {"n": 0}

    def slowed(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] <= 5:
            time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "forward_checked", slowed)
    budget = 4.0
    raw = tiny_config(
        tmp_path,
        train={
            "max_steps": 100_000,
            "time_budget_s": budget,
            "fit_schedule_to_budget": True,
            "calibration_steps": 4,
            "log_every": 1000,
            "monitor_every": 0,
            "checkpoint_every": 0,
        },
    )
    from contrastkit.train.config import load_config_dict

    run = train(load_config_dict(raw), tmp_path / "slowed")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    used = [r for r in records if r.get("event") == "budget_used"]
    assert len(used) == 1 and used[0]["fraction"] >= 0.9, used
    assert used[0]["reason"] in ("budget", "schedule")
