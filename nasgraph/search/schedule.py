"""A search within a wall-clock budget (`--time-budget`): when the trials stop, and how many
epochs the final retraining gets.

The budget covers the whole run: loading, screening, the trials, the report and the final
retraining. A share of it, a third unless `--final-share` says otherwise, is kept for the
final retraining; the trials run until the rest is spent (a trial still running then is
stopped after its current epoch and counts as pruned), and the final retraining then gets
as many epochs as the time left allows, estimated from the best trial's own seconds per
epoch.

    >>> plan = Schedule(budget=1800.0, start=0.0)
    >>> round(plan.trials_end)  # 1800 s less a third, less the report's 20 s
    1180
    >>> plan.final_plan(now=1200.0, seconds_per_epoch=12.0, seeds=3, train_images=54_000,
    ...                 final_images=60_000)  # 580 s left, 14.7 s per epoch with the margin
    FinalPlan(seeds=3, epochs=13)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

# of the budget, kept for the final retraining by default: on Fashion-MNIST at 1M MACs more
# final epochs gain more than more trials (docs/search.md, "What limits a short search")
FINAL_SHARE = 1 / 3
REPORT_SECONDS = 20.0  # leaderboard, test accuracy of the top trials, drawings, plots
MARGIN = 1.1  # the final retraining's epochs are estimated, not measured: 10% to spare


class FinalPlan(NamedTuple):
    seeds: int
    epochs: int


@dataclass(frozen=True)
class Schedule:
    """The plan of a search of `budget` seconds started at `start` (`time.time()`)."""

    budget: float
    start: float
    final_share: float = FINAL_SHARE

    @property
    def trials_end(self) -> float:
        """When trials stop (`time.time()`)."""
        return self.start + self.budget * (1 - self.final_share) - REPORT_SECONDS

    @property
    def end(self) -> float:
        return self.start + self.budget

    def final_plan(self, now: float, seconds_per_epoch: float, seeds: int, train_images: int,
                   final_images: int, parallel: int = 1) -> FinalPlan:
        """Seeds and epochs of the final retraining that fit in the time left at `now`, for
        a network that took `seconds_per_epoch` on `train_images` in its trial (the final
        retraining trains on `final_images`, `parallel` seeds at a time): all `seeds` with
        as many epochs as fit, else fewer seeds of one epoch; (0, 0) when not even that
        fits."""
        left = self.end - REPORT_SECONDS - now
        epoch = seconds_per_epoch * final_images / train_images * MARGIN
        if seeds <= 0 or left < epoch:
            return FinalPlan(0, 0)
        rounds = math.ceil(seeds / max(1, parallel))  # seeds that train one after another
        epochs = math.floor(left / (rounds * epoch))
        if epochs >= 1:
            return FinalPlan(seeds, epochs)
        return FinalPlan(min(seeds, math.floor(left / epoch) * max(1, parallel)), 1)
