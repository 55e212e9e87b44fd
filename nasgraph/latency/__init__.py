"""Running a graph on a backend, as `nasgraph run` does: one forward pass on random input
per call, on the torch or the numba backend, with the checks that keep a run from failing
half-way (a missing device, a batch that cannot fit in memory). The latency model, which
predicts a graph's latency per target from measured per-node tables, is `model.LatencyModel`
(docs/latency.md).

    >>> from nasgraph import zoo
    >>> from nasgraph.latency import RUNNERS, median_seconds
    >>> step = RUNNERS["numba"](zoo.get("lenet5"), "cpu", 2, 1)
    >>> step()
    [(2, 10)]
    >>> median_seconds(step, 3) > 0
    True
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from nasgraph.analysis import params as count_params
from nasgraph.analysis import peak_memory_bytes
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph, TensorType
from nasgraph.units import si

if TYPE_CHECKING:
    from nasgraph.backends.numba.executor import NodeTime

Step = Callable[[], list[tuple[int, ...]]]
Runner = Callable[[Graph, str, int, int | None], Step]


def torch_runner(graph: Graph, device: str, batch: int, threads: int | None) -> Step:
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


def numba_runner(graph: Graph, device: str, batch: int, threads: int | None) -> Step:
    """One call of the Numba executor, compiled for this batch with random weights."""
    import numpy as np

    from nasgraph.backends import numba as numba_backend

    executor = numba_backend.compile(graph, batch=batch, threads=threads)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((batch, *n.type.shape), dtype=np.float32) for n in graph.inputs]

    def step() -> list[tuple[int, ...]]:
        ys = executor(*xs)
        return [y.shape for y in (ys if isinstance(ys, tuple) else (ys,))]

    return step


RUNNERS: dict[str, Runner] = {"torch": torch_runner, "numba": numba_runner}


def check_device(backend: str, device: str) -> None:
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


def available_memory(device: str) -> tuple[int, str] | None:
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


def memory_needed(graph: Graph) -> tuple[int, int]:
    """What a run needs, about: bytes of activations an image (`peak_memory_bytes`), and
    bytes of float32 weights."""
    return peak_memory_bytes(graph), 4 * count_params(graph)


def check_memory(graph: Graph, batch: int, device: str) -> None:
    """Refuse a batch that would not fit in `available_memory` before allocating any: past
    it, an allocation fails or, where the OS overcommits, the process is killed while it
    fills the pages."""
    per_image, weights = memory_needed(graph)
    need = batch * per_image + weights
    found = available_memory(device)
    if found is None or need <= found[0]:
        return
    free, where = found
    fits = (free - weights) // per_image
    hint = f"--batch {fits} or less" if fits > 0 else "a smaller --input"
    raise NasgraphError(f"--batch {batch}: needs about {si(need, '.2f', 'B')} of memory "
                        f"({si(per_image, '.2f', 'B')} of activations an image), more than the "
                        f"{si(free, '.2f', 'B')} {where}; hint: {hint}")


# how torch's allocators word a failed allocation (CPU, older CPU, CUDA's OutOfMemoryError)
OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory|out of memory", re.I)


@contextlib.contextmanager
def out_of_memory_as_error(graph: Graph, batch: int, backend: str,
                            device: str) -> Iterator[None]:
    """A failed allocation (numpy's MemoryError, torch's RuntimeError) becomes a one-line
    NasgraphError naming the batch size and the memory it needs."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not OUT_OF_MEMORY.search(str(e)):
            raise
        per_image, weights = memory_needed(graph)
        raise NasgraphError(f"--batch {batch}: out of memory running {graph.name} on {backend} "
                            f"({device}), which needs about "
                            f"{si(batch * per_image + weights, '.2f', 'B')}; hint: a smaller "
                            "--batch") from None


def median_seconds(step: Step, iters: int, warmup: int = 3) -> float:
    """The median wall time of `iters` calls of `step`, after `warmup` calls (the
    allocator, kernel selection and JIT's first calls)."""
    for _ in range(min(warmup, iters)):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numba_profile(graph: Graph, batch: int, threads: int | None, iters: int
                  ) -> tuple[list[NodeTime], dict[str, TensorType]]:
    """Every node's median time on the numba executor (`Executor.profile`, random weights
    and input), and the output type of each node of the executor's optimized graph."""
    import numpy as np

    from nasgraph.backends import numba as numba_backend

    executor = numba_backend.compile(graph, batch=batch, threads=threads)
    (node,) = graph.inputs
    x = np.random.default_rng(0).standard_normal((batch, *node.type.shape), dtype=np.float32)
    return executor.profile(x, iters), {n.id: n.type for n in executor.graph}
