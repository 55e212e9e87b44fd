"""A search within a wall-clock budget (`--time-budget`): when the trials stop, and how many
epochs the final retraining gets, and what such a search runs unless told otherwise.

The budget covers the whole run: loading, screening, the trials, the report and the final
retraining. A share of it, 60% unless `--final-share` says otherwise, is kept for the
final retraining; the trials run until the rest is spent (a trial still running then is
stopped after its current epoch and counts as pruned), and the final retraining then gets
as many epochs as the time left allows, estimated from the best trial's own seconds per
epoch.

    >>> plan = Schedule(budget=1800.0, start=0.0, final_share=1 / 3)
    >>> round(plan.trials_end)  # 1800 s less a third, less the report's 20 s
    1180
    >>> plan.final_plan(now=1200.0, seconds_per_epoch=12.0, seeds=3, train_images=54_000,
    ...                 final_images=60_000)  # 580 s left, 14.7 s per epoch with the margin
    FinalPlan(seeds=3, epochs=13)

`nasgraph search --time-budget` fills the options it is not given from `TIMED_DEFAULTS`
and `trial_epochs`: the settings that reached the best accuracy in a fixed wall clock
(docs/benchmarks.md, "Fashion-MNIST at 1M MACs in 30 minutes").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

# of the budget, kept for the final retraining by default: on Fashion-MNIST at 1M MACs more
# final epochs gain more than more trials (docs/search.md, "What limits a short search");
# a 30-minute search on 2 cores scored 92.68% keeping 60%, 91.82% keeping a third
FINAL_SHARE = 0.6
# a timed search screens candidates by zero-cost proxies and halves its trials, and
# retrains the best twice, side by side on a 2-core CPU (one per worker)
TIMED_DEFAULTS = {"screen": 128, "pruner": "halving", "final_seeds": 2}
TRIAL_IMAGES = 100_000  # a timed trial trains on about this many images ...
MAX_TRIAL_EPOCHS = 10  # ... in at most this many epochs
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


def trial_epochs(train_images: int) -> int:
    """Epochs of a trial in a timed search: enough to see about `TRIAL_IMAGES` images, 1 to
    `MAX_TRIAL_EPOCHS` (2 on Fashion-MNIST's 54,000 training images, 10 on digits' 1,222).

    >>> trial_epochs(54_000), trial_epochs(1_222), trial_epochs(1_000_000)
    (2, 10, 1)
    """
    return max(1, min(MAX_TRIAL_EPOCHS, math.ceil(TRIAL_IMAGES / max(1, train_images))))
