"""Drop the nodes that compute nothing at inference: Identity and Dropout."""

from __future__ import annotations

from nasgraph.ir import Graph
from nasgraph.passes._rewrite import rebuild, resolve

INFERENCE_IDENTITIES = ("identity", "dropout")


def drop_identities(graph: Graph) -> Graph:
    """`graph` with every Identity and Dropout removed, their consumers reading their input.

    One is kept where removing it would make a consumer take the same tensor twice
    (`concat(x, identity(x))`), which a graph forbids.

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder(); x = b.input(3, 8, 8)
        >>> _ = b.output(b.relu(b.dropout(x)))
        >>> [n.kind for n in drop_identities(b.build())]
        ['input', 'activation', 'output']
    """
    rename: dict[str, str] = {}
    for node in graph:
        if node.kind not in INFERENCE_IDENTITIES:
            continue
        source = resolve(rename, node.inputs[0])
        trial = {**rename, node.id: source}
        if all(len(set(ins := [resolve(trial, i) for i in s.inputs])) == len(ins)
               for s in graph.successors(node.id)):
            rename = trial
    return rebuild(graph, rename) if rename else graph
