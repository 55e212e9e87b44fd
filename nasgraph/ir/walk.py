"""`walk`: the one traversal that turns a graph into something else, node by node.

The torch lowering (fx nodes), the export code generator (via that lowering) and the numba
executor (bound kernels) are each a table keyed by op kind, evaluated over the graph in
topological order. `walk` holds what they share: the order, the inputs of each node, and
the ops that compute nothing. An op that is a view of its input (`Op.is_alias`: identity,
output, and dropout or flatten where a table has no entry for them) takes its input's
value unchanged, so no table restates which ops are views.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from nasgraph.errors import GraphError
from nasgraph.ir.graph import Graph, Node

T = TypeVar("T")
# kind -> the value of a node, given the node and the values of its inputs
Table = Mapping[str, Callable[[Node, list[T]], T]]


def walk(graph: Graph, table: Table[T], *, name: str = "table") -> dict[str, T]:
    """The value of every node: `table[node.kind](node, xs)`, `xs` the values of its inputs.

    Nodes are visited in topological order, so `table` may build its output as it goes
    (emit code, bind kernels). An alias op missing from `table` takes the value of its
    first input. Any other op missing from `table` raises a GraphError naming the node, its
    op and `name` (the table's name in the message).

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder(); x = b.input(3, 4, 4)
        >>> _ = b.output(b.relu(b.conv(x, 8, 3, padding=1)))
        >>> shapes = walk(b.build(), {"input": lambda n, xs: "x",
        ...                           "conv2d": lambda n, xs: f"conv({xs[0]})",
        ...                           "activation": lambda n, xs: f"{n.op.fn}({xs[0]})"})
        >>> shapes["output"]
        'relu(conv(x))'
    """
    values: dict[str, T] = {}
    for node in graph:
        xs = [values[i] for i in node.inputs]
        emit = table.get(node.kind)
        if emit is not None:
            values[node.id] = emit(node, xs)
        elif node.op.is_alias:
            values[node.id] = xs[0]
        else:
            raise GraphError(f"node {node.id!r} ({node.kind}): no entry for op "
                             f"{node.kind!r} in {name}")
    return values


def outputs(graph: Graph, values: Mapping[str, T]) -> list[T]:
    """The values of the graph's outputs, in the order of `graph.outputs`."""
    return [values[n.id] for n in graph.outputs]
