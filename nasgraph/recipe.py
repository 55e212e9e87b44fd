"""How a candidate is trained (`Recipe`) and its learning-rate schedule (`warmup_cosine`).

Pure python and pydantic, no torch: both trainers read them, the torch one
(`nasgraph.train`, which re-exports `Recipe`) and the numba one
(`nasgraph.backends.numba.loop`), which must not import torch.

    >>> schedule = warmup_cosine(epochs=2, steps_per_epoch=4, warmup_epochs=1.0)
    >>> [round(schedule(step), 3) for step in range(8)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 0.854, 0.5, 0.146]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# From this many training images (Fashion-MNIST's 54,000) the default batch is 128, not 32,
# at twice the learning rate: faster per candidate for a fraction of a point
# (docs/benchmarks.md, "Thresholds of the trainer", and benchmarks/train_speed.py).
LARGE_SPLIT = 50_000


class Recipe(BaseModel):
    """How a candidate is trained.

    `batch_size` None: 32, or 128 when the dataset's training split has `LARGE_SPLIT`
    images or more; `lr` None: 1e-2 at batch 32, times the square root of batch / 32 (2e-2
    at 128).

        >>> Recipe().batch_for(54_000), Recipe().lr_at(128), Recipe(lr=0.05).lr_at(128)
        (128, 0.02, 0.05)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float | None = Field(default=None, gt=0)
    # AdamW multiplies its decay by the learning rate: 5e-3 x 1e-2 per step; 5e-4 at lr 4e-3
    # did nothing measurable (docs/search.md, Evaluation)
    weight_decay: float = Field(default=5e-3, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # SGD only (Nesterov)
    batch_size: int | None = Field(default=None, gt=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    shift: int | None = Field(default=None, ge=0)  # random translation (pixels); None: auto
    flip: bool = True  # horizontal flips, where the dataset allows them

    def batch_for(self, train_images: int) -> int:
        """The batch size on a dataset whose training split has `train_images` images."""
        if self.batch_size is not None:
            return self.batch_size
        return 128 if train_images >= LARGE_SPLIT else 32

    def lr_at(self, batch_size: int) -> float:
        """The peak learning rate at `batch_size`."""
        return self.lr if self.lr is not None else 1e-2 * math.sqrt(batch_size / 32)


def default_shift(input_shape: tuple[int, ...]) -> int:
    """An eighth of the image side (4 px on CIFAR's 32), none below 16 px: one pixel of an
    8x8 digit is an eighth of its stroke, and shifting it slows learning more than it helps."""
    side = min(input_shape[1:])
    return side // 8 if side >= 16 else 0


# `replan(epochs_done, seconds_of_that_epoch)` after each epoch of a training run: None, or
# the epochs to train in all (the trainers rebuild `warmup_cosine` for them)
Replan = Callable[[int, float], int | None]


def warmup_cosine(epochs: int, steps_per_epoch: int, warmup_epochs: float
                  ) -> Callable[[int], float]:
    """The factor of the peak learning rate at each optimizer step (0-based).

    The warm-up lasts `warmup_epochs` epochs but at most half the run, and climbs to 1 at
    its last step; the cosine then falls from 1 towards 0 at the end of the run.
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total // 2, round(warmup_epochs * steps_per_epoch))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return schedule
