"""`nasgraph run`: a forward pass on either backend, timed with --bench, per node with
--profile. The running itself is the library's (nasgraph.latency)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from nasgraph.cli._common import MODEL_HELP, Debug, app, console, one_line_errors, resolve_model
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph
from nasgraph.latency import (
    RUNNERS,
    check_device,
    check_memory,
    median_seconds,
    numba_profile,
    out_of_memory_as_error,
)


def _print_profile(graph: Graph, batch: int, threads: int | None, iters: int,
                   rows: int = 15) -> None:
    """The numba executor's slowest nodes (`Executor.profile`), with their share."""
    times, types = numba_profile(graph, batch, threads, iters)
    total = sum(t.seconds for t in times)
    table = Table(title=f"{graph.name}: numba, batch {batch}, median of {iters} calls per "
                  f"node; {len(times)} nodes, {total * 1e3:.2f} ms in all", header_style="bold")
    for name in ("node", "op", "kernel", "shape", "ms", "share"):
        table.add_column(name, justify="right" if name in ("ms", "share") else "left")
    for t in sorted(times, key=lambda t: -t.seconds)[:rows]:
        table.add_row(t.node, t.kind, t.strategy, str(types[t.node]),
                      f"{t.seconds * 1e3:.3f}", f"{100 * t.seconds / total:.1f}%")
    console.print(table)


@app.command()
@one_line_errors
def run(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    backend: Annotated[str, typer.Option("--backend", help="torch or numba.")] = "torch",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size.")] = 1,
    bench: Annotated[bool, typer.Option("--bench", help="Time repeated passes.")] = False,
    iters: Annotated[int, typer.Option(
        "--iters", min=1, max=10**6, help="Timed passes with --bench.")] = 20,
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, max=1024, help="CPU threads (default: all cores).")] = None,
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
    check_device(backend, device)
    graph = resolve_model(model, input)
    check_memory(graph, batch, device)
    with out_of_memory_as_error(graph, batch, backend, device):
        step = RUNNERS[backend](graph, device, batch, threads)
        shapes = step()
        console.print(f"{graph.name}: {backend} on {device}, batch {batch} -> "
                      + ", ".join("x".join(map(str, s)) for s in shapes), highlight=False)
        if profile:
            _print_profile(graph, batch, threads, iters)
        if not bench:
            return
        median = median_seconds(step, iters)
    console.print(f"median latency {median * 1e3:.2f} ms over {iters} passes, "
                  f"{batch / median:.1f} images/s", highlight=False)
