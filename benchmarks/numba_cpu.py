"""Numba executor vs torch eager CPU vs ONNX Runtime, same thread count, one run.

Also: single 3x3 convs against the numpy sgemm peak of the same run, and the first call
(compile + run) of a fresh process once numba's cache is warm. Writes the `numba_cpu`
section of docs/benchmarks.md (run on every core), or `numba_cpu_<T>t` for fewer threads.

    python -m benchmarks.numba_cpu [--threads T] [--repeats R] [--seconds S]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from benchmarks._report import machine, write_section
from nasgraph import analysis, zoo
from nasgraph.backends import numba as nb
from nasgraph.backends.torch import lower
from nasgraph.ir import GraphBuilder
from nasgraph.motifs import ResidualBlock, residual_stage

ROUNDS = 10  # turns in which the backends of a case are timed
PAUSE = 0.05  # s of rest before each block of calls: the previous backend's pool settles


def resnet20_style():
    """ResNet-20-style CIFAR net: 3 stages of 3 basic blocks (16, 32, 64), 3x32x32."""
    b = GraphBuilder("resnet20_style")
    x = b.relu(b.bn(b.conv(b.input(3, 32, 32), 16, 3, padding=1, bias=False)))
    for k, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
        with b.scope(f"layer{k}"):
            x = residual_stage(b, x, ResidualBlock(planes=planes, stride=stride), 3)
    b.output(b.linear(b.flatten(b.gap(x)), 10, name="fc"))
    return b.build()


def digits_candidate():
    """Stand-in for a search space's typical candidate on digits (1x8x8): 2 residual stages."""
    b = GraphBuilder("digits_candidate")
    x = b.relu(b.bn(b.conv(b.input(1, 8, 8), 16, 3, padding=1, bias=False)))
    for k, (planes, stride) in enumerate([(16, 1), (32, 2)], start=1):
        with b.scope(f"layer{k}"):
            x = residual_stage(b, x, ResidualBlock(planes=planes, stride=stride), 1)
    b.output(b.linear(b.flatten(b.gap(x)), 10, name="fc"))
    return b.build()


def _median(fn, repeats, seconds=0.0):
    """Median time of `fn` over at least `repeats` calls and `seconds` seconds, after one
    warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _medians(fns, repeats, seconds, rounds=ROUNDS):
    """Median time of each of `fns` over at least `repeats` calls and `seconds` seconds,
    timed in `rounds` turns: every function gets a block of calls per round.

    This machine's speed drifts by up to 20% over seconds (one kernel timed every second in
    one process: 130, 139, 155, 136 us), so backends timed one after the other for a
    second each saw different machines. In turns, each sees the same mix. Not call by
    call: torch's and ONNX Runtime's pools keep spinning for a while after their calls,
    and numba's threads right after them ran 2-3x slower; a pause after each block lets
    them settle."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for r in range(rounds):
        for fn, ts in zip(fns, times, strict=True):
            time.sleep(PAUSE)
            fn()  # after the pause: wakes the pool
            start = time.perf_counter()
            while (len(ts) < repeats * (r + 1) // rounds
                   or time.perf_counter() - start < seconds / rounds):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) for ts in times]


def bench(graph, batch, threads, repeats, seconds, winograd=True):
    m = lower(graph).eval()
    x = np.random.default_rng(0).standard_normal(
        (batch, *graph.inputs[0].type.shape)).astype(np.float32)
    xt = torch.from_numpy(x)
    ex = nb.compile(graph, m.state_dict(), batch=batch, threads=threads, winograd=winograd)
    buf = io.BytesIO()
    torch.onnx.export(m, (xt,), buf, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run_torch():
        with torch.no_grad():
            m(xt)

    t_numba, t_torch, t_ort = _medians(
        [lambda: ex(x), run_torch, lambda: sess.run(None, {name: x})], repeats, seconds)
    gflops = 2 * analysis.macs(graph) * batch / t_numba / 1e9
    return t_numba, t_torch, t_ort, gflops


def sgemm_peak(threads, n=1024):
    a = np.random.rand(n, n).astype(np.float32)
    from threadpoolctl import threadpool_limits
    time.sleep(4 * PAUSE)  # the pools of the backends timed before it settle
    with threadpool_limits(threads, user_api="blas"):
        t = _median(lambda: a @ a, 5)
    return 2 * n**3 / t / 1e9


def single_conv(cin, cout, hw):
    """One 3x3 same-padded conv (bias, no activation) on cin x hw x hw."""
    b = GraphBuilder(f"conv3x3_{cin}_{cout}_{hw}")
    b.output(b.conv(b.input(cin, hw, hw), cout, 3, padding=1))
    return b.build()


FIRST_CALL = """
import time, numpy as np
t0 = time.perf_counter()
from benchmarks.numba_cpu import resnet20_style
from nasgraph.backends import numba as nb
from nasgraph.backends.torch import lower
g = resnet20_style(); state = lower(g).eval().state_dict()
t1 = time.perf_counter()
nb.compile(g, state, threads={threads})(np.zeros((1, 3, 32, 32), np.float32))
print(t1 - t0, time.perf_counter() - t1)
"""


def first_call(threads):
    """(import s, compile + first call s) of a fresh process, run twice: the second finds
    numba's cache warm."""
    code = FIRST_CALL.format(threads=threads)
    root = Path(__file__).resolve().parent.parent
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=root).stdout.split() for _ in range(2)]
    return [tuple(float(v) for v in r[-2:]) for r in runs]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=20, help="at least this many calls each")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="and for at least this long each, in all")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    firsts = first_call(args.threads)
    cases = [(resnet20_style(), 1), (resnet20_style(), 64),
             (zoo.get("resnet18"), 1), (digits_candidate(), 1), (digits_candidate(), 256)]
    if "mobilenet_v2" in zoo.names():
        cases.append((zoo.get("mobilenet_v2"), 1))
    cases = [(g, b, True) for g, b in cases]
    # the single convs run Winograd; once more with the direct (tiled) kernel, whose
    # GFLOP/s are its own rather than an effective rate
    for conv, batch in [(single_conv(64, 64, 56), 1), (single_conv(256, 256, 14), 8)]:
        cases += [(conv, batch, True), (conv, batch, False)]
    peaks = []  # measured before each case: one measurement alone caught a slow second
    rows = ["| model | batch | numba ms | torch ms | ORT ms | numba/torch | numba/ORT | "
            "numba GFLOP/s | % sgemm |", "|---|---|---|---|---|---|---|---|---|"]
    results = []
    for graph, batch, winograd in cases:
        peaks.append(sgemm_peak(args.threads))
        results.append((graph, batch, winograd, *bench(
            graph, batch, args.threads, args.repeats, args.seconds, winograd)))
        print(graph.name, batch, winograd, results[-1][3:], flush=True)
    peak = float(np.median(peaks))
    for graph, batch, winograd, tn, tt, to, gf in results:
        name = graph.name if winograd else f"{graph.name} (direct)"
        rows.append(f"| {name} | {batch} | {tn * 1e3:.2f} | {tt * 1e3:.2f} | "
                    f"{to * 1e3:.2f} | {tn / tt:.2f} | {tn / to:.2f} | {gf:.1f} | "
                    f"{100 * gf / peak:.0f} |")
    load = max(load_before, os.getloadavg()[0])
    # the main table runs on every core; a run on fewer threads gets a section of its own
    section, title = "numba_cpu", ""
    if args.threads != os.cpu_count():
        section = f"numba_cpu_{args.threads}t"
        title = f", {args.threads} thread{'s' if args.threads > 1 else ''}"
    (imp0, cold), (imp1, warm) = firsts
    text = "\n".join([
        f"## Numba CPU executor{title}", "",
        f"`python -m benchmarks.numba_cpu --threads {args.threads}` on {machine()}; "
        f"1-minute load average up to {load:.1f} during the run; medians of at least "
        f"{args.repeats} calls and {args.seconds:g} s per backend and model, the backends "
        f"of a model timed in {ROUNDS} turns. numpy sgemm peak (1024^3, same threads, "
        f"median of one measurement before each case): {peak:.0f} GFLOP/s "
        f"({min(peaks):.0f}-{max(peaks):.0f}).", "",
        "Ratios below 1: numba is faster. `% sgemm`: numba GFLOP/s (2 x MACs x batch / time) "
        "as a share of the sgemm peak. MACs are a direct conv's: Winograd layers do 2.25-4x "
        "fewer multiplies, so on them the GFLOP/s are an effective rate and can pass the "
        "peak; the (direct) rows run the same conv with `winograd=False`, the tiled "
        "kernel's own rate.", "",
        *rows, "",
        f"First call of a fresh process (resnet20_style, compile + run, import excluded): "
        f"{warm:.2f} s with numba's cache warm (import {imp1:.2f} s); the run before it, "
        f"{cold:.2f} s{' (cache cold)' if cold > 2 * warm else ''}.",
    ])
    write_section(section, text)
    print(text)


if __name__ == "__main__":
    main()
