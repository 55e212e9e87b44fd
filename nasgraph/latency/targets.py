"""Latency targets: how each backend keys, times and runs a graph's nodes.

Every target runs the graph the compiler pipeline makes (`passes.optimize`: BN folded,
epilogues fused), so the nodes it keys and times are the ones that run. A node's key is
its op kind, attributes, input and output types, the batch and the threads, and for numba
what the executor's plan decides for it: the conv strategy at that batch, the padded-NHWC
layouts of its input, residual and output, and whether it writes into a concat in place.

- numba: per-node times from `Executor.profile` of the whole graph, so each kernel is
  timed in the layout and cache context it runs in; a graph's unknown keys cost one
  compile and one profile.
- torch-cpu, torch-cuda: the lowered optimized graph, each node timed through a
  `torch.fx.Interpreter` (synchronized on CUDA).
- onnxruntime: each unknown node alone, as a one-node graph exported to ONNX (opset 17)
  and run by an onnxruntime session at `threads` intra-op threads.

Backends are imported inside the functions: importing this module imports no torch,
numba or onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nasgraph import passes
from nasgraph.errors import NasgraphError
from nasgraph.init import init_state
from nasgraph.ir import Graph, Node, ops
from nasgraph.passes import StateDict

# nodes that are no kernel on any target: the graph's boundary
UNKEYED = ("input", "output")
TARGET_NAMES = ("numba", "torch-cpu", "torch-cuda", "onnxruntime")


class Plan(NamedTuple):
    """A graph as a target runs it: the optimized graph, the graph it came from, and the
    key of each node that may run a kernel (node id -> key), in execution order."""

    graph: Graph
    source: Graph
    keys: dict[str, str]

    @property
    def state(self) -> StateDict:
        """Weights for the optimized graph, drawn when a measurement needs them
        (`init_state`, seed 0: latency does not depend on their values)."""
        return passes.optimize(self.source, init_state(self.source, 0))[1]


def optimized(graph: Graph) -> Graph:
    """The graph the backends run (`passes.optimize`). Its structure depends on the ops'
    attributes only, not on the weights, so the passes get one-element stand-ins that
    broadcast like the weights (folding BN into ResNet-50's real weights takes 0.2 s, into
    these 6 ms); a test checks the result against the executor's own optimized graph."""
    zeros = {key: np.zeros((1,) * len(spec.shape), spec.dtype)
             for key, (_, spec) in graph.weight_specs().items()}
    return passes.optimize(graph, zeros)[0]


def node_key(graph: Graph, node: Node, batch: int, threads: int, **context: object) -> str:
    """The lookup key of `node`: a canonical JSON list of its kind, attributes, input
    types, output type, batch, threads and target-specific `context`."""
    return json.dumps([node.kind, node.op.attrs(), [str(graph[i].type) for i in node.inputs],
                       str(node.type), batch, threads, context], sort_keys=True,
                      separators=(",", ":"))


def random_input(graph: Graph, batch: int) -> list[np.ndarray]:
    """A batch of standard normal float32 input per graph input (seed 0)."""
    return [np.random.default_rng(0).standard_normal((batch, *n.type.shape), dtype=np.float32)
            for n in graph.inputs]


def median_time(step: Callable[[], object], iters: int, warmup: int = 2) -> float:
    """Median seconds of `iters` calls of `step` after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------ numba


def numba_context(graph: Graph, batch: int, threads: int) -> tuple[int, dict[str, dict]]:
    """What the numba executor decides for an optimized graph at `batch`, without
    compiling it: the threads a call runs on (`Executor.threads_for`), and per node its
    conv strategy (`Executor.strategies`), padded-NHWC layouts (`nhwc_outputs`) and
    in-place concat writes (`in_place_concat_parts`)."""
    from nasgraph.backends.numba.executor import ONE_THREAD_MACS, nhwc_outputs
    from nasgraph.backends.numba.nodes import conv_strategies, winograd_from
    from nasgraph.passes.memory import in_place_concat_parts

    at_one = conv_strategies(graph)
    strategy = dict(at_one)
    for node_id in [i for i, s in at_one.items() if s == "tiled"]:  # as `pack_conv`
        node = graph[node_id]
        start = winograd_from(node, graph[node.inputs[0]].type.channels // node.op.groups)
        if start is not None and batch >= start:
            strategy[node_id] = "winograd"
    nhwc = nhwc_outputs(graph, at_one)  # chosen at batch 1 (tiled or Winograd: NHWC either way)
    parts = in_place_concat_parts(graph)
    largest = max([n.op.macs([graph[i].type for i in n.inputs], n.type) for n in graph],
                  default=0)
    runs_on = 1 if batch * largest < ONE_THREAD_MACS else threads
    context = {}
    for node in graph:
        pads = [nhwc.get(i, -1) for i in node.inputs[:2]]
        context[node.id] = {"strategy": strategy.get(node.id, ""), "pads": pads,
                            "out_pad": nhwc.get(node.id, -1), "into_concat": node.id in parts}
        if node.kind == "concat":
            context[node.id]["in_place"] = [parts.get(i, ("",))[0] == node.id
                                            for i in node.inputs]
    return runs_on, context


class NumbaTarget:
    """The numba executor at `threads` threads (an upper bound, as `compile` takes it)."""

    name = "numba"

    def __init__(self, threads: int = 1, repeats: int = 20) -> None:
        self.threads, self.repeats = threads, repeats

    def plan(self, graph: Graph, batch: int) -> Plan:
        opt = optimized(graph)
        runs_on, context = numba_context(opt, batch, self.threads)
        keys = {n.id: node_key(opt, n, batch, runs_on, **context[n.id]) for n in opt
                if n.kind not in UNKEYED}
        return Plan(opt, graph, keys)

    def _compile(self, plan: Plan, batch: int):  # noqa: ANN202  (an Executor; numba lazily)
        from nasgraph.backends import numba as numba_backend

        return numba_backend.compile(plan.graph, plan.state, batch=batch, threads=self.threads,
                                     optimize=False)

    def node_times(self, plan: Plan, batch: int, wanted: set[str]) -> dict[str, float]:
        """Seconds per node of one profile of the whole graph; a keyed node with no
        kernel of its own (a view, a concat written in place) takes 0."""
        executor = self._compile(plan, batch)
        (x,) = random_input(plan.graph, batch)
        profiled = {t.node: t.seconds for t in executor.profile(x, self.repeats)}
        return {i: profiled.get(i, 0.0) for i in plan.keys}

    def measure(self, plan: Plan, batch: int, iters: int) -> float:
        executor = self._compile(plan, batch)
        (x,) = random_input(plan.graph, batch)
        return median_time(lambda: executor(x), iters)


# ------------------------------------------------------------------ torch


class TorchTarget:
    """The lowered optimized graph on a torch device, under no_grad."""

    def __init__(self, threads: int = 1, repeats: int = 20, device: str = "cpu") -> None:
        self.threads, self.repeats, self.device = threads, repeats, device
        self.name = f"torch-{device}"

    def plan(self, graph: Graph, batch: int) -> Plan:
        opt = optimized(graph)
        keys = {n.id: node_key(opt, n, batch, self.threads, device=self.device) for n in opt
                if n.kind not in UNKEYED}
        return Plan(opt, graph, keys)

    def _module(self, plan: Plan, batch: int) -> tuple[object, list[object]]:
        import torch

        from nasgraph.backends.torch import lower

        if self.device == "cuda" and not torch.cuda.is_available():
            raise NasgraphError("--target torch-cuda: no CUDA device is available; hint: "
                                "--target torch-cpu")
        torch.set_num_threads(self.threads)
        module = lower(plan.graph, plan.state).to(self.device).eval()
        xs = [torch.from_numpy(x).to(self.device) for x in random_input(plan.graph, batch)]
        return module, xs

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def node_times(self, plan: Plan, batch: int, wanted: set[str]) -> dict[str, float]:
        """Median seconds per node over `repeats` interpreted calls; the fx nodes a node
        emits (a fused conv's add and activation) count to it."""
        import torch
        from torch import fx

        module, xs = self._module(plan, batch)
        sync, clock = self._sync, time.perf_counter
        owner = _fx_owners(module.graph)

        class Timed(fx.Interpreter):
            # times the call alone: fetching its arguments is the interpreter's overhead,
            # which the lowered module's generated forward does not have
            def run_node(self, n: fx.Node) -> object:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                call = getattr(self, n.op)
                sync()
                t0 = clock()
                result = call(n.target, args, kwargs)
                sync()
                if n in owner:
                    times[owner[n]] = times.get(owner[n], 0.0) + clock() - t0
                return result

        samples: dict[str, list[float]] = {}
        with torch.no_grad():
            for r in range(self.repeats + 2):
                times: dict[str, float] = {}
                Timed(module).run(*xs)
                if r >= 2:  # warm-up calls
                    for i, t in times.items():
                        samples.setdefault(i, []).append(t)
        return {i: statistics.median(samples[i]) if i in samples else 0.0 for i in plan.keys}

    def measure(self, plan: Plan, batch: int, iters: int) -> float:
        import torch

        module, xs = self._module(plan, batch)

        def step() -> None:
            with torch.no_grad():
                module(*xs)
            self._sync()

        return median_time(step, iters)


def _fx_owners(graph: object) -> dict[object, str]:
    """fx node -> the IR node id it computes part of: each IR node's last fx node carries
    it (`meta["nasgraph_node"]`, `trace`), and the fx nodes before it since the previous
    such node are its own (a conv, then its residual add and activation)."""
    owner, pending = {}, []
    for n in graph.nodes:
        if n.op in ("placeholder", "output", "get_attr"):
            continue
        pending.append(n)
        node = n.meta.get("nasgraph_node")
        if node is not None:
            owner.update(dict.fromkeys(pending, node.id))
            pending = []
    return owner


# ------------------------------------------------------------------ onnxruntime


def isolated(graph: Graph, node: Node) -> Graph:
    """`node` alone: an input per distinct input of it (of that input's type), the node,
    an output."""
    defs: list[tuple[str, ops.Op, tuple[str, ...]]] = []
    names: dict[str, str] = {}
    for i in node.inputs:
        if i not in names:
            names[i] = f"x{len(names)}"
            t = graph[i].type
            defs.append((names[i], ops.Input(channels=t.channels, height=t.height,
                                             width=t.width, flat=t.flat), ()))
    defs.append(("node", node.op, tuple(names[i] for i in node.inputs)))
    defs.append(("out", ops.Output(), ("node",)))
    return Graph(defs, name="node")


@contextlib.contextmanager
def onnx_session(graph: Graph, state: StateDict, threads: int) -> Iterator[object]:
    """An onnxruntime CPU session running `graph` exported by `export_onnx`."""
    import onnxruntime as ort

    from nasgraph.backends.torch import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(graph, Path(folder) / "graph.onnx", state)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        yield ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session: object, graph: Graph, batch: int) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    return dict(zip(names, random_input(graph, batch), strict=True))


class OnnxTarget:
    """onnxruntime's CPU execution provider at `threads` intra-op threads."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1, repeats: int = 20) -> None:
        self.threads, self.repeats = threads, repeats

    def plan(self, graph: Graph, batch: int) -> Plan:
        opt = optimized(graph)
        keys = {n.id: node_key(opt, n, batch, self.threads) for n in opt
                if n.kind not in UNKEYED and not n.op.is_alias}
        return Plan(opt, graph, keys)

    def node_times(self, plan: Plan, batch: int, wanted: set[str]) -> dict[str, float]:
        """Seconds of each wanted node run alone (session overhead included: the fitted
        per-node overhead takes it out again)."""
        times, weights = {}, plan.state
        for node_id in wanted:
            one = isolated(plan.graph, plan.graph[node_id])
            state = {k.replace(plan.graph[node_id].param_key, "node", 1): v
                     for k, v in weights.items()
                     if k.startswith(plan.graph[node_id].param_key + ".")}
            with onnx_session(one, state, self.threads) as session:
                feeds = _feeds(session, one, batch)
                times[node_id] = median_time(lambda s=session, f=feeds: s.run(None, f),
                                             self.repeats)
        return times

    def measure(self, plan: Plan, batch: int, iters: int) -> float:
        with onnx_session(plan.graph, plan.state, self.threads) as session:
            feeds = _feeds(session, plan.graph, batch)
            return median_time(lambda: session.run(None, feeds), iters)


Target = NumbaTarget | TorchTarget | OnnxTarget


def target(name: str, threads: int = 1, repeats: int = 20) -> Target:
    """The target called `name` (`TARGET_NAMES`)."""
    if name == "numba":
        return NumbaTarget(threads, repeats)
    if name in ("torch-cpu", "torch-cuda"):
        return TorchTarget(threads, repeats, name.removeprefix("torch-"))
    if name == "onnxruntime":
        return OnnxTarget(threads, repeats)
    raise NasgraphError(f"--target {name!r}: expected {', '.join(TARGET_NAMES)}")
