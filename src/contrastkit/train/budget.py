"""Fitting the schedule's length to a time budget, and using the budget.

A run given ``train.time_budget_s`` does not know how many steps fit in it. :class:`BudgetFit`
measures the time of every step and keeps the schedule's length such that the run ends when the
budget does:

* the step time is the **median of the recent steps** (the last ``max(calibration_steps, 10)``),
  leaving out the first ``calibration_steps // 4`` steps (warm-up: allocations, caches, a
  tokenizer's first calls). A median is not moved by a few stalled steps (an evaluation, a
  checkpoint, another process taking the CPU for a while); a mean from the start was, and once
  fitted from slow first steps a run never found out it had become fast;
* the first fit comes after ``calibration_steps``, or once a tenth of the budget is spent when
  steps are slow (at least 3 steps); after it, the predicted end
  ``elapsed + (total - step) * step_time`` is checked at every step, and the length is fitted
  again when it misses the budget by more than ``TOLERANCE`` of it, **ahead as well as behind**
  (at most every ``max(calibration_steps // 2, 5)`` steps, and always before a run would end
  early: the last planned step of a run with budget left refits). Each fit is capped at
  ``max_steps``.

:meth:`BudgetSummary.of` says at the end how much of the budget the run used and why it
stopped (``budget``, ``schedule``, ``max_steps``), for ``metrics.jsonl``, the log and the report.

>>> fit = BudgetFit(budget_s=100.0, calibration_steps=8, max_steps=10_000)
>>> [fit.update(step=s, elapsed=0.2 * s) for s in range(1, 9)][-1]  # 0.2 s per step
500
>>> fit.update(step=9, elapsed=1.8) is None  # on plan: no refit
True

A run slowed in its first steps (25 s per step, then 2 s) is refitted once it is fast again:

>>> fit, elapsed, total, step = BudgetFit(480.0, 5, 10_000), 0.0, 10_000, 0
>>> while step < total and not (elapsed >= 480.0 and not fit.calibrating(step)):
...     step += 1
...     elapsed += 25.0 if step <= 10 else 2.0
...     total = fit.update(step, elapsed) or total
>>> elapsed >= 0.9 * 480.0
True
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

FIRST_FIT_FRACTION = 0.1
"""Fit at the latest when this fraction of the budget is spent (slow steps: a long calibration
would overrun a short budget)."""
TOLERANCE = 0.05
"""Refit when the predicted end misses the budget by more than this fraction of it."""
MIN_WINDOW = 10
"""The step time is the median of at least this many recent steps."""


@dataclass(frozen=True)
class BudgetSummary:
    """How much of the budget a run used, and why it stopped."""

    budget_s: float
    used_s: float
    steps: int
    reason: str  # "budget" | "schedule" | "max_steps"

    @property
    def fraction(self) -> float:
        return self.used_s / self.budget_s if self.budget_s > 0 else 0.0

    def record(self) -> dict[str, object]:
        """The ``metrics.jsonl`` record of the summary."""
        return {
            "event": "budget_used",
            "budget_s": round(self.budget_s, 3),
            "used_s": round(self.used_s, 3),
            "fraction": round(self.fraction, 4),
            "steps": self.steps,
            "reason": self.reason,
        }

    @classmethod
    def of(
        cls, budget_s: float, step: int, elapsed: float, max_steps: int, stopped_at_budget: bool
    ) -> BudgetSummary:
        """The summary of a run that ended after ``step`` steps and ``elapsed`` seconds."""
        if stopped_at_budget:
            reason = "budget"
        elif step >= max_steps:
            reason = "max_steps"
        else:
            reason = "schedule"
        return cls(budget_s, elapsed, step, reason)

    def message(self) -> str:
        why = {
            "budget": "stopped at the time budget",
            "schedule": "finished its fitted schedule",
            "max_steps": "reached train.max_steps before the budget (raise it to use the rest)",
        }[self.reason]
        return (
            f"used {self.used_s:.1f} s of the {self.budget_s:.0f} s time budget "
            f"({100 * self.fraction:.0f} %) in {self.steps} steps: {why}"
        )


class BudgetFit:
    """Decides the schedule length of a run with a time budget (see the module docstring)."""

    def __init__(self, budget_s: float, calibration_steps: int, max_steps: int) -> None:
        self.budget, self.calibration, self.max_steps = budget_s, calibration_steps, max_steps
        self.total = max_steps  # the length the schedule has now
        self.skip = calibration_steps // 4  # warm-up steps never used for a rate
        self.window = max(calibration_steps, MIN_WINDOW)
        self.gap = max(calibration_steps // 2, 5)
        self.durations: list[float] = []
        self.previous = (0, 0.0)  # (step, elapsed) of the previous update
        self.last_fit = -1  # the step of the latest fit

    def step_time(self) -> float:
        """Median time of the recent steps, warm-up steps left out."""
        usable = self.durations[self.skip :] or self.durations
        return max(statistics.median(usable[-self.window :]), 1e-9)

    def update(self, step: int, elapsed: float) -> int | None:
        """The new schedule length after optimizer step ``step`` at ``elapsed`` seconds of
        training, or None when the current length still ends on the budget."""
        steps = max(step - self.previous[0], 1)
        self.durations.extend([(elapsed - self.previous[1]) / steps] * steps)
        self.previous = (step, elapsed)
        # The first fit after calibration_steps, or sooner when steps are slow: once a tenth
        # of the budget is spent (at least 3 steps), so calibration cannot overrun the budget.
        if self.last_fit < 0 and not (
            step >= self.calibration or (step >= 3 and elapsed >= FIRST_FIT_FRACTION * self.budget)
        ):
            return None
        rate = self.step_time()
        predicted = elapsed + (self.total - step) * rate
        first = self.last_fit < 0
        missed = abs(predicted - self.budget) > TOLERANCE * self.budget
        last_step_early = step >= self.total - 1 and self.budget - elapsed > TOLERANCE * self.budget
        if not (first or (missed and step - self.last_fit >= self.gap) or last_step_early):
            return None
        fitted = max(step, min(self.max_steps, step + int((self.budget - elapsed) / rate)))
        self.last_fit = step
        if fitted == self.total and not first:
            return None
        self.total = fitted
        return fitted

    def calibrating(self, step: int) -> bool:
        """True before the first fit (the budget stop waits for it)."""
        return self.last_fit < 0
