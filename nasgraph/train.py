"""Training and evaluation of a graph on the torch backend.

    >>> import nasgraph
    >>> from nasgraph.data import load_dataset
    >>> from nasgraph.train import Recipe, train
    >>> ds = load_dataset("digits")
    >>> g = nasgraph.zoo.get("lenet5", num_classes=10, input_shape=(1, 8, 8))  # doctest: +SKIP
    >>> result = train(g, ds, Recipe(), epochs=2)  # doctest: +SKIP

The recipe defaults suit small images: AdamW with a linear warm-up and a cosine decay,
label smoothing 0.1, random shifts of an eighth of the image (none on 8x8 digits) and flips
where the dataset allows.
Data lives on the device; batches are sliced from it, so an epoch of 8x8 digits takes a
fraction of a second on a CPU.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nasgraph import analysis
from nasgraph.data import Dataset, Split
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph

# Below this many MACs per image, a batch is too small a job to share between CPU threads:
# one thread trains a digits-sized network several times faster than two.
SMALL_MACS = 20_000_000


class Recipe(BaseModel):
    """How a candidate is trained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(default=1e-2, gt=0)
    # AdamW multiplies its decay by the learning rate: 5e-3 x 1e-2 per step; 5e-4 at lr 4e-3
    # did nothing measurable (docs/search.md, Evaluation)
    weight_decay: float = Field(default=5e-3, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # SGD only (Nesterov)
    batch_size: int = Field(default=32, gt=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    shift: int | None = Field(default=None, ge=0)  # random translation (pixels); None: auto
    flip: bool = True  # horizontal flips, where the dataset allows them


@dataclass
class TrainResult:
    """What one training run gives back."""

    model: nn.Module
    val_accuracy: float  # after the last epoch
    history: list[float] = field(default_factory=list)  # validation accuracy per epoch
    epochs: int = 0


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise NasgraphError(f"--device {device!r}: not a torch device; hint: auto, cpu, "
                            "cuda, cuda:1") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise NasgraphError(f"--device {device!r}: CUDA is not available here; hint: cpu")
    return resolved


def default_shift(input_shape: tuple[int, ...]) -> int:
    """An eighth of the image side (4 px on CIFAR's 32), none below 16 px: one pixel of an
    8x8 digit is an eighth of its stroke, and shifting it slows learning more than it helps."""
    side = min(input_shape[1:])
    return side // 8 if side >= 16 else 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def augment(x: torch.Tensor, shift: int, flip: bool, generator: torch.Generator
            ) -> torch.Tensor:
    """Random translation by up to `shift` pixels (zero fill) and random horizontal flips."""
    n, _, h, w = x.shape
    if flip:
        flips = torch.rand(n, generator=generator, device="cpu").to(x.device) < 0.5
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    if shift:
        # N x C x H x W -> N x C x (H+2s) x (W+2s), then one H x W window per sample
        padded = nn.functional.pad(x, (shift, shift, shift, shift))
        dy, dx = (torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
                  .to(x.device))
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    return x


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `split` (in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for k in range(0, len(split), batch_size):
        x = split.x[k: k + batch_size].to(device)
        y = split.y[k: k + batch_size].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(1, len(split))


def train(graph: Graph | nn.Module, data: Dataset, recipe: Recipe | None = None,
          epochs: int = 10, device: str | torch.device = "auto", seed: int = 0,
          on_epoch: Callable[[int, float], None] | None = None,
          train_split: Split | None = None, val_split: Split | None = None) -> TrainResult:
    """Train `graph` (lowered here) from scratch; validation accuracy after every epoch.

    `on_epoch(epoch, val_accuracy)` is called after each epoch; it may raise to stop (an
    Optuna pruner does). `train_split` and `val_split` replace the dataset's (the final
    retraining trains on train + validation).
    """
    recipe = recipe or Recipe()
    device = resolve_device(device) if isinstance(device, str) else device
    seed_everything(seed)
    if isinstance(graph, Graph):
        from nasgraph.backends.torch import lower

        model = lower(graph)
        small = analysis.macs(graph) < SMALL_MACS
    else:
        model, small = graph, False
    threads = torch.get_num_threads()
    if small and device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _train(model, data, recipe, epochs, device, seed, on_epoch, train_split,
                      val_split)
    finally:
        torch.set_num_threads(threads)


def _train(model: nn.Module, data: Dataset, recipe: Recipe, epochs: int,
           device: torch.device, seed: int, on_epoch: Callable[[int, float], None] | None,
           train_split: Split | None, val_split: Split | None) -> TrainResult:
    model = model.to(device)
    train_data = (train_split or data.train).to(device)
    val_data = (val_split or data.val).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=recipe.lr,
                                                     momentum=recipe.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=recipe.lr)
    steps_per_epoch = math.ceil(len(train_data) / recipe.batch_size)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total // 2, round(recipe.warmup_epochs * steps_per_epoch))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    flip = recipe.flip and data.flip
    shift = default_shift(data.input_shape) if recipe.shift is None else recipe.shift
    history: list[float] = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_data), generator=gen).to(device)
        for k in range(0, len(order), recipe.batch_size):
            idx = order[k: k + recipe.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = augment(train_data.x[idx], shift, flip, gen)
            loss = loss_fn(model(x), train_data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, val_data)
        history.append(acc)
        if on_epoch is not None:
            on_epoch(epoch, acc)
    return TrainResult(model=model, val_accuracy=history[-1] if history else 0.0,
                       history=history, epochs=epochs)


def concat_splits(*splits: Split) -> Split:
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))
