"""A latency model per target: a graph's latency predicted from a per-machine table of its
nodes' kernel times, plus fitted overheads.

    predicted = graph_s + node_s x (nodes that run a kernel) + sum of the nodes' table times

The table (`LatencyTable`) is keyed by what decides a kernel's time on the target
(`targets.node_key`: op, attributes, shapes, batch, threads, and for numba the executor's
conv strategy and layouts), measured through the same compiled plan that runs the model,
and kept in the user's cache directory per machine (`machine.cache_path`). A prediction
measures only the keys the table lacks (then saves it); once warm it is a lookup.
`calibrate` fits the two overheads by least squares on whole-graph measurements.

    >>> from nasgraph import zoo
    >>> model = LatencyModel("numba", threads=1, cache=False)
    >>> p = model.predict(zoo.get("lenet5"))
    >>> p.total_ms > 0, [row.node for row in p.per_node][:2]
    (True, ['c1', 's2'])
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph
from nasgraph.latency.machine import cache_path, machine
from nasgraph.latency.table import LatencyTable, fit_overheads
from nasgraph.latency.targets import Plan, target

PLANS_KEPT = 64  # plans memoized per model (optimizing a graph costs more than a lookup)


class NodeLatency(NamedTuple):
    """One node's row of a prediction."""

    node: str  # node id in the optimized graph
    kind: str
    key: str  # its table key
    ms: float


class Prediction(NamedTuple):
    """A predicted latency: `total_ms` = `graph_ms` + `node_ms` x `kernels` + the rows'."""

    total_ms: float
    per_node: list[NodeLatency]
    graph_ms: float  # the fitted per-graph overhead
    node_ms: float  # the fitted per-node overhead
    kernels: int  # nodes that run a kernel (a row over 0 ms)
    error: float = 0.0  # the table's worst under-prediction on its calibration graphs

    @property
    def upper_ms(self) -> float:
        """The prediction plus the worst under-prediction the calibration saw: what a
        latency budget is checked against."""
        return self.total_ms * (1 + self.error)


class CalibrationRow(NamedTuple):
    """A graph of a calibration: its nodes' summed table times, its kernel count, and its
    measured latency; `predicted_ms` with the overheads fitted on all rows."""

    name: str
    sum_ms: float
    kernels: int
    measured_ms: float
    predicted_ms: float

    @property
    def relative_error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


class LatencyModel:
    """Predicts and measures latency on one target (`targets.TARGET_NAMES`).

    `threads`: the CPU threads the target runs on (its table is per thread count).
    `cache`: the table file; None: the user cache directory's file for this machine;
    False: no file (the table lives as long as the model). `repeats`: timed calls per
    measurement of a node.
    """

    def __init__(self, target_name: str = "numba", threads: int = 1,
                 cache: Path | str | None | bool = None, repeats: int = 20) -> None:
        if threads < 1:
            raise NasgraphError(f"--threads {threads}: expected 1 or more")
        self.target = target(target_name, threads, repeats)
        self.threads = threads
        identity = machine(self.target.name, threads)
        self.path = None if cache is False else (
            cache_path(identity) if cache is None or cache is True else Path(cache))
        self.table = (LatencyTable.load(self.path, identity) if self.path
                      else LatencyTable(identity))
        self._plans: OrderedDict[tuple[str, int], Plan] = OrderedDict()

    def plan(self, graph: Graph, batch: int = 1) -> Plan:
        """The target's plan of `graph` at `batch` (`targets.Plan`), memoized."""
        key = (graph.fingerprint(), batch)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = self._plans[key] = self.target.plan(graph, batch)
        if len(self._plans) > PLANS_KEPT:
            self._plans.popitem(last=False)
        return plan

    def missing(self, graph: Graph, batch: int = 1) -> set[str]:
        """The node ids of `graph` whose keys the table lacks."""
        plan = self.plan(graph, batch)
        return {i for i, k in plan.keys.items() if k not in self.table.entries}

    def fill(self, graph: Graph, batch: int = 1) -> int:
        """Measure the keys of `graph` the table lacks and save the table; how many were
        added."""
        plan = self.plan(graph, batch)
        # one node per missing key: a target that times nodes one by one times it once
        wanted = set({plan.keys[i]: i for i in sorted(self.missing(graph, batch))}.values())
        if not wanted:
            return 0
        times = self.target.node_times(plan, batch, wanted)
        by_key: dict[str, list[float]] = {}
        for node_id, seconds in times.items():  # a key several nodes share: their mean
            if plan.keys[node_id] not in self.table.entries:
                by_key.setdefault(plan.keys[node_id], []).append(seconds)
        self.table.entries.update({k: sum(v) / len(v) for k, v in by_key.items()})
        self.save()
        return len(by_key)

    def predict(self, graph: Graph, batch: int = 1, measure_missing: bool = True
                ) -> Prediction:
        """The predicted latency of `graph` at `batch`. Keys the table lacks are measured
        first (`fill`); with `measure_missing=False` they raise a NasgraphError instead."""
        if self.missing(graph, batch):
            if not measure_missing:
                raise NasgraphError(f"graph {graph.name!r}: {len(self.missing(graph, batch))} "
                                    f"nodes not in the {self.target.name} latency table; "
                                    "hint: predict with measure_missing=True once")
            self.fill(graph, batch)
        plan = self.plan(graph, batch)
        rows = [NodeLatency(i, plan.graph[i].kind, k, 1e3 * self.table.entries[k])
                for i, k in plan.keys.items()]
        return self._prediction(rows)

    def node_times(self, graph: Graph, batch: int = 1) -> dict[str, float]:
        """Predicted milliseconds per node of `graph` as written, for `info --latency` and
        `render --show latency`. The table times the compiled graph, so a node that the
        compiler fuses into another (a BN, an activation or a residual add into its conv)
        has no entry: its time is in that of the node it joined. The per-call and per-kernel
        overheads are not in these rows (`predict` adds them to the total)."""
        return {r.node: r.ms for r in self.predict(graph, batch).per_node if r.node in graph}

    def _prediction(self, rows: list[NodeLatency]) -> Prediction:
        kernels = sum(1 for r in rows if r.ms > 0)
        graph_ms, node_ms = 1e3 * self.table.graph_s, 1e3 * self.table.node_s
        total = graph_ms + node_ms * kernels + sum(r.ms for r in rows)
        return Prediction(total, rows, graph_ms, node_ms, kernels, self.table.error)

    def measure(self, graph: Graph, batch: int = 1, iters: int = 30) -> float:
        """The median whole-graph latency in milliseconds over `iters` calls (after
        warm-up), run as the target runs it."""
        return 1e3 * self.target.measure(self.plan(graph, batch), batch, iters)

    def calibrate(self, graphs: list[Graph], batch: int = 1, iters: int = 30, turns: int = 1
                  ) -> list[CalibrationRow]:
        """Fill the table for `graphs`, measure each whole, fit the per-graph and per-node
        overheads to them (`fit_overheads`) and save; a row per graph with its prediction
        under the new overheads. With `turns` > 1 each graph is measured that many times, in
        turns (all graphs, then all again), and its median taken: a slow moment of the
        machine then spoils one turn of every graph rather than every turn of one."""
        sums, kernels = [], []
        for graph in graphs:
            self.fill(graph, batch)
            rows = self.predict(graph, batch).per_node
            sums.append(sum(r.ms for r in rows) / 1e3)
            kernels.append(sum(1 for r in rows if r.ms > 0))
        times: list[list[float]] = [[] for _ in graphs]
        for _ in range(turns):
            for graph, seconds in zip(graphs, times, strict=True):
                seconds.append(self.measure(graph, batch, iters) / 1e3)
        measured = [statistics.median(seconds) for seconds in times]
        self.table.graph_s, self.table.node_s = fit_overheads(sums, kernels, measured)
        rows = [CalibrationRow(g.name, 1e3 * s, k, 1e3 * m,
                               1e3 * (self.table.graph_s + self.table.node_s * k + s))
                for g, s, k, m in zip(graphs, sums, kernels, measured, strict=True)]
        self.table.graphs = len(graphs)
        self.table.error = max(0.0, *(r.measured_ms / r.predicted_ms - 1 for r in rows))
        self.save()
        return rows

    def save(self) -> None:
        """Write the table to its cache file (all or nothing); nothing without one."""
        if self.path is not None:
            self.table.save(self.path)
