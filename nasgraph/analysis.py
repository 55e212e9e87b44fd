"""Cost analysis of a graph: parameters, MACs, FLOPs, memory, receptive field, depth and
multiplicity, per node and in total.

Conventions (docs/costs.md): `params` counts what `module.parameters()` holds; `macs` counts
the multiply-accumulates of conv and linear layers (papers' "FLOPs"); `flops` counts all
arithmetic with 2 per MAC; memory is per sample (batch 1) in bytes.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from nasgraph.ir.graph import Graph, Node
from nasgraph.passes.memory import live_ranges


class NodeCost(BaseModel):
    """The figures of one node."""

    id: str
    op: str
    label: str
    shape: list[int]
    params: int
    macs: int
    flops: int
    memory_bytes: int  # bytes of this node's output (per sample); views count their source's
    receptive_field: list[int] | None  # (h, w) in input pixels; None once pooled globally
    stride: list[float] | None  # cumulative stride (h, w) in input pixels
    depth: int  # conv/linear layers on the longest path from an input up to here


class Summary(BaseModel):
    """Totals and the per-node table of a graph (`nasgraph info --json` prints this)."""

    name: str
    input: list[int]
    outputs: list[list[int]]
    params: int
    macs: int
    flops: int
    depth: int
    multiplicity: int
    receptive_field: int | None
    peak_memory_bytes: int
    nodes: list[NodeCost]


def _receptive_fields(graph: Graph) -> dict[str, tuple[tuple[float, float],
                                                      tuple[float, float]] | None]:
    """(size, cumulative stride) per axis of every node; None once a node sees everything."""
    fields: dict[str, tuple[tuple[float, float], tuple[float, float]] | None] = {}
    for node in graph:
        ins = [fields[i] for i in node.inputs]
        if not node.inputs:
            fields[node.id] = ((1.0, 1.0), (1.0, 1.0))
            continue
        # A global input (a squeeze-excitation gate) scales a spatial path without widening
        # it: a merge follows its spatial inputs and is global only when all inputs are.
        ins = [f for f in ins if f is not None]
        if node.op.is_global or not ins:
            fields[node.id] = None
            continue
        size = tuple(max(f[0][a] for f in ins) for a in (0, 1))
        jump = tuple(max(f[1][a] for f in ins) for a in (0, 1))
        kernel, stride = node.op.window([graph[i].type for i in node.inputs])
        fields[node.id] = (
            tuple(size[a] + (kernel[a] - 1) * jump[a] for a in (0, 1)),
            tuple(jump[a] * stride[a] for a in (0, 1)),
        )
    return fields


def _depths(graph: Graph) -> dict[str, int]:
    depth: dict[str, int] = {}
    for node in graph:
        below = max((depth[i] for i in node.inputs), default=0)
        depth[node.id] = below + int(node.op.is_layer)
    return depth


def multiplicity(graph: Graph) -> int:
    """Number of distinct input-to-output paths.

    A chain has 1; a residual block doubles it (the block and its shortcut); an Inception
    block with 4 branches multiplies it by 4.
    """
    paths: dict[str, int] = {}
    for node in graph:
        paths[node.id] = sum(paths[i] for i in node.inputs) if node.inputs else 1
    return sum(paths[o.id] for o in graph.outputs)


def peak_memory_bytes(graph: Graph, concat_in_place: bool = False) -> int:
    """Peak bytes of live activations (per sample) running the nodes in topological order.

    A node's output is allocated when it runs and freed after its last consumer has run;
    graph outputs stay live to the end. Views (Identity, Dropout, Flatten, Output) allocate
    nothing and keep their source alive as long as they are used. With `concat_in_place`
    (how the Numba executor runs), the parts `in_place_concat_parts` names are written into
    their concat's buffer: it is allocated when its first part runs and they allocate nothing.
    """
    ranges = live_ranges(graph, concat_in_place)
    allocs: dict[int, int] = {}
    frees: dict[int, int] = {}
    for s, (start, end) in ranges.items():
        allocs[start] = allocs.get(start, 0) + graph[s].type.nbytes
        frees[end] = frees.get(end, 0) + graph[s].type.nbytes
    live = peak = 0
    for k in range(len(graph)):
        live += allocs.get(k, 0)
        peak = max(peak, live)
        live -= frees.get(k, 0)
    return peak


def node_costs(graph: Graph) -> list[NodeCost]:
    """The per-node table, in topological order."""
    fields = _receptive_fields(graph)
    depth = _depths(graph)
    rows = []
    for node in graph:
        ins = [graph[i].type for i in node.inputs]
        field = fields[node.id]
        rows.append(NodeCost(
            id=node.id, op=node.kind, label=node.op.label(), shape=list(node.type.shape),
            params=node.op.params(ins), macs=node.op.macs(ins, node.type),
            flops=node.op.flops(ins, node.type), memory_bytes=node.type.nbytes,
            receptive_field=None if field is None else [math.ceil(s) for s in field[0]],
            stride=None if field is None else list(field[1]),
            depth=depth[node.id]))
    return rows


def summarize(graph: Graph) -> Summary:
    """All figures of `graph`: totals and a per-node table.

        >>> from nasgraph import zoo, summarize
        >>> s = summarize(zoo.get("resnet50"))
        >>> s.params, s.macs
        (25557032, 4089184256)
    """
    rows = node_costs(graph)
    depth = {r.id: r.depth for r in rows}
    spatial = [max(r.receptive_field) for r in rows if r.receptive_field is not None]
    return Summary(
        name=graph.name,
        input=list(graph.inputs[0].type.shape) if graph.inputs else [],
        outputs=[list(o.type.shape) for o in graph.outputs],
        params=sum(r.params for r in rows),
        macs=sum(r.macs for r in rows),
        flops=sum(r.flops for r in rows),
        depth=max(depth[o.id] for o in graph.outputs),
        multiplicity=multiplicity(graph),
        receptive_field=max(spatial) if spatial else None,
        peak_memory_bytes=peak_memory_bytes(graph),
        nodes=rows,
    )


def params(graph: Graph) -> int:
    """Trainable parameters of the whole graph."""
    return sum(n.op.params([graph[i].type for i in n.inputs]) for n in graph)


def macs(graph: Graph) -> int:
    """Multiply-accumulates of the whole graph (conv and linear layers), per sample."""
    return sum(_cost(graph, n, "macs") for n in graph)


def flops(graph: Graph) -> int:
    """All arithmetic of the whole graph, per sample (2 per MAC)."""
    return sum(_cost(graph, n, "flops") for n in graph)


def _cost(graph: Graph, node: Node, what: str) -> int:
    return getattr(node.op, what)([graph[i].type for i in node.inputs], node.type)
