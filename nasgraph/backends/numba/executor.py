"""The executor: a planned graph bound to buffers, run as a list of kernel calls.

`compile` optimizes the graph (`nasgraph.passes.optimize`), plans its memory, packs the
weights once, and per batch size allocates the planned buffers and binds every node to
its kernel, its input arrays and its output slice. A call copies the input in, runs the
bound kernels in topological order and copies the outputs out.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numba
import numpy as np

from nasgraph import passes
from nasgraph.backends.numba import _chain as chain_k
from nasgraph.backends.numba import _elementwise as elem_k
from nasgraph.backends.numba import _tiled as tiled_k
from nasgraph.backends.numba._weights import checked_state
from nasgraph.backends.numba.nodes import (
    BINDERS,
    CONV_KINDS,
    NHWC_STRATEGIES,
    PACKERS,
    Step,
    at_batch,
    compiled,
    conv_strategies,
    pack_conv,
)
from nasgraph.errors import NasgraphError
from nasgraph.init import init_state
from nasgraph.ir import Graph, Node, walk
from nasgraph.passes import StateDict, plan_memory
from nasgraph.passes.memory import in_place_concat_parts

# Bound by the executor itself: an input is loaded by the call, a concat's parts are
# copied (`_bind_concat`), or written in place by their producers.
BOUND_HERE = ("input", "concat")


class Bound(NamedTuple):
    """An executor's buffers and kernel calls for one batch size."""

    load: Callable[[np.ndarray], None]  # copies a call's input in
    steps: list[Step]  # the kernel calls, in order
    step_nodes: list[str]  # the node id of each step
    outputs: list[np.ndarray]  # views of the output buffers


class NodeTime(NamedTuple):
    """One node's share of a call (`Executor.profile`)."""

    node: str
    kind: str
    strategy: str  # for convs, as `nodes.conv_strategy` names them; else ""
    seconds: float


# a call whose largest node does fewer multiply-adds than this runs on one thread: a
# parallel region costs 1.5-2 us and moves data between cores, more than a second thread
# saves on such small kernels (measured per conv, 3x3 and 1x1, and on whole calls)
ONE_THREAD_MACS = 250_000


def _padded_numel(graph: Graph, node: Node) -> int:
    t, (ph, pw) = graph[node.inputs[0]].type, node.op.pad
    return t.channels * (t.height + 2 * ph) * (t.width + 2 * pw)


def nhwc_outputs(graph: Graph, strategy: Mapping[str, str]) -> dict[str, int]:
    """Tiled convs that store their output zero-padded NHWC, as the tiled convs that read
    it want it, rather than NCHW (which each reader would copy into padded NHWC itself):
    node id -> the padding. A tensor qualifies when a tiled conv makes it (or it is the
    graph's input, which a call then copies in that way), it is no graph output and no
    concat part, and every reader is a tiled conv that takes it as its residual or as its
    input with a square padding. It is padded by the largest of those; a reader that pads
    less starts further in (a ResNet block's 3x3 conv and its 1x1 shortcut read one
    buffer). `strategy`: conv id -> its strategy (`conv_strategy`)."""
    parts = in_place_concat_parts(graph)
    outputs = {o.id for o in graph.outputs}
    chosen: dict[str, int] = {}
    for node in graph:
        if (strategy.get(node.id) not in NHWC_STRATEGIES and node.kind != "input") \
                or node.id in parts or node.id in outputs:
            continue
        pads = set()
        readers = graph.successors(node.id)
        for reader in readers:
            if strategy.get(reader.id) not in NHWC_STRATEGIES:
                break
            if reader.inputs[0] == node.id:
                pads.add(reader.op.pad)
        else:
            if readers and all(ph == pw for ph, pw in pads):
                chosen[node.id] = max((ph for ph, _ in pads), default=0)
    return chosen


class Executor:
    """A compiled graph: call it on an N x C x H x W float32 array.

    Returns one N x ... array, or a tuple of them for several outputs (fresh copies).
    `graph` is the optimized graph it runs, `nhwc` the tensors it stores padded NHWC
    (node id -> padding, `nhwc_outputs`) and `plan` its memory plan (per sample, padding
    included). `profile(x)` times each node.

    A call runs on `threads` threads, or on one where its largest node does fewer than
    `ONE_THREAD_MACS` multiply-adds (small nets at small batches).
    """

    def __init__(self, graph: Graph, state: StateDict, threads: int | None,
                 winograd: bool = True) -> None:
        self.graph = graph
        self.threads = threads
        self._get_threads, self._set_threads = _thread_count_entry_points()
        strategies = conv_strategies(graph, winograd)
        self._packed = {n.id: pack_conv(n, state, strategies[n.id], winograd) for n in graph
                        if n.kind in CONV_KINDS}
        self._packed |= {n.id: PACKERS[n.kind](n, state) for n in graph if n.kind in PACKERS}
        # the NHWC convs' weights, biases and zeros (Winograd packings for larger batches
        # included) as views of one array, which a chain of them (`_chain`) reads by offset
        nhwc = [p for p in self._packed.values() if p.get("strategy") in NHWC_STRATEGIES]
        nhwc += [p["winograd"] for p in nhwc if "winograd" in p]
        nhwc_params = [(p, k) for p in nhwc for k in ("w", "bias", "zeros") if k in p]
        self._wts, views = _arena([p[k].shape for p, k in nhwc_params])
        for (p, k), view in zip(nhwc_params, views, strict=True):
            view[...] = p[k]
            p[k] = view
        # (a conv that switches to Winograd at larger batches is tiled at 1: NHWC either way)
        self.nhwc = nhwc_outputs(graph, strategies)
        self.plan = plan_memory(graph, self._stored_bytes)
        # per sample: the largest padded NHWC copy a tiled conv makes of its input
        self._scratch_numel = max(
            [_padded_numel(graph, n) for n in graph
             if strategies.get(n.id) in NHWC_STRATEGIES], default=0)
        self._bound: dict[tuple[int, bool], Bound] = {}  # (batch, chains) -> bound
        (inp,) = graph.inputs  # read once: a walk over the graph costs more than a small call
        self._input_type = inp.type
        self._input_shape = tuple(inp.type.shape)
        self._largest_macs = max(  # per sample
            [n.op.macs([graph[i].type for i in n.inputs], n.type) for n in graph], default=0)

    def _stored_shape(self, node: Node) -> tuple[int, int, int]:
        """How a buffer owner's output is stored, per sample: C x H x W, or padded
        Hp x Wp x C."""
        t = node.type
        if node.id in self.nhwc:
            pad = self.nhwc[node.id]
            return t.height + 2 * pad, t.width + 2 * pad, t.channels
        return t.channels, t.height, t.width

    def _stored_bytes(self, node: Node) -> int:
        return 4 * int(np.prod(self._stored_shape(node)))

    def _bind(self, batch: int, chains: bool = True) -> Bound:
        """Buffers and kernel calls for `batch` samples; with `chains`, runs of NHWC convs
        each run in one parallel region (`_chain`), where a call is on several threads."""
        graph, plan = self.graph, self.plan
        arena, slots = _arena([(batch * b // 4,) for b in plan.slot_bytes])
        scratch = np.empty(batch * self._scratch_numel, np.float32)
        packed = {i: at_batch(p, batch) for i, p in self._packed.items()}
        # per thread, the largest work buffer a Winograd conv wants; zeros: the inner kernel
        # computes whole tiles of R, a few beyond a group's last with what the buffer
        # holds, and never stores them
        work_numel = max([p.get("work_size", 0) for p in packed.values()], default=0)
        work = np.zeros((numba.config.NUMBA_NUM_THREADS, work_numel), np.float32)
        steps: list[Step] = []
        step_nodes: list[str] = []  # the node each step runs (a concat has one per copy)
        nhwc = self.nhwc
        one_thread = self.threads_for(batch) == 1
        buffers: dict[str, np.ndarray] = {}  # storage owner -> its array

        def output(node: Node) -> tuple[np.ndarray, int]:
            """The array `node` writes into, and its first channel there."""
            owner = plan.owner[node.id]
            if owner not in buffers:  # the first part of an in-place concat allocates it
                buffers[owner] = slots[plan.slot[owner]][
                    :batch * self._stored_bytes(graph[owner]) // 4].reshape(
                    batch, *self._stored_shape(graph[owner]))
            return buffers[owner], plan.channel_offset[node.id]

        def bind(node: Node, xs: list[np.ndarray]) -> np.ndarray:
            out, co = output(node)
            if node.kind == "concat":
                steps.extend(self._bind_concat(node, xs, out, co))
            elif node.kind != "input":
                params = {**packed.get(node.id, {}), "scratch": scratch, "work": work,
                          "one_thread": one_thread, "arena": arena, "wts": self._wts,
                          "threads": self.threads_for(batch),
                          "out_pad": nhwc.get(node.id, -1),
                          "in_pad": nhwc.get(node.inputs[0], -1) if node.inputs else -1,
                          "res_pad": nhwc.get(node.inputs[1], -1) if len(node.inputs) > 1
                          else -1}
                steps.append(BINDERS[node.kind](node, params, xs, out, co))
            step_nodes.extend([node.id] * (len(steps) - len(step_nodes)))
            return out

        def flatten(node: Node, xs: list[np.ndarray]) -> np.ndarray:
            # the vector is its input's memory, seen as N x (C*H*W) x 1 x 1; other views
            # (identity, dropout, output) are their input as it is (walk)
            return xs[0].reshape(batch, node.type.channels, 1, 1)

        table = {**dict.fromkeys([*BINDERS, *BOUND_HERE], bind), "flatten": flatten}
        value = walk(graph, table, name="the numba executor (BINDERS)")
        if chains and not one_thread:
            steps, step_nodes = self._chain(steps, step_nodes, arena, work)
        (inp,) = graph.inputs
        outs = [value[o.id] for o in graph.outputs]
        outs = [o.reshape(batch, -1) if n.type.flat else o
                for o, n in zip(outs, graph.outputs, strict=True)]
        return Bound(self._loader(value[inp.id], one_thread), steps, step_nodes, outs)

    def _chain(self, steps: list[Step], step_nodes: list[str], arena: np.ndarray,
               work: np.ndarray) -> tuple[list[Step], list[str]]:
        """`steps` with each run of two or more chainable convs (a `chain_row`) as one
        step that runs them in one parallel region; the node of such a step: the run's
        node ids joined by "+"."""
        runs: list[tuple[list[Step], list[str]]] = []
        for step, node in zip(steps, step_nodes, strict=True):
            if runs and hasattr(step, "chain_row") and hasattr(runs[-1][0][-1], "chain_row"):
                runs[-1][0].append(step)
                runs[-1][1].append(node)
            else:
                runs.append(([step], [node]))
        out_steps, out_nodes = [], []
        for run_steps, run_nodes in runs:
            if len(run_steps) == 1:
                out_steps += run_steps
                out_nodes += run_nodes
                continue
            prog = np.stack([s.chain_row for s in run_steps])
            sync = np.zeros(len(prog) * (numba.config.NUMBA_NUM_THREADS + 1) * chain_k.LINE,
                            np.int64)
            args = (prog, arena, self._wts, work, sync)
            run = compiled(chain_k.run, *args, 1)
            out_steps.append(lambda threads, run=run, args=args: run(*args, threads))
            out_nodes.append("+".join(run_nodes))
        return out_steps, out_nodes

    def _loader(self, buffer: np.ndarray, one_thread: bool) -> Callable[[np.ndarray], None]:
        """How a call's N x C x H x W input gets into its buffer: a copy, or where only
        tiled convs read it (`nhwc_outputs`), one pass into padded NHWC (the copy and the
        first conv's own transposing copy, in one)."""
        if self.graph.inputs[0].id not in self.nhwc:
            def load(x: np.ndarray) -> None:
                buffer[...] = x
            return load
        pad = self.nhwc[self.graph.inputs[0].id]
        kernel = tiled_k.to_padded_nhwc_1 if one_thread else tiled_k.to_padded_nhwc
        kernel = compiled(kernel, np.empty((1, 1, 1, 1), np.float32), buffer, pad, pad)
        return lambda x: kernel(np.ascontiguousarray(x, np.float32), buffer, pad, pad)

    def _bind_concat(self, node: Node, xs: list, out: np.ndarray, co: int) -> list[Step]:
        steps, offset = [], co
        for i, x in zip(node.inputs, xs, strict=True):
            if self.plan.owner[i] != self.plan.owner[node.id]:  # not written in place
                steps.append(lambda threads, x=x, at=offset: elem_k.copy_channels(x, out, at))
            offset += self.graph[i].type.channels
        return steps

    def threads_for(self, batch: int) -> int:
        """How many threads a call on `batch` samples runs on: `threads` (numba's count
        where None), or 1 where the largest node does fewer than `ONE_THREAD_MACS`
        multiply-adds."""
        if batch * self._largest_macs < ONE_THREAD_MACS:
            return 1
        return self.threads or self._get_threads()

    def _prepare(self, x: np.ndarray, chains: bool = True) -> tuple[Bound, int, int]:
        """Checks `x`, sets numba's thread count and copies `x` in: the bound steps for
        its batch size (`_bind`), the thread count they run with, and the count to restore
        after the call (0: none; `threads=None` leaves numba's count as it found it)."""
        if self._input_type.flat and x.ndim == 2 and x.shape[1:] == self._input_shape:
            x = x.reshape(*x.shape, 1, 1)  # N x F feature vectors, stored N x F x 1 x 1
        elif x.ndim != 4 or x.shape[1:] != self._input_shape:
            raise NasgraphError(f"graph {self.graph.name!r} takes N x {self._input_type} input, "
                                f"got shape {tuple(x.shape)}; hint: recompile for another size")
        if x.shape[0] == 0:
            raise NasgraphError(f"graph {self.graph.name!r} got a batch of no samples (input "
                                f"shape {tuple(x.shape)}); a call needs at least one")
        threads, restore = self.threads, 0
        if threads is None:
            threads = self._get_threads()
        if threads > 1 and self.threads_for(x.shape[0]) == 1:
            restore = 0 if self.threads else threads
            threads = 1
        if self.threads or restore:
            self._set_threads(threads)  # checked against NUMBA_NUM_THREADS by compile()
        key = (x.shape[0], chains)
        if key not in self._bound:
            self._bound[key] = self._bind(*key)
        bound = self._bound[key]
        bound.load(x)
        return bound, threads, restore

    def __call__(self, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        bound, threads, restore = self._prepare(x)
        for step in bound.steps:
            step(threads)
        if restore:
            self._set_threads(restore)
        results = tuple(o.copy() for o in bound.outputs)
        return results[0] if len(results) == 1 else results

    def profile(self, x: np.ndarray, repeats: int = 20) -> list[NodeTime]:
        """Per node of the optimized graph, the median time of its kernel calls over
        `repeats` calls on `x` (after one warm-up call), in execution order. Nodes that
        are views (no kernel) are left out.

            >>> import numpy as np
            >>> from nasgraph import zoo
            >>> from nasgraph.backends.torch import lower
            >>> from nasgraph.backends import numba as nb
            >>> g = zoo.get("lenet5")
            >>> run = nb.compile(g, lower(g).eval().state_dict())
            >>> [t.node for t in run.profile(np.zeros((1, 1, 32, 32), np.float32), 3)][:2]
            ['c1', 's2']
        """
        self(x)
        bound, threads, restore = self._prepare(x, chains=False)  # a step per node
        times = np.empty((repeats, len(bound.steps)))
        clock = time.perf_counter
        for r in range(repeats):
            for k, step in enumerate(bound.steps):
                t0 = clock()
                step(threads)
                times[r, k] = clock() - t0
        if restore:
            self._set_threads(restore)
        per_node: dict[str, float] = {}
        for node_id, t in zip(bound.step_nodes, np.median(times, axis=0), strict=True):
            per_node[node_id] = per_node.get(node_id, 0.0) + float(t)
        strategies = self.strategies(x.shape[0])
        return [NodeTime(i, self.graph[i].kind, strategies.get(i, ""), t)
                for i, t in per_node.items()]

    def strategies(self, batch: int) -> dict[str, str]:
        """How each conv of the optimized graph runs on `batch` samples: conv node id ->
        "winograd", "tiled", "depthwise_nhwc", "depthwise" or "gemm"
        (`nodes.conv_strategy`)."""
        return {i: at_batch(p, batch)["strategy"] for i, p in self._packed.items()
                if "strategy" in p}


def _arena(shapes: list[tuple[int, ...]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One flat float32 array (uninitialized), and views of it of these shapes, each
    starting on a 64-byte line of its own."""
    line = 16
    sizes = [-(-int(np.prod(shape)) // line) * line for shape in shapes]
    arena = np.empty(max(sum(sizes), 1), np.float32)
    starts = np.cumsum([0, *sizes])
    return arena, [arena[at:at + int(np.prod(shape))].reshape(shape)
                   for at, shape in zip(starts, shapes, strict=False)]


def set_threads(threads: int) -> int:
    """Run the calling thread's numba kernels on `threads` threads, at most
    NUMBA_NUM_THREADS (and at least 1); returns the count set."""
    count = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(count)
    return count


@functools.cache
def _thread_count_entry_points() -> tuple[Callable[[], int], Callable[[int], None]]:
    """numba's get/set_num_threads, or where they are reachable, the C entry points they
    end in: the Python functions take a lock and check their argument first, 2.5-3 us a
    call (as much as a small kernel), the C ones 0.3 us."""
    numba.get_num_threads()  # launches the thread pool, which binds the entry points
    from numba.np.ufunc import parallel

    get, set_ = (getattr(parallel, name, None) for name in ("_get_num_threads",
                                                            "_set_num_threads"))
    if callable(get) and callable(set_):
        return get, set_
    return numba.get_num_threads, numba.set_num_threads


def _limit_blas_threads() -> None:
    # numba's prange pool is the only one: a second (OpenBLAS's) collapses throughput, and
    # OpenBLAS threading inside numba's OpenMP regions warns "Detect OpenMP Loop" and can hang
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba calls: load it to limit it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def compile(graph: Graph, state_dict: Mapping[str, object] | None = None, *,
            batch: int | None = None, threads: int | None = None, optimize: bool = True,
            winograd: bool = True) -> Executor:
    """Compile `graph` with the weights of `state_dict` (keys as `lower(graph).state_dict()`;
    None: freshly initialized ones, `nasgraph.init_state(graph)`, which need no torch).

    `state_dict` is checked first (`_weights.checked_state`): a weight missing or of
    another shape, a key no weight of the graph has, or an integer dtype raises a
    GraphError naming the node; float16 and float64 weights are cast to float32. BN's
    `num_batches_tracked` may be left out.

    `batch` binds buffers for that batch size now (others are bound on first use);
    `threads` sets numba's thread count for every call (default: numba's), as an upper
    bound: a call whose largest node is small runs on one (`Executor.threads_for`). `optimize=False`
    runs the graph as given, without the passes (to test them). `winograd=False` runs the
    3x3 convs that would take Winograd F(4x4, 3x3) (`nodes.conv_strategy`) with the
    direct tiled kernel instead: 2-4x slower on those layers, rounding closer to torch's.

        >>> import numpy as np
        >>> from nasgraph import zoo
        >>> from nasgraph.backends.torch import lower
        >>> from nasgraph.backends import numba as nb
        >>> g = zoo.get("lenet5")
        >>> run = nb.compile(g, lower(g).eval().state_dict())
        >>> run(np.zeros((2, *g.inputs[0].type.shape), np.float32)).shape
        (2, 10)
        >>> nb.compile(g)(np.zeros((1, 1, 32, 32), np.float32)).shape  # init_state(g)
        (1, 10)
    """
    if len(graph.inputs) != 1:
        raise NasgraphError(f"graph {graph.name!r} has {len(graph.inputs)} inputs; the numba "
                            "executor runs graphs with exactly one")
    missing = [n.id for n in graph if n.kind not in BINDERS and n.kind not in BOUND_HERE
               and not n.op.is_alias]
    if missing:
        raise NasgraphError(f"node {missing[0]!r} ({graph[missing[0]].kind}) has no numba "
                            "kernel")
    if threads is not None and not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise NasgraphError(f"threads={threads} is outside 1..{numba.config.NUMBA_NUM_THREADS}")
    state = checked_state(graph, init_state(graph) if state_dict is None else state_dict)
    _limit_blas_threads()
    planned, state = passes.optimize(graph, state) if optimize else (graph, state)
    executor = Executor(planned, state, threads, winograd)
    if batch is not None:
        executor._bound[(batch, True)] = executor._bind(batch)
    return executor
