"""Trainer speed on Fashion-MNIST: images per second of `nasgraph.train.train` against the
trainer it replaced (nasgraph/train.py at BASELINE, issue 19) and against a plain torch loop
over the same lowered module, for four candidates of 0.2-1.2M MACs.

    .venv/bin/python -m benchmarks.train_speed [--repeats 5] [--images 4096]
        [--candidates plain,resnet,mobile,small] [--trial resnet] [--baseline REV|FILE]
        [--write]

Every arm runs in this process, in turns (old, new, new at batch 32, plain loop; again),
each on the same `--images` training images for one epoch, scored (except the plain loop)
on a validation part of the same proportion as Fashion-MNIST's (6,000 : 54,000). Ratios are
taken within a turn; the table gives their median and range. A 2-epoch trial's seconds are
extrapolated from the medians; `--trial NAME` also runs whole 2-epoch trials of one
candidate, old and new in turns. The plain loop is the simplest idiomatic one: contiguous
batches, no augmentation, `F.cross_entropy`, `zero_grad`, `backward`, `step` with
`torch.optim.AdamW` at the recipe's learning rate and batch, on the trainers' thread count.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from benchmarks._report import machine, write_section
from benchmarks.fashion_search import plain, resnet
from nasgraph import analysis
from nasgraph.backends.torch import lower
from nasgraph.data import Dataset, Split, load_dataset
from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import InvertedResidual, inverted_residual_stage
from nasgraph.motifs.conv import conv_unit
from nasgraph.motifs.residual import ResidualBlock, residual_block
from nasgraph.train import SMALL_MACS, Recipe, train

BASELINE = "38b5c91"  # the last commit of the trainer before the fast path
TRAIN_IMAGES, VAL_IMAGES = 54_000, 6_000


def mobile() -> Graph:
    """MobileNetV2-style: stride-2 stem of 16, inverted residuals (out, expansion, stride,
    depth) 8 1 1 1, 16 4 2 2, 24 4 1 1, 32 4 2 2, 1x1 head of 128, GAP, linear."""
    b = GraphBuilder("hand_mobile")
    x = b.input(1, 28, 28)
    with b.scope("stem"):
        x = conv_unit(b, x, 16, 3, stride=2, act="relu6")
    stages = [(8, 1, 1, 1), (16, 4, 2, 2), (24, 4, 1, 1), (32, 4, 2, 2)]
    for k, (width, expansion, stride, depth) in enumerate(stages):
        with b.scope(f"stage{k}"):
            cfg = InvertedResidual(out_channels=width, expand_ratio=expansion, stride=stride)
            x = inverted_residual_stage(b, x, cfg, depth)
    with b.scope("head"):
        x = conv_unit(b, x, 128, 1, act="relu6")
    b.output(b.linear(b.flatten(b.gap(x)), 10))
    return b.build()


def small() -> Graph:
    """Stride-2 stem of 6, basic blocks 6 and 12 s2, GAP, linear."""
    b = GraphBuilder("hand_small")
    x = b.input(1, 28, 28)
    with b.scope("stem"):
        x = conv_unit(b, x, 6, 3, stride=2)
    for k, (planes, stride) in enumerate([(6, 1), (12, 2)]):
        with b.scope(f"block{k}"):
            x = residual_block(b, x, ResidualBlock(planes=planes, stride=stride))
    b.output(b.linear(b.flatten(b.gap(x)), 10))
    return b.build()


CANDIDATES: dict[str, Callable[[], Graph]] = {
    "plain": plain, "resnet": resnet, "mobile": mobile, "small": small}


def baseline_module(source: str) -> ModuleType:
    """The trainer at git revision `source` of this checkout, or in file `source`."""
    path = Path(source)
    if not path.is_file():
        text = subprocess.run(["git", "show", f"{source}:nasgraph/train.py"], check=True,
                              capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent).stdout
        path = Path(tempfile.mkdtemp()) / "train_baseline.py"
        path.write_text(text)
    spec = importlib.util.spec_from_file_location("train_baseline", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def plain_loop(graph: Graph, split: Split, batch_size: int, lr: float) -> None:
    threads = torch.get_num_threads()
    if analysis.macs(graph) < SMALL_MACS:  # as the trainers do
        torch.set_num_threads(1)
    try:
        model = lower(graph).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        for k in range(0, len(split), batch_size):
            x, y = split.x[k: k + batch_size], split.y[k: k + batch_size]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)


def arms(old: ModuleType, graph: Graph, data: Dataset, images: int
         ) -> dict[str, Callable[[int], None]]:
    """What is timed, each a function of the turn (the seed)."""
    train_split = Split(data.train.x[:images], data.train.y[:images])
    val_images = max(1, images * VAL_IMAGES // TRAIN_IMAGES)
    val_split = Split(data.val.x[:val_images], data.val.y[:val_images])
    batch = Recipe().batch_for(len(data.train))
    splits = {"train_split": train_split, "val_split": val_split}
    return {
        "old": lambda seed: old.train(graph, data, epochs=1, device="cpu", seed=seed,
                                      **splits),
        "new": lambda seed: train(graph, data, epochs=1, device="cpu", seed=seed, **splits),
        "new, batch 32": lambda seed: train(graph, data, Recipe(batch_size=32), epochs=1,
                                            device="cpu", seed=seed, **splits),
        "plain loop": lambda seed: plain_loop(graph, train_split, batch,
                                              Recipe().lr_at(batch)),
    }


def measure(runs: dict[str, Callable[[int], None]], repeats: int, warmup: bool = True
            ) -> dict[str, list[float]]:
    """Seconds of every arm in every turn (after one warm-up call of each: oneDNN's
    primitive caches, lazy imports)."""
    for run in runs.values() if warmup else ():
        run(0)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for turn in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(turn)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def spread(values: list[float], digits: int = 2) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def ratios(a: list[float], b: list[float]) -> list[float]:
    """Speed of a over b, turn by turn (seconds b / seconds a)."""
    return [tb / ta for ta, tb in zip(a, b, strict=True)]


def trial_seconds(old: ModuleType, graph: Graph, data: Dataset, repeats: int
                  ) -> dict[str, list[float]]:
    """Whole 2-epoch trials (train split, validation after each epoch), old and new in turns."""
    return measure({"old": lambda seed: old.train(graph, data, epochs=2, device="cpu", seed=seed),
                    "new": lambda seed: train(graph, data, epochs=2, device="cpu", seed=seed)},
                   repeats, warmup=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--trial", default=None, help="also time whole 2-epoch trials of it")
    parser.add_argument("--trial-repeats", type=int, default=1)
    parser.add_argument("--baseline", default=BASELINE, help="git revision or file")
    parser.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = parser.parse_args()
    old = baseline_module(args.baseline)
    data = load_dataset("fashion-mnist")
    load = os.getloadavg()
    lines = ["## Trainer speed on Fashion-MNIST candidates (issue 19)", "",
             f"`benchmarks/train_speed.py`: {machine()}, CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()}, "
             f"torch {torch.__version__}; {args.images} training images per run, "
             f"{args.repeats} turns; batch {Recipe().batch_for(len(data.train))} "
             f"(`Recipe()` on Fashion-MNIST), the old trainer's 32.", "",
             "| candidate | MACs | old img/s | new img/s | new, batch 32 | plain loop | "
             "new / old | new batch 32 / old | new / plain loop | 2-epoch trial, old -> new |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for name in args.candidates.split(","):
        graph = CANDIDATES[name]()
        seconds = measure(arms(old, graph, data, args.images), args.repeats)
        speed = {arm: [args.images / s for s in values] for arm, values in seconds.items()}
        trial = {arm: 2 * TRAIN_IMAGES / args.images * statistics.median(seconds[arm])
                 for arm in ("old", "new")}
        line = (f"| {name} | {analysis.macs(graph) / 1e6:.2f}M | "
                + " | ".join(f"{statistics.median(speed[arm]):.0f}" for arm in seconds)
                + f" | {spread(ratios(seconds['new'], seconds['old']))}"
                f" | {spread(ratios(seconds['new, batch 32'], seconds['old']))}"
                f" | {spread(ratios(seconds['new'], seconds['plain loop']))}"
                f" | {trial['old']:.0f} s -> {trial['new']:.0f} s |")
        lines.append(line)
        print(line, flush=True)
    if args.trial:
        graph = CANDIDATES[args.trial]()
        seconds = trial_seconds(old, graph, data, args.trial_repeats)
        line = (f"\nWhole 2-epoch trials of {args.trial} ({args.trial_repeats} turns): old "
                f"{spread(seconds['old'], 0)} s, new {spread(seconds['new'], 0)} s, new / old "
                f"{spread(ratios(seconds['new'], seconds['old']))}.")
        lines.append(line)
        print(line, flush=True)
    after = os.getloadavg()
    line = (f"\nLoad average (1 min) {load[0]:.1f} before, {after[0]:.1f} after (the "
            "benchmark's own thread counts 1).")
    lines.append(line)
    print(line)
    if args.write:
        write_section("train_speed", "\n".join(lines))


if __name__ == "__main__":
    main()
