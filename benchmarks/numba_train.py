"""One training step (forward, backward, optimizer update) on the numba backend against
torch eager on the same threads: search-sized candidates and resnet20.

A step is what each trainer does per batch, augmentation aside: numba's
`loss_and_grads` + the BatchNorm statistics + `FlatParams.set_grads` + AdamW
(`nasgraph.backends.numba.loop.fit`); torch's `zero_grad` + forward + label-smoothed
cross-entropy + `backward` + `torch.optim.AdamW.step` on `lower(graph).train()`, in NCHW
and in channels_last where the trainer would use it (`prefers_channels_last`; the faster
of the two is the peer). All arms of a case run in this
process, in turns (`numba_cpu._medians`); GFLOP/s count a step as 3x the forward's MACs x 2
(forward, input gradient, weight gradient), against numpy's sgemm peak of the same run.

    python -m benchmarks.numba_train [--threads 1] [--rounds 10] [--seconds 6]
        [--cases digits,fashion,resnet20,spaces] [--write]

The "spaces" cases are three candidates of each registered space as the search draws
them (`space_candidates`); the default runs them too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import time
from collections.abc import Callable

import numba
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._report import machine, revision, write_section
from benchmarks.fashion_search import plain, resnet
from benchmarks.numba_cpu import _medians, digits_candidate, resnet20_style, sgemm_peak
from benchmarks.search_quality import fitted, plain_cnn
from benchmarks.train_speed import mobile, small
from nasgraph import analysis, init_state
from nasgraph.backends.numba.grad import loss_and_grads
from nasgraph.backends.numba.optim import FlatParams, make_optimizer
from nasgraph.backends.torch import lower
from nasgraph.ir import Graph
from nasgraph.recipe import Recipe
from nasgraph.search.space import space_names
from nasgraph.train import channels_last, prefers_channels_last

RECIPE = Recipe()  # AdamW, label smoothing 0.1, the default decay


def plain_5m() -> Graph:
    """search_quality's plain CNN fitted onto 5M MACs: the widest Fashion candidate."""
    return fitted(plain_cnn, (1, 28, 28), 10, 5_000_000)[0]


def _fashion_1m():
    """The search's context for Fashion-MNIST (1 x 28 x 28, 10 classes) at 1M MACs."""
    from nasgraph.search.budget import Budget
    from nasgraph.search.space import Context

    return Context(input_shape=(1, 28, 28), num_classes=10, budget=Budget(macs=1_000_000))


# a candidate a Fashion-MNIST search of the `residual` space drew (`nasgraph search
# residual --dataset fashion-mnist --budget 1M --time-budget 4m`, trial 3): pre-activation
# bottlenecks whose 3x3 convs have 2 and 4 groups (ResNeXt's cardinality)
RESNEXT_PARAMETERS = {
    "block": "bottleneck", "preact": True, "stem.width": 48, "stem.stride": 1, "stages": 4,
    "stage1.depth": 1, "stage1.width": 64, "stage1.cardinality": 4,
    "stage2.depth": 3, "stage2.width": 40, "stage2.cardinality": 2,
    "stage3.depth": 1, "stage3.width": 112, "stage3.cardinality": 2,
    "stage4.depth": 2, "stage4.width": 448, "stage4.cardinality": 2}


def resnext() -> Graph:
    """`RESNEXT_PARAMETERS` built by the `residual` space and fitted to 1M MACs, as the
    search fits its candidates (`fit_to_budget`)."""
    import optuna

    from nasgraph.search.space import fit_to_budget, get_space

    trial = optuna.trial.FixedTrial(RESNEXT_PARAMETERS, 3)
    return fit_to_budget(get_space("residual"), trial, _fashion_1m())[0]


# the built-in spaces, whose candidates the "spaces" cases draw (`space_candidates`)
SPACES = tuple(space_names())


@functools.cache
def space_candidates(space: str, count: int = 3, seed: int = 5) -> tuple[Graph, ...]:
    """The first `count` candidates of a registered space that fit 1M MACs on
    Fashion-MNIST, drawn as the search's screening draws them (`fitted_candidates`:
    Optuna's RandomSampler with `seed`, each fitted to the budget), out of 3 x `count`
    draws. The search-sized nets the issue's goal names, as the search makes them, where
    the other Fashion cases are hand designs."""
    from nasgraph.search.proxies import fitted_candidates
    from nasgraph.search.space import get_space

    drawn = fitted_candidates(get_space(space), _fashion_1m(), 3 * count, seed=seed)
    return tuple(graph for _, graph, _, feasible in drawn if feasible)[:count]


def _space_candidate(space: str, k: int) -> Graph:
    return space_candidates(space)[k]


def _space_cases() -> list[tuple[str, Callable[[], Graph], int]]:
    return [(f"{space} candidate {k + 1}", functools.partial(_space_candidate, space, k), 128)
            for space in SPACES for k in range(3)]


# name -> (graph, batch); the Fashion candidates span 0.3-5M MACs
CASES: dict[str, list[tuple[str, Callable[[], Graph], int]]] = {
    "digits": [("digits 2-stage ResNet", digits_candidate, 32),
               ("digits 2-stage ResNet", digits_candidate, 128)],
    "fashion": [("Fashion small ResNet", small, 128), ("Fashion MobileNetV2-style", mobile, 128),
                ("Fashion ResNet", resnet, 128), ("Fashion plain CNN", plain, 128),
                ("Fashion plain CNN, 5M", plain_5m, 128),
                ("Fashion ResNeXt-style (search)", resnext, 128)],
    "resnet20": [("resnet20 (32x32)", resnet20_style, 64)],
    "spaces": _space_cases(),
}


def inputs(graph: Graph, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch every arm of a case trains on: standard normal images of the graph's
    input shape and labels in 0..9, both drawn from seed 0."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *graph.inputs[0].type.shape)).astype(np.float32)
    return x, rng.integers(0, 10, batch)


def numba_step(graph: Graph, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    state = init_state(graph, seed=0)
    trainable = [k for k, (_, spec) in graph.weight_specs().items() if spec.trainable]
    params = FlatParams(state, trainable)
    opt = make_optimizer("adamw", params, RECIPE.weight_decay, RECIPE.momentum)
    lr = RECIPE.lr_at(len(y))

    def step() -> None:
        out = loss_and_grads(graph, state, x, y, label_smoothing=RECIPE.label_smoothing)
        state.update(out.buffers)
        params.set_grads(out.grads)
        opt.step(lr)

    return step


def torch_step(graph: Graph, x: np.ndarray, y: np.ndarray, nhwc: bool,
               stack: contextlib.ExitStack) -> Callable[[], None]:
    model = lower(graph).train()
    # channels_last as the trainer puts a module in it: a strided 1x1 conv too narrow for
    # oneDNN's NHWC weight gradient stays NCHW (it corrupts the heap otherwise)
    stack.enter_context(channels_last(model, enabled=nhwc))
    xt = torch.from_numpy(x).contiguous(
        memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    yt = torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE.lr_at(len(y)),
                            weight_decay=RECIPE.weight_decay)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), yt, label_smoothing=RECIPE.label_smoothing).backward()
        opt.step()

    return step


def case(name: str, graph: Graph, batch: int, rounds: int, seconds: float,
         peak: float) -> dict:
    x, y = inputs(graph, batch)
    with contextlib.ExitStack() as stack:
        arms = [numba_step(graph, x, y), torch_step(graph, x, y, False, stack)]
        if prefers_channels_last(graph):  # as the trainer decides; else NCHW is faster
            arms.append(torch_step(graph, x, y, True, stack))
        times = _medians(arms, repeats=3 * rounds, seconds=seconds, rounds=rounds)
    t_numba, t_nchw, t_nhwc = times[0], times[1], times[2] if len(times) > 2 else math.nan
    t_torch = min(t_nchw, t_nhwc) if len(times) > 2 else t_nchw
    flops = 3 * 2 * analysis.macs(graph) * batch
    return {"name": name, "macs": analysis.macs(graph), "batch": batch,
            "numba_ms": t_numba * 1e3, "nchw_ms": t_nchw * 1e3, "nhwc_ms": t_nhwc * 1e3,
            "ratio": t_numba / t_torch, "numba_gflops": flops / t_numba / 1e9,
            "torch_gflops": flops / t_torch / 1e9, "peak": peak}


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def table(rows: list[dict]) -> str:
    out = ["| case | MACs | batch | numba ms | torch ms (NCHW / NHWC) | numba / torch | "
           "numba GFLOP/s (% of sgemm) | torch GFLOP/s (% of sgemm) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['name']} | {r['macs'] / 1e6:.2f}M | {r['batch']} | {r['numba_ms']:.2f} | "
            f"{r['nchw_ms']:.2f} / {_ms(r['nhwc_ms'])} | {r['ratio']:.2f}x | "
            f"{r['numba_gflops']:.1f} ({r['numba_gflops'] / r['peak']:.0%}) | "
            f"{r['torch_gflops']:.1f} ({r['torch_gflops'] / r['peak']:.0%}) |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10, help="turns per case")
    p.add_argument("--seconds", type=float, default=6.0, help="per arm and case, at least")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = p.parse_args()
    unknown = [group for group in args.cases.split(",") if group not in CASES]
    if unknown:
        p.error(f"no case group {', '.join(map(repr, unknown))}; the groups: "
                f"{', '.join(CASES)}")
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    start = time.perf_counter()
    peak = sgemm_peak(args.threads)
    rows = []
    for group in args.cases.split(","):
        for name, build, batch in CASES[group]:
            rows.append(case(name, build(), batch, args.rounds, args.seconds, peak))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    peak_after = sgemm_peak(args.threads)
    text = (
        f"`python -m benchmarks.numba_train --threads {args.threads} --rounds {args.rounds} "
        f"--seconds {args.seconds:g} --cases {args.cases}`: {machine()}; torch "
        f"{torch.__version__}, numba {numba.__version__}; {args.threads} thread(s); sgemm "
        f"peak (numpy, 1024^3) {peak:.0f} GFLOP/s before, {peak_after:.0f} after; "
        f"{time.perf_counter() - start:.0f} s; {revision()}. Medians over {args.rounds} "
        "turns; a step counts 6 x MACs x batch FLOPs. Torch: the faster of NCHW and "
        "channels_last (where the trainer uses it; - elsewhere).\n\n"
        + table(rows))
    print(text)
    if args.write:
        suffix = "" if args.threads == 1 else f"_{args.threads}t"
        write_section(f"numba_train{suffix}", "## Numba training step against torch "
                      f"(issue 22){'' if args.threads == 1 else f', {args.threads} threads'}"
                      "\n\n" + text)


if __name__ == "__main__":
    main()
