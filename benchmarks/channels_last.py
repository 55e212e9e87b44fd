"""channels_last or NCHW: the torch trainer's layout rule (`nasgraph.train.
prefers_channels_last`) against a measurement of both layouts, on random candidates of a
search space fitted to a MAC budget.

Each candidate's training step (forward, label-smoothed cross-entropy, backward, AdamW)
is timed in NCHW and in channels_last (as the trainer puts a module in it), in turns in
one process, one torch thread, at the batch the trainer uses on the dataset. The table
sorts the candidates by the share of the values their convs write that narrow convs
(fewer than `NHWC_MIN_WIDTH` channels) write, the quantity the rule bounds.

    python -m benchmarks.channels_last [--dataset fashion-mnist] [--budget 1M]
        [--samples 60] [--space residual] [--rounds 4] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from benchmarks._report import machine, write_section
from benchmarks.numba_cpu import _medians
from benchmarks.numba_train import torch_step
from nasgraph.data import load_dataset
from nasgraph.ir import Graph
from nasgraph.recipe import Recipe
from nasgraph.search.budget import Budget, parse_amount
from nasgraph.search.proxies import fitted_candidates
from nasgraph.search.space import Context, load_space
from nasgraph.train import (
    NHWC_MIN_WIDTH,
    NHWC_NARROW_SHARE,
    narrow_share,
    prefers_channels_last,
)

# narrow share -> rows of the table
BINS = [(0.0, 0.0), (0.0, 0.1), (0.1, 0.2), (0.2, NHWC_NARROW_SHARE),
        (NHWC_NARROW_SHARE, 0.5), (0.5, 1.0)]


def measure(graph: Graph, x: np.ndarray, y: np.ndarray, rounds: int) -> tuple[float, float]:
    """Seconds of a training step in NCHW and in channels_last."""
    with contextlib.ExitStack() as stack:
        arms = [torch_step(graph, x, y, nhwc, stack) for nhwc in (False, True)]
        nchw, nhwc = _medians(arms, repeats=2 * rounds, seconds=0.4, rounds=rounds)
    return nchw, nhwc


def _bin(share: float) -> tuple[float, float]:
    return next(b for b in BINS if (share == 0.0) == (b == (0.0, 0.0)) and b[0] <= share <= b[1])


def table(rows: list[dict]) -> str:
    out = ["| narrow share | candidates | NCHW step ms, median | NHWC / NCHW, median (range) | "
           "NHWC faster | the rule picks |",
           "|---|---:|---:|---:|---:|---|"]
    for lo, hi in BINS:
        got = [r for r in rows if _bin(r["share"]) == (lo, hi)]
        if not got:
            continue
        ratios = [r["nhwc"] / r["nchw"] for r in got]
        label = "0" if hi == 0.0 else f"{lo:.2f}-{hi:.2f}"
        out.append(f"| {label} | {len(got)} | {statistics.median(r['nchw'] for r in got) * 1e3:.0f}"
                   f" | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
                   f"{sum(q < 1 for q in ratios)}/{len(got)} | "
                   f"{'channels_last' if got[0]['rule'] else 'NCHW'} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--budget", default="1M", help="MACs per image")
    p.add_argument("--space", default="residual")
    p.add_argument("--samples", type=int, default=60)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4, help="turns per candidate")
    p.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_dataset(args.dataset)
    ctx = Context(input_shape=data.input_shape, num_classes=data.num_classes,
                  budget=Budget(macs=parse_amount(args.budget)))
    batch = Recipe().batch_for(len(data.train))
    x = data.train.x[:batch].numpy()
    y = data.train.y[:batch].numpy()
    rows = []
    for _, graph, _, feasible in fitted_candidates(load_space(args.space), ctx, args.samples,
                                                   args.seed):
        if not feasible:
            continue
        nchw, nhwc = measure(graph, x, y, args.rounds)
        rows.append({"share": narrow_share(graph), "nchw": nchw, "nhwc": nhwc,
                     "rule": prefers_channels_last(graph)})
        print(f"narrow share {rows[-1]['share']:.2f}: NCHW {nchw * 1e3:.1f} ms, "
              f"NHWC / NCHW {nhwc / nchw:.2f}", flush=True)
    text = (f"`python -m benchmarks.channels_last --dataset {args.dataset} --budget "
            f"{args.budget} --space {args.space} --samples {args.samples} --seed {args.seed} "
            f"--rounds {args.rounds}`: {machine()}; torch {torch.__version__}, one thread, "
            f"batch {batch}; {time.perf_counter() - start:.0f} s. {len(rows)} feasible "
            "candidates; a training step (AdamW) timed in NCHW and channels_last in turns, "
            f"medians. Narrow share: of the values the convs write, the share that convs of "
            f"fewer than {NHWC_MIN_WIDTH} channels write; the trainer takes channels_last up "
            f"to {NHWC_NARROW_SHARE}.\n\n" + table(rows))
    print(text)
    if args.write:
        write_section(f"channels_last_{args.dataset}",
                      f"### channels_last or NCHW, {args.dataset} at {args.budget} MACs\n\n"
                      + text)


if __name__ == "__main__":
    main()
