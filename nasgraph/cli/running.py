"""`nasgraph run`: a forward pass on either backend, timed with --bench, per node with
--profile."""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Annotated

import typer
from rich.table import Table

from nasgraph.analysis import params as count_params
from nasgraph.analysis import peak_memory_bytes
from nasgraph.cli._common import Debug, app, console, human, one_line_errors, resolve_model
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph

Step = Callable[[], list[tuple[int, ...]]]
Runner = Callable[[Graph, str, int, int | None], Step]


def _torch_runner(graph: Graph, device: str, batch: int, threads: int | None) -> Step:
    """One forward pass of the lowered graph on random input (synchronized on CUDA)."""
    import torch

    from nasgraph.backends.torch import lower

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

    executor = numba_backend.compile(graph, lower(graph).eval().state_dict(), batch=batch,
                                     threads=threads)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((batch, *n.type.shape), dtype=np.float32) for n in graph.inputs]

    def step() -> list[tuple[int, ...]]:
        ys = executor(*xs)
        return [y.shape for y in (ys if isinstance(ys, tuple) else (ys,))]

    return step


RUNNERS: dict[str, Runner] = {"torch": _torch_runner, "numba": _numba_runner}


def _check_device(backend: str, device: str) -> None:
    """The backend runs on the device, which is there."""
    if device not in ("cpu", "cuda"):
        raise NasgraphError(f"--device {device!r}: expected cpu or cuda")
    if device == "cuda" and backend == "numba":
        raise NasgraphError("--device cuda: the numba backend runs on the cpu only; hint: "
                            "--backend torch")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise NasgraphError("--device cuda: no CUDA device is available; hint: --device cpu")


def _available_memory(device: str) -> tuple[int, str] | None:
    """The bytes a run may allocate on `device` and where they are: the CUDA device's free
    memory; on the cpu, psutil's available memory where psutil is installed, else all
    physical memory (a looser bound: an allocation past what is free fails, and is caught).
    None where the platform does not say."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0], "free on the CUDA device"
    try:
        import psutil
    except ImportError:
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "on this machine"
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
            return None
    return psutil.virtual_memory().available, "available"


def _memory_needed(graph: Graph) -> tuple[int, int]:
    """What a run needs, about: bytes of activations an image (`peak_memory_bytes`), and
    bytes of float32 weights."""
    return peak_memory_bytes(graph), 4 * count_params(graph)


def _check_memory(graph: Graph, batch: int, device: str) -> None:
    """Refuse a batch that would not fit in `_available_memory` before allocating any: past
    it, an allocation fails or, where the OS overcommits, the process is killed while it
    fills the pages."""
    per_image, weights = _memory_needed(graph)
    need = batch * per_image + weights
    found = _available_memory(device)
    if found is None or need <= found[0]:
        return
    free, where = found
    fits = (free - weights) // per_image
    hint = f"--batch {fits} or less" if fits > 0 else "a smaller --input"
    raise NasgraphError(f"--batch {batch}: needs about {human(need, 'B')} of memory "
                        f"({human(per_image, 'B')} of activations an image), more than the "
                        f"{human(free, 'B')} {where}; hint: {hint}")


# how torch's allocators word a failed allocation (CPU, older CPU, CUDA's OutOfMemoryError)
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory|out of memory", re.I)


@contextlib.contextmanager
def _out_of_memory_as_error(graph: Graph, batch: int, backend: str,
                            device: str) -> Iterator[None]:
    """A failed allocation (numpy's MemoryError, torch's RuntimeError) becomes a one-line
    NasgraphError naming the batch size and the memory it needs."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _OUT_OF_MEMORY.search(str(e)):
            raise
        per_image, weights = _memory_needed(graph)
        raise NasgraphError(f"--batch {batch}: out of memory running {graph.name} on {backend} "
                            f"({device}), which needs about "
                            f"{human(batch * per_image + weights, 'B')}; hint: a smaller "
                            "--batch") from None


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
    _check_device(backend, device)
    graph = resolve_model(model, input)
    _check_memory(graph, batch, device)
    with _out_of_memory_as_error(graph, batch, backend, device):
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
