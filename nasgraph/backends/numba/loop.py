"""The training loop of the numba backend: `nasgraph.train`'s recipe, without torch.

`fit` trains a graph on numpy arrays as `nasgraph.train.train` does on tensors: shuffled
batches, random shifts and flips, the recipe's optimizer (`optim`) under its warm-up and
cosine schedule (`nasgraph.recipe`), BatchNorm's running statistics updated every
step, and the validation accuracy after every epoch, measured by the forward executor
(`compile`) in eval mode. The random draws are numpy's, so a run is not torch's run step
for step, only the same recipe.

`nasgraph.train.train(..., backend="numba")` converts a dataset's tensors and calls it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np

from nasgraph.backends.numba.executor import compile
from nasgraph.backends.numba.grad import loss_and_grads
from nasgraph.backends.numba.optim import FlatParams, make_optimizer
from nasgraph.init import init_state
from nasgraph.ir import Graph
from nasgraph.recipe import Recipe, Replan, default_shift, warmup_cosine

__all__ = ["Arrays", "FitResult", "accuracy", "fit", "shift_and_flip"]

EVAL_BATCH = 512


class Arrays(NamedTuple):
    """A split as numpy arrays: images N x C x H x W float32, labels N int64."""

    x: np.ndarray
    y: np.ndarray


class FitResult(NamedTuple):
    """What `fit` gives back: the trained state dict (numpy, keys as
    `lower(graph).state_dict()`), the validation accuracy after the last epoch and after
    each."""

    state: dict[str, np.ndarray]
    val_accuracy: float
    history: list[float]


def shift_and_flip(x: np.ndarray, shift: int, offsets: np.ndarray, flips: np.ndarray
                   ) -> np.ndarray:
    """Image i moved to the H x W window at `offsets[:, i]` (rows, columns; 0 to 2 * shift)
    of itself zero-padded by `shift`, then mirrored left-right where `flips[i]`: the numpy
    twin of `nasgraph.train.shift_and_flip`."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (shift, shift), (shift, shift)))
    cols = np.where(flips[:, None], w - 1 - np.arange(w), np.arange(w))  # N x W
    rows = offsets[0][:, None] + np.arange(h)  # N x H
    cols = offsets[1][:, None] + cols
    # N x C x (H+2s) x (W+2s) -> N x C x H x W
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def augment(x: np.ndarray, shift: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """Random translation by up to `shift` pixels (zero fill) and random horizontal flips,
    drawn per image from `rng`."""
    if not shift and not flip:
        return x
    n = len(x)
    offsets = rng.integers(0, 2 * shift + 1, (2, n))
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    return shift_and_flip(x, shift, offsets, flips)


def accuracy(graph: Graph, state: Mapping[str, np.ndarray], split: Arrays,
             batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of `graph` with `state` on `split`, run by the forward executor in
    eval mode (BatchNorm on its running statistics, folded)."""
    run = compile(graph, state)
    correct = 0
    for k in range(0, len(split.y), batch_size):
        logits = np.asarray(run(split.x[k: k + batch_size])).reshape(
            len(split.y[k: k + batch_size]), -1)
        correct += int((logits.argmax(1) == split.y[k: k + batch_size]).sum())
    return correct / max(1, len(split.y))


def fit(graph: Graph, train: Arrays, val: Arrays, recipe: Recipe, epochs: int = 10,
        seed: int = 0, *, state: Mapping[str, object] | None = None,
        batch_size: int | None = None, flip: bool = False,
        on_epoch: Callable[[int, float], None] | None = None,
        replan: Replan | None = None, validate_each_epoch: bool = True) -> FitResult:
    """Train `graph` on `train` by `recipe` for `epochs`; validate on `val` after each.

    Args:
        graph: one input, one output of logits (as `loss_and_grads` takes).
        train, val: the splits as numpy arrays (`Arrays`).
        recipe: a `Recipe` (optimizer, learning rate, decay, warm-up,
            label smoothing, shifts, flips).
        epochs: passes over `train`.
        seed: shuffles, augments and draws dropout masks (and the initial weights when
            `state` is None).
        state: the initial weights (not modified); None: `init_state(graph, seed)`.
        batch_size: None: `recipe.batch_for(len(train.y))`; the torch trainer passes the
            batch of the dataset's own training split, so a final retraining on train +
            validation keeps it.
        flip: whether the dataset allows horizontal flips (`Dataset.flip`); the recipe's
            `flip` must allow them too.
        on_epoch: called as `on_epoch(epoch, val_accuracy)` after each epoch; may raise
            to stop.
        replan: called as `replan(epochs_done, seconds)` after each epoch; a number it
            returns is the epochs to train in all (at least those done), the learning-rate
            schedule rebuilt for them (`nasgraph.train.train` says when).
        validate_each_epoch: False: validate after the last epoch only; the others'
            accuracy (in `history` and to `on_epoch`) is NaN, and `replan` gets the
            seconds of training alone.

    Example:
        >>> import numpy as np, nasgraph
        >>> from nasgraph.recipe import Recipe
        >>> g = nasgraph.zoo.get("lenet5", num_classes=2)
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((8, 1, 32, 32)).astype(np.float32)
        >>> data = Arrays(x, np.arange(8) % 2)
        >>> result = fit(g, data, data, Recipe(batch_size=4), epochs=1)
        >>> len(result.history), sorted(result.state)[:2]
        (1, ['c1.bias', 'c1.weight'])
    """
    state = {k: np.array(v) for k, v in (init_state(graph, seed) if state is None
                                         else state).items()}
    trainable = [k for k, (_, spec) in graph.weight_specs().items() if spec.trainable]
    params = FlatParams(state, trainable)
    opt = make_optimizer(recipe.optimizer, params, recipe.weight_decay, recipe.momentum)
    batch_size = batch_size or recipe.batch_for(len(train.y))
    lr = recipe.lr_at(batch_size)
    steps_per_epoch = math.ceil(len(train.y) / batch_size)
    schedule = warmup_cosine(epochs, steps_per_epoch, recipe.warmup_epochs)
    shift = default_shift(train.x.shape[1:]) if recipe.shift is None else recipe.shift
    flip = flip and recipe.flip
    rng = np.random.default_rng(seed)
    history: list[float] = []
    step, epoch = 0, 0
    while epoch < epochs:
        started = time.perf_counter()
        order = rng.permutation(len(train.y))
        for k in range(0, len(order), batch_size):
            idx = order[k: k + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = augment(train.x[idx], shift, flip, rng)
            out = loss_and_grads(graph, state, x, train.y[idx],
                                 label_smoothing=recipe.label_smoothing, training=True,
                                 seed=seed * 1_000_003 + step)
            state.update(out.buffers)
            params.set_grads(out.grads)
            opt.step(lr * schedule(step))
            step += 1
        acc = accuracy(graph, state, val) if validate_each_epoch else math.nan
        seconds = time.perf_counter() - started
        if replan is not None and (total := replan(epoch + 1, seconds)) is not None:
            epochs = max(epoch + 1, total)
            schedule = warmup_cosine(epochs, steps_per_epoch, recipe.warmup_epochs)
        if not validate_each_epoch and epoch + 1 == epochs:
            acc = accuracy(graph, state, val)
        history.append(acc)
        if on_epoch is not None:
            on_epoch(epoch, acc)
        epoch += 1
    return FitResult(state, history[-1] if history else 0.0, history)
