"""The time-budget schedule: warmup, then a cosine decay driven by the fraction
of the time budget spent, so the last steps are taken at a low learning rate
whatever the machine's speed.

    lr(s, t) = lr_peak * min(1, s / warmup) * (m + (1 - m) * (1 + cos(pi * f)) / 2)
    f = min(max(t / S, s / steps), 1)

with s the step being taken (1, 2, ...), t the run's training time before the
step (``Trainer.seconds``: summed over every session of the run and saved in
each checkpoint), S the budget (``--time-budget``) and m = 0.02 the floor (as
``warmup_cosine``'s ``min_lr``).  The run stops at the first step boundary
with t >= S (or at ``--steps``, a cap); its closing line says how many steps
fitted.  ``steps`` (``--steps``) caps the run: when the steps would run out
before the budget, the decay follows them instead, so either way the rate has
decayed when the run ends.

What is guaranteed.  The rate of a step is a pure function of (config, step,
t).  A checkpoint stores t, so a resumed run spends the budget that is left
and decays to the same end.  Given the same clock readings, a run stopped and
resumed has the parameters, bit for bit, of one that ran straight (the tests
drive the clock); with a real clock no two runs read the same times, so the
number of steps, and the rate of each, differ between runs, resumed or not,
as they do between two straight runs.  With several MPI ranks the clock is
rank 0's (``World.agree``), so every rank takes the same rates and stops at
the same step.
"""

from __future__ import annotations

import math

__all__ = ["BudgetSchedule"]


class BudgetSchedule:
    """``schedule(step) -> lr``, reading the run's training time from ``elapsed()``."""

    def __init__(self, peak: float, warmup: int, budget: float, elapsed, steps: int | None = None,
                 floor: float = 0.02):
        if not budget > 0:
            raise ValueError(f"BudgetSchedule: budget must be > 0 seconds, got {budget!r}")
        self.peak, self.warmup, self.budget = float(peak), int(warmup), float(budget)
        self.elapsed, self.floor, self.steps = elapsed, float(floor), steps

    def fraction(self, step: int = 0) -> float:
        f = self.elapsed() / self.budget
        if self.steps:
            f = max(f, step / self.steps)
        return min(max(f, 0.0), 1.0)

    def rate(self, step: int, fraction: float) -> float:
        warm = min(1.0, step / self.warmup) if self.warmup > 0 else 1.0
        decay = self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * fraction))
        return self.peak * warm * decay

    def __call__(self, step: int) -> float:
        return self.rate(step, self.fraction(step))
