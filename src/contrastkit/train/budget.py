"""Fitting the schedule's length to a time budget.

A run given ``train.time_budget_s`` does not know how many steps fit in it. :class:`BudgetFit`
measures: after ``calibration_steps`` it sets the length from their mean time; again after 5x
as many, and when half and 80 % of the budget are spent, from the rate since the previous fit
(the first steps are slow and a shared machine changes speed: a single early fit ended runs
10-20 % early). Each fit is capped at ``max_steps``.

>>> fit = BudgetFit(budget_s=100.0, calibration_steps=10, max_steps=10_000)
>>> fit.update(step=10, elapsed=2.0)  # 0.2 s per step -> 500 steps fit
500
>>> fit.update(step=11, elapsed=2.2) is None
True
"""

from __future__ import annotations

REFIT_FRACTIONS = (0.5, 0.8)
"""Fractions of the budget at which the length is fitted again."""


class BudgetFit:
    """Decides the schedule length of a run with a time budget (see the module docstring)."""

    def __init__(self, budget_s: float, calibration_steps: int, max_steps: int) -> None:
        self.budget, self.calibration, self.max_steps = budget_s, calibration_steps, max_steps
        self.last_fit = (0, 0.0)  # (step, elapsed) of the latest fit
        self.refit_at = list(REFIT_FRACTIONS)

    def update(self, step: int, elapsed: float) -> int | None:
        """The new schedule length after optimizer step ``step`` at ``elapsed`` seconds of
        training, or None when this step is no fitting point."""
        fitted = None
        if step == self.calibration:
            fitted = int(self.budget / (elapsed / step))
        elif step > self.calibration and (
            step == 5 * self.calibration
            or (self.refit_at and elapsed >= self.refit_at[0] * self.budget)
        ):
            rate = (elapsed - self.last_fit[1]) / max(step - self.last_fit[0], 1)
            fitted = step + int((self.budget - elapsed) / max(rate, 1e-9))
        if fitted is None:
            return None
        self.last_fit = (step, elapsed)
        while self.refit_at and elapsed >= self.refit_at[0] * self.budget:  # fractions passed
            self.refit_at.pop(0)
        return max(step, min(self.max_steps, fitted))

    def calibrating(self, step: int) -> bool:
        """True before the first fit (the budget stop waits for it)."""
        return step < self.calibration
