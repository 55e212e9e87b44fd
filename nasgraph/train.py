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

The time goes to the network (benchmarks/train_speed.py): data lives on the device and
batches are sliced from it; a batch is shifted and flipped by one gather; the optimizer is
torch's fused kernel; large training splits train at batch 128; on a CPU, small networks run
on one thread, and networks without narrow layers in channels_last memory format.

`train(..., backend="numba")` trains on the CPU without torch's autograd, by the same recipe
(`nasgraph.backends.numba.loop.fit`), and returns the same `TrainResult`.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from nasgraph import analysis
from nasgraph.data import Dataset, Split
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph

# re-exported: they live in nasgraph.recipe, without torch, for the numba trainer too
from nasgraph.recipe import (  # noqa: F401
    LARGE_SPLIT,
    Recipe,
    Replan,
    default_shift,
    warmup_cosine,
)

# Below this many MACs per image, a network trains on one CPU thread: on cores shared with
# other jobs, OpenMP waits for the thread that is not running. The thread count changes the
# low bits of the result, so it is a rule, not a timing of the first steps
# (docs/benchmarks.md, "Thresholds of the trainer").
SMALL_MACS = 20_000_000
# channels_last (NHWC) trains a network faster on a CPU (oneDNN's NHWC convs skip the
# reorders of NCHW) unless much of it is narrow: NHWC batch norm vectorizes across channels,
# and layers of fewer than NHWC_MIN_WIDTH channels (with AVX-512 the bound may be 16) train
# slower in it. Where such layers write more than NHWC_NARROW_SHARE of the values that the
# convs write, NCHW is as fast; below, NHWC took a median 0.72-0.94x the time (100 residual
# candidates, docs/benchmarks.md, "channels_last or NCHW").
NHWC_MIN_WIDTH = 8
NHWC_NARROW_SHARE = 0.25
# oneDNN's NHWC 1x1 strided convolution writes past its buffer in the weight gradient when
# a group has fewer input channels than its vector block (8 floats with AVX2, 16 with
# AVX-512): heap corruption on one thread, wrong gradients on two
# (https://github.com/uxlfoundation/oneDNN/issues/6035). Such convs stay NCHW.
ONEDNN_NHWC_BLOCK = 16
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shift_and_flip(x: torch.Tensor, shift: int, offsets: torch.Tensor,
                   flips: torch.Tensor) -> torch.Tensor:
    """Image i moved to the H x W window at `offsets[:, i]` (rows, columns; 0 to 2 * shift)
    of itself zero-padded by `shift`, then mirrored left-right where `flips[i]`.

    One padded copy and one gather for the whole batch: an offset of `shift` leaves an
    image in place, 0 moves it `shift` pixels down (or right).
    """
    n, c, h, w = x.shape
    wide = w + 2 * shift
    # N x C x H x W -> N x C x (H+2s)(W+2s), read at N x HW flat positions
    padded = nn.functional.pad(x, (shift, shift, shift, shift)).flatten(2)
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], w - 1 - cols, cols)  # N x W
    rows = torch.arange(h, device=x.device) * wide  # H
    start = offsets[0] * wide + offsets[1]  # N
    index = (start[:, None, None] + rows[None, :, None] + cols[:, None, :]).flatten(1)
    return padded.gather(2, index[:, None, :].expand(n, c, h * w)).view(n, c, h, w)


def augment(x: torch.Tensor, shift: int, flip: bool, generator: torch.Generator
            ) -> torch.Tensor:
    """Random translation by up to `shift` pixels (zero fill) and random horizontal flips,
    drawn per image from `generator` (a CPU generator)."""
    if not shift and not flip:
        return x
    n = len(x)
    offsets = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return shift_and_flip(x, shift, offsets.to(x.device), flips.to(x.device))


@torch.inference_mode()
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
          train_split: Split | None = None, val_split: Split | None = None,
          backend: Literal["torch", "numba"] = "torch",
          replan: Replan | None = None, validate_each_epoch: bool = True) -> TrainResult:
    """Train `graph` (lowered here) from scratch; validation accuracy after every epoch.

    `on_epoch(epoch, val_accuracy)` is called after each epoch; it may raise to stop (an
    Optuna pruner does). `train_split` and `val_split` replace the dataset's (the final
    retraining trains on train + validation). `replan(epochs_done, seconds)` is called
    after each epoch with the seconds it took (training and validation); when it returns a
    number, training goes on to that many epochs in all (at least those done), the
    learning-rate schedule rebuilt for them. Replan before the cosine decay begins (at the
    end of the warm-up) and no learning rate jumps; early in the decay it moves little (a
    timed search's final retraining is fitted again after its fourth epoch).
    `validate_each_epoch=False` validates after the last epoch only (a final retraining,
    tested once at the end): the other epochs' accuracy is NaN, and their seconds are
    training's alone. A graph trains in channels_last on a CPU when
    `prefers_channels_last`; a module given as it is trains NCHW.

    `backend="numba"` trains a graph on the CPU without torch's autograd
    (`nasgraph.backends.numba.loop.fit`: the same recipe and initial weights, numpy's
    random draws) and returns its weights in `lower(graph)`; `device` is then ignored.
    """
    recipe = recipe or Recipe()
    if backend == "numba":
        return _train_numba(graph, data, recipe, epochs, seed, on_epoch, train_split,
                            val_split, replan, validate_each_epoch)
    if backend != "torch":
        raise NasgraphError(f"backend={backend!r}: hint: torch or numba")
    device = resolve_device(device) if isinstance(device, str) else device
    seed_everything(seed)
    if isinstance(graph, Graph):
        from nasgraph.backends.torch import lower

        model = lower(graph)
        small = analysis.macs(graph) < SMALL_MACS
        nhwc = device.type == "cpu" and prefers_channels_last(graph)
    else:
        model, small, nhwc = graph, False, False
    threads = torch.get_num_threads()
    if small and device.type == "cpu":
        torch.set_num_threads(1)
    try:
        model = model.to(device)
        with channels_last(model, enabled=nhwc):
            return _train(model, data, recipe, epochs, device, seed, on_epoch, train_split,
                          val_split, nhwc, replan, validate_each_epoch)
    finally:
        torch.set_num_threads(threads)


def _train_numba(graph: Graph | nn.Module, data: Dataset, recipe: Recipe, epochs: int,
                 seed: int, on_epoch: Callable[[int, float], None] | None,
                 train_split: Split | None, val_split: Split | None,
                 replan: Replan | None = None, validate_each_epoch: bool = True
                 ) -> TrainResult:
    """`train` on the numba backend: the dataset's tensors as numpy arrays, the initial
    weights those `lower(graph)` draws after `seed_everything(seed)` (as the torch path's),
    and the trained weights loaded back into that module."""
    if not isinstance(graph, Graph):
        raise NasgraphError("backend='numba' trains a Graph, not a torch module; hint: "
                            "backend='torch'")
    from nasgraph.backends.numba.loop import Arrays, fit
    from nasgraph.backends.torch import lower

    def arrays(split: Split) -> Arrays:
        return Arrays(split.x.cpu().numpy(), split.y.cpu().numpy())

    seed_everything(seed)
    model = lower(graph)
    result = fit(graph, arrays(train_split or data.train), arrays(val_split or data.val),
                 recipe, epochs, seed,
                 state={k: v.numpy() for k, v in model.state_dict().items()},
                 batch_size=recipe.batch_for(len(data.train)), flip=data.flip,
                 on_epoch=on_epoch, replan=replan, validate_each_epoch=validate_each_epoch)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v))
                           for k, v in result.state.items()})
    return TrainResult(model=model, val_accuracy=result.val_accuracy,
                       history=result.history, epochs=len(result.history))


def share_cores(processes: int) -> int:
    """Give this process its share of the CPU's cores when `processes` train side by side
    (a search's workers, its parallel final retrainings): torch's and numba's thread
    counts both become cores // processes (at least 1), so that the processes do not
    oversubscribe the cores. Returns that count. numba's count is the calling thread's."""
    from nasgraph.backends.numba import set_threads

    threads = set_threads((os.cpu_count() or 1) // max(1, processes))
    torch.set_num_threads(threads)
    return threads


def faster_backend(graph: Graph, data: Dataset, recipe: Recipe | None = None,
                   batches: int = 6, seed: int = 0) -> tuple[str, dict[str, float]]:
    """The backend ("torch" or "numba") that trains `graph` faster on this CPU, chosen by
    measurement, and each one's seconds per training batch.

    Each backend trains one epoch of `batches` batches of the training split (at the batch
    size the whole split trains at) after a warm-up epoch of two (which compiles the numba
    kernels and allocates), with validation on two images; the second epoch is timed.
    Costs a few seconds, against a trial's minutes.
    """
    recipe = recipe or Recipe()
    size = batches * recipe.batch_for(len(data.train))
    timed = Split(data.train.x[:size], data.train.y[:size])
    warm = Split(data.train.x[:size // batches * 2], data.train.y[:size // batches * 2])
    tiny = Split(data.val.x[:2], data.val.y[:2])
    seconds: dict[str, float] = {}
    for backend in ("torch", "numba"):
        run = functools.partial(train, graph, data, recipe, epochs=1, device="cpu", seed=seed,
                                val_split=tiny, backend=backend)
        run(train_split=warm)
        start = time.perf_counter()
        run(train_split=timed)
        seconds[backend] = (time.perf_counter() - start) / batches
    return min(seconds, key=seconds.__getitem__), seconds


def prefers_channels_last(graph: Graph) -> bool:
    """Whether `graph` trains faster on a CPU in channels_last: when its `narrow_share` is
    at most `NHWC_NARROW_SHARE`."""
    return narrow_share(graph) <= NHWC_NARROW_SHARE


def narrow_share(graph: Graph) -> float:
    """Of the values the convs of `graph` write over more than one pixel, the share that
    convs of fewer than `NHWC_MIN_WIDTH` channels write (0 without such convs)."""
    planes = [node.type for node in graph
              if node.kind == "conv2d" and node.type.height * node.type.width > 1]
    narrow = sum(t.numel for t in planes if t.channels < NHWC_MIN_WIDTH)
    return narrow / max(1, sum(t.numel for t in planes))


@contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """`model` in channels_last (NHWC) memory format while inside; NCHW again after.

    Every conv then reads and writes NHWC, without oneDNN's reorders to and from its blocked
    layout around each NCHW conv; a 1x1 strided conv too narrow for oneDNN's NHWC weight
    gradient (`ONEDNN_NHWC_BLOCK`) reads NCHW.
    """
    if not enabled:
        yield
        return
    model.to(memory_format=torch.channels_last)
    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and not _nhwc_safe(module):
            # NCHW strides (a 1x1 weight is also contiguous, and stays NHWC, as it is)
            module.weight.data = module.weight.data.clone(memory_format=torch.contiguous_format)
            hooks.append(module.register_forward_pre_hook(_nchw_input))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        model.to(memory_format=torch.contiguous_format)


def _nhwc_safe(conv: nn.Conv2d) -> bool:
    strided_1x1 = conv.kernel_size == (1, 1) and conv.stride != (1, 1)
    return not strided_1x1 or conv.in_channels // conv.groups >= ONEDNN_NHWC_BLOCK


def _nchw_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    # a clone: `contiguous()` keeps an ambiguous (one-channel) NHWC input as it is
    return (args[0].clone(memory_format=torch.contiguous_format),)


def make_optimizer(params: list[nn.Parameter], recipe: Recipe, lr: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """The recipe's optimizer, weight decay on weights only; torch's fused kernel (one
    call per step instead of a dozen ops per parameter tensor)."""
    groups = [{"params": [p for p in params if p.ndim > 1],
               "weight_decay": recipe.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    fused = device.type in ("cpu", "cuda")
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True,
                               fused=fused)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def _train(model: nn.Module, data: Dataset, recipe: Recipe, epochs: int,
           device: torch.device, seed: int, on_epoch: Callable[[int, float], None] | None,
           train_split: Split | None, val_split: Split | None, nhwc: bool,
           replan: Replan | None, validate_each_epoch: bool = True) -> TrainResult:
    train_data = (train_split or data.train).to(device)
    val_data = (val_split or data.val).to(device)
    batch_size = recipe.batch_for(len(data.train))  # the same in the final retraining
    lr = recipe.lr_at(batch_size)
    opt = make_optimizer(list(model.parameters()), recipe, lr, device)
    steps_per_epoch = math.ceil(len(train_data) / batch_size)
    schedule = warmup_cosine(epochs, steps_per_epoch, recipe.warmup_epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    gen = torch.Generator().manual_seed(seed)
    flip = recipe.flip and data.flip
    shift = default_shift(data.input_shape) if recipe.shift is None else recipe.shift
    memory_format = torch.channels_last if nhwc else torch.contiguous_format
    history: list[float] = []
    step, epoch = 0, 0
    while epoch < epochs:
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_data), generator=gen).to(device)
        for k in range(0, len(order), batch_size):
            idx = order[k: k + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = augment(train_data.x.index_select(0, idx), shift, flip, gen)
            x = x.contiguous(memory_format=memory_format)
            loss = loss_fn(model(x), train_data.y.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = lr * schedule(step)
            opt.step()
            step += 1
        acc = accuracy(model, val_data) if validate_each_epoch else math.nan
        seconds = time.perf_counter() - started
        if replan is not None and (total := replan(epoch + 1, seconds)) is not None:
            epochs = max(epoch + 1, total)
            schedule = warmup_cosine(epochs, steps_per_epoch, recipe.warmup_epochs)
        if not validate_each_epoch and epoch + 1 == epochs:
            acc = accuracy(model, val_data)
        history.append(acc)
        if on_epoch is not None:
            on_epoch(epoch, acc)
        epoch += 1
    return TrainResult(model=model, val_accuracy=history[-1] if history else 0.0,
                       history=history, epochs=epochs)


def concat_splits(*splits: Split) -> Split:
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))
