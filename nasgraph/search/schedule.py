"""A search within a wall-clock budget (`--time-budget`): when the trials stop, and how many
epochs the final retraining gets, and what such a search runs unless told otherwise.

The budget covers the whole run: loading, screening, the trials, the report and the final
retraining. A share of it, 60% unless `--final-share` says otherwise, is kept for the
final retraining; the trials run until the rest is spent (a trial still running then is
stopped after its current epoch and counts as pruned), and the final retraining then gets
as many epochs as the time left allows, estimated from its trial's own seconds per epoch.

Which trial is retrained: with the final epochs bounded by time, a network that trains twice
as fast gets twice the epochs, and MACs do not say how fast a network trains. So of the
trials whose validation accuracy cannot be told from the best's (within one standard error:
`level_and_fastest`), the one that trained fastest is retrained.

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
from collections.abc import Sequence
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
# after this many epochs a final retraining is fitted again to the time left, at the mean
# pace of its epochs from the second on (every seed's process then trains), and may grow
STEADY_EPOCHS = 4


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

    @property
    def final_end(self) -> float:
        """When the final retraining must end (`time.time()`): the report's time before
        the end."""
        return self.end - REPORT_SECONDS

    def final_plan(self, now: float, seconds_per_epoch: float, seeds: int, train_images: int,
                   final_images: int, parallel: int = 1) -> FinalPlan:
        """Seeds and epochs of the final retraining that fit in the time left at `now`, for
        a network that took `seconds_per_epoch` on `train_images` in its trial (the final
        retraining trains on `final_images`, `parallel` seeds at a time): all `seeds` with
        as many epochs as fit, else fewer seeds of one epoch; (0, 0) when not even that
        fits."""
        left = self.final_end - now
        epoch = seconds_per_epoch * final_images / train_images * MARGIN
        if seeds <= 0 or left < epoch:
            return FinalPlan(0, 0)
        rounds = math.ceil(seeds / max(1, parallel))  # seeds that train one after another
        epochs = math.floor(left / (rounds * epoch))
        if epochs >= 1:
            return FinalPlan(seeds, epochs)
        return FinalPlan(min(seeds, math.floor(left / epoch) * max(1, parallel)), 1)


class Trained(NamedTuple):
    """What the final pick needs of a trained trial."""

    number: int
    val_accuracy: float
    train_seconds: float


def level_and_fastest(trials: Sequence[Trained], val_images: int) -> int:
    """The trial a timed search retrains: of the trials whose validation accuracy is within
    one standard error of the best's, the one that trained fastest (then the more accurate).

    The standard error of an accuracy p measured on n images is sqrt(p (1 - p) / n), about
    0.4 points for 88% on Fashion-MNIST's 6,000 validation images. Preferring the cheapest of
    the models that the validation data cannot tell apart is the one-standard-error rule
    (Breiman et al., "Classification and Regression Trees", 1984; Hastie et al., "The
    Elements of Statistical Learning", section 7.10).

    >>> level_and_fastest([Trained(13, 0.8772, 92.5), Trained(19, 0.8750, 47.3),
    ...                    Trained(16, 0.8710, 40.6)], val_images=6_000)  # SE 0.42 points
    19
    """
    if not trials:
        raise ValueError("no trained trial to pick from")
    best = max(t.val_accuracy for t in trials)
    se = math.sqrt(best * (1 - best) / max(1, val_images))
    level = [t for t in trials if t.val_accuracy >= best - se]
    return min(level, key=lambda t: (t.train_seconds, -t.val_accuracy, t.number)).number


def refit_epochs(now: float, until: float, epoch_seconds: float, rounds: int = 1,
                 done: int = 1) -> int:
    """The epochs in all of a final retraining that has trained `done` epochs by `now`, at
    `epoch_seconds` an epoch, so that it ends by `until`, and so do the `rounds - 1`
    retrainings of as many epochs that train after it: (E - done) + (rounds - 1) E epochs,
    10% to spare, fit in the time left. At least `done`.

    The final retraining is planned from its trial's pace, a single measurement made while
    trials and the search's own work shared the cores. After its first epoch the epochs are
    cut to these when fewer, so that a trial timed fast does not overrun the budget; after
    `STEADY_EPOCHS` they are fitted again at the pace of the epochs since the first, longer
    or shorter (`final.py`).

    >>> refit_epochs(now=100.0, until=1000.0, epoch_seconds=20.0)  # 900 / 22 + 1
    41
    >>> refit_epochs(now=100.0, until=1000.0, epoch_seconds=20.0, rounds=2)
    20
    >>> refit_epochs(now=160.0, until=1000.0, epoch_seconds=20.0, done=4)  # 840 / 22 + 4
    42
    """
    per = epoch_seconds * MARGIN
    return max(done, math.floor(((until - now) / per + done) / max(1, rounds)))


def trial_epochs(train_images: int) -> int:
    """Epochs of a trial in a timed search: enough to see about `TRIAL_IMAGES` images, 1 to
    `MAX_TRIAL_EPOCHS` (2 on Fashion-MNIST's 54,000 training images, 10 on digits' 1,222).

    >>> trial_epochs(54_000), trial_epochs(1_222), trial_epochs(1_000_000)
    (2, 10, 1)
    """
    return max(1, min(MAX_TRIAL_EPOCHS, math.ceil(TRIAL_IMAGES / max(1, train_images))))
