"""`nasgraph run`: a forward pass on either backend, timed with --bench, per node with
--profile."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table

from nasgraph.cli._common import Debug, app, console, one_line_errors, resolve_model
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph

Step = Callable[[], list[tuple[int, ...]]]
Runner = Callable[[Graph, str, int, int | None], Step]


def _torch_runner(graph: Graph, device: str, batch: int, threads: int | None) -> Step:
    """One forward pass of the lowered graph on random input (synchronized on CUDA)."""
    import torch

    from nasgraph.backends.torch import lower

    if device == "cuda" and not torch.cuda.is_available():
        raise NasgraphError("--device cuda: no CUDA device is available; hint: --device cpu")
    if threads is not None:
        torch.set_num_threads(threads)
    module = lower(graph).to(device).eval()
    xs = [torch.randn(batch, *n.type.shape, device=device) for n in graph.inputs]

    def step() -> list[tuple[int, ...]]:
        with torch.no_grad():
            ys = module(*xs)
        if device == "cuda":
            torch.cuda.synchronize()
        return [tuple(y.shape) for y in (ys if isinstance(ys, tuple) else (ys,))]

    return step


def _numba_runner(graph: Graph, device: str, batch: int, threads: int | None) -> Step:
    """One call of the Numba executor, compiled for this batch with random weights."""
    import numpy as np

    from nasgraph.backends import numba as numba_backend
    from nasgraph.backends.torch import lower

    if device != "cpu":
        raise NasgraphError(f"--device {device}: the numba backend runs on the cpu only")
    executor = numba_backend.compile(graph, lower(graph).eval().state_dict(), batch=batch,
                                     threads=threads)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((batch, *n.type.shape), dtype=np.float32) for n in graph.inputs]

    def step() -> list[tuple[int, ...]]:
        ys = executor(*xs)
        return [y.shape for y in (ys if isinstance(ys, tuple) else (ys,))]

    return step


RUNNERS: dict[str, Runner] = {"torch": _torch_runner, "numba": _numba_runner}


def _print_profile(graph: Graph, batch: int, threads: int | None, iters: int,
                   rows: int = 15) -> None:
    """The numba executor's slowest nodes (`Executor.profile`), with their share."""
    import numpy as np

    from nasgraph.backends import numba as numba_backend
    from nasgraph.backends.torch import lower

    executor = numba_backend.compile(graph, lower(graph).eval().state_dict(), batch=batch,
                                     threads=threads)
    (node,) = graph.inputs
    x = np.random.default_rng(0).standard_normal((batch, *node.type.shape), dtype=np.float32)
    times = executor.profile(x, iters)
    total = sum(t.seconds for t in times)
    table = Table(title=f"{graph.name}: numba, batch {batch}, median of {iters} calls per "
                  f"node; {len(times)} nodes, {total * 1e3:.2f} ms in all", header_style="bold")
    for name in ("node", "op", "kernel", "shape", "ms", "share"):
        table.add_column(name, justify="right" if name in ("ms", "share") else "left")
    for t in sorted(times, key=lambda t: -t.seconds)[:rows]:
        table.add_row(t.node, t.kind, t.strategy, str(executor.graph[t.node].type),
                      f"{t.seconds * 1e3:.3f}", f"{100 * t.seconds / total:.1f}%")
    console.print(table)


@app.command()
@one_line_errors
def run(
    model: Annotated[str, typer.Argument(help="A zoo model name or a graph JSON file.")],
    backend: Annotated[str, typer.Option("--backend", help="torch or numba.")] = "torch",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size.")] = 1,
    bench: Annotated[bool, typer.Option("--bench", help="Time repeated passes.")] = False,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Timed passes with --bench.")] = 20,
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="CPU threads (default: all cores).")] = None,
    profile: Annotated[bool, typer.Option(
        "--profile", help="numba: time every node; print the slowest.")] = False,
    debug: Debug = False,
) -> None:
    """Run a forward pass on random input; with --bench, median latency and images/s.

    Example: nasgraph run resnet50 --backend torch --batch 8 --bench
    """
    if backend not in RUNNERS:
        raise NasgraphError(f"--backend {backend!r}: expected {' or '.join(RUNNERS)}")
    if profile and backend != "numba":
        raise NasgraphError(f"--profile: per-node times come from the numba backend, not "
                            f"{backend!r}; hint: --backend numba")
    if device not in ("cpu", "cuda"):
        raise NasgraphError(f"--device {device!r}: expected cpu or cuda")
    graph = resolve_model(model, input)
    step = RUNNERS[backend](graph, device, batch, threads)
    shapes = step()
    console.print(f"{graph.name}: {backend} on {device}, batch {batch} -> "
                  + ", ".join("x".join(map(str, s)) for s in shapes), highlight=False)
    if profile:
        _print_profile(graph, batch, threads, iters)
    if not bench:
        return
    for _ in range(min(3, iters)):  # warm up: allocator, kernel selection, JIT
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    console.print(f"median latency {median * 1e3:.2f} ms over {iters} passes, "
                  f"{batch / median:.1f} images/s", highlight=False)
