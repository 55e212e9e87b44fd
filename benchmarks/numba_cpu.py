"""Numba executor vs torch eager CPU vs ONNX Runtime, same thread count, one run.

Writes the table between the numba_cpu markers of docs/benchmarks.md.
Run: python -m benchmarks.numba_cpu [--threads T] [--repeats R]
"""

from __future__ import annotations

import argparse
import io
import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from nasgraph import analysis, zoo
from nasgraph.backends import numba as nb
from nasgraph.backends.torch import lower
from nasgraph.ir import GraphBuilder
from nasgraph.motifs import ResidualBlock, residual_stage

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


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


def _median(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench(graph, batch, threads, repeats):
    m = lower(graph).eval()
    x = np.random.default_rng(0).standard_normal(
        (batch, *graph.inputs[0].type.shape)).astype(np.float32)
    xt = torch.from_numpy(x)
    ex = nb.compile(graph, m.state_dict(), batch=batch, threads=threads)
    with torch.no_grad():
        t_torch = _median(lambda: m(xt), repeats)
    t_numba = _median(lambda: ex(x), repeats)
    buf = io.BytesIO()
    torch.onnx.export(m, (xt,), buf, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    t_ort = _median(lambda: sess.run(None, {name: x}), repeats)
    gflops = 2 * analysis.macs(graph) * batch / t_numba / 1e9
    return t_numba, t_torch, t_ort, gflops


def sgemm_peak(threads, n=1024):
    a = np.random.rand(n, n).astype(np.float32)
    from threadpoolctl import threadpool_limits
    with threadpool_limits(threads, user_api="blas"):
        t = _median(lambda: a @ a, 5)
    return 2 * n**3 / t / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(resnet20_style(), 1), (resnet20_style(), 64),
             (zoo.get("resnet18"), 1), (digits_candidate(), 1), (digits_candidate(), 256)]
    if "mobilenet_v2" in zoo.names():
        cases.append((zoo.get("mobilenet_v2"), 1))
    peak = sgemm_peak(args.threads)
    rows = ["| model | batch | numba ms | torch ms | ORT ms | numba/torch | numba/ORT | "
            "numba GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for graph, batch in cases:
        tn, tt, to, gf = bench(graph, batch, args.threads, args.repeats)
        rows.append(f"| {graph.name} | {batch} | {tn * 1e3:.2f} | {tt * 1e3:.2f} | "
                    f"{to * 1e3:.2f} | {tn / tt:.2f} | {tn / to:.2f} | {gf:.1f} |")
        print(rows[-1], flush=True)
    table = "\n".join([f"Threads: {args.threads}; numpy sgemm peak (1024^3, same threads): "
                       f"{peak:.0f} GFLOP/s; medians of {args.repeats} calls.", "", *rows])
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"<!-- numba_cpu:begin -->\n{table}\n<!-- numba_cpu:end -->"
    if "<!-- numba_cpu:begin -->" in text:
        text = re.sub(r"<!-- numba_cpu:begin -->.*<!-- numba_cpu:end -->", lambda _: block,
                      text, flags=re.S)
    else:
        text += "\n## Numba CPU executor\n\n" + block + "\n"
    DOC.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
