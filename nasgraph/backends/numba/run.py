"""`nasgraph run MODEL --backend numba`: compile, run on random input, optionally time it."""

from __future__ import annotations

import time

import numpy as np

from nasgraph.ir import Graph


def run_numba(graph: Graph, batch: int = 1, threads: int | None = None,
              bench: bool = False, repeats: int = 20) -> dict:
    """Compile `graph` with random weights (torch's initialization), run one batch of random
    input and report shapes and timings (seconds; medians over `repeats` when `bench`).

        >>> from nasgraph import zoo
        >>> r = run_numba(zoo.get("lenet5"), batch=2)
        >>> r["outputs"]
        [[2, 10]]
    """
    from nasgraph.backends.numba.executor import compile
    from nasgraph.backends.torch import lower

    state = lower(graph).eval().state_dict()
    x = np.random.default_rng(0).standard_normal(
        (batch, *graph.inputs[0].type.shape)).astype(np.float32)
    t0 = time.perf_counter()
    executor = compile(graph, state, batch=batch, threads=threads)
    ys = executor(x)
    first = time.perf_counter() - t0
    ys = ys if isinstance(ys, tuple) else (ys,)
    report = {"model": graph.name, "backend": "numba", "batch": batch, "threads": threads,
              "outputs": [list(y.shape) for y in ys], "first_call_s": first,
              "peak_memory_bytes": executor.plan.peak_bytes * batch}
    if bench:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            executor(x)
            times.append(time.perf_counter() - t0)
        report["median_s"] = float(np.median(times))
    return report
