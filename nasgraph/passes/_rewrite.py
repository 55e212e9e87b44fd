"""The one rewrite primitive the passes share: rebuild a graph with nodes replaced or removed."""

from __future__ import annotations

from nasgraph.ir import Graph
from nasgraph.ir.ops import Op


def resolve(rename: dict[str, str], node_id: str) -> str:
    """Follow `rename` (removed node -> the node standing in for it) to its end."""
    while node_id in rename:
        node_id = rename[node_id]
    return node_id


def rebuild(graph: Graph, rename: dict[str, str],
            replace: dict[str, tuple[Op, tuple[str, ...]]] | None = None) -> Graph:
    """`graph` without the nodes in `rename` (their consumers read the stand-in instead) and
    with the (op, inputs) of the nodes in `replace` swapped in."""
    replace = replace or {}
    defs = []
    for node in graph:
        if node.id in rename:
            continue
        op, inputs = replace.get(node.id, (node.op, node.inputs))
        defs.append((node.id, op, [resolve(rename, i) for i in inputs]))
    return Graph(defs, name=graph.name)


def sole_consumer(graph: Graph, node_id: str) -> str | None:
    """The only node consuming `node_id`'s output, or None (several, none, or an output)."""
    succ = graph.successors(node_id)
    return succ[0].id if len(succ) == 1 and succ[0].kind != "output" else None
