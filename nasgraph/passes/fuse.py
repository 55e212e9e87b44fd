"""Fuse activations and residual adds into the epilogue of the convolution before them.

`act(conv(x) + r)` becomes one `FusedConv2d` node (`nasgraph.ir.ops`) with inputs (x, r):
the conv's result is added to r and activated while it is still in registers.
"""

from __future__ import annotations

from nasgraph.ir import Graph
from nasgraph.ir.ops import FusedConv2d
from nasgraph.passes._rewrite import rebuild, resolve, sole_consumer


def _fusable_add(graph: Graph, add_id: str, conv_id: str) -> str | None:
    """The residual input if `add_id` is a plain 2-input add of `conv_id` and another node."""
    add = graph[add_id]
    if add.kind != "add" or len(add.inputs) != 2 or any(w != 1.0 for w in add.op.weights or ()):
        return None
    (other,) = [i for i in add.inputs if i != conv_id]
    if add.inputs[1] == conv_id and graph[other].kind == "conv2d" \
            and sole_consumer(graph, other) == add_id:
        return None  # both are convs: the add fuses into its first input, the main path
    return other


def fuse_epilogues(graph: Graph) -> Graph:
    """Fuse `conv -> [add] -> [activation]` chains, each link the only use of the one before.

        >>> from nasgraph.ir import GraphBuilder
        >>> b = GraphBuilder(); x = b.input(4, 8, 8)
        >>> y = b.conv(x, 4, 3, padding=1)
        >>> _ = b.output(b.relu(b.add([b.conv(y, 4, 3, padding=1), x])))
        >>> [n.op.label() for n in fuse_epilogues(b.build())][2]
        'conv 3x3, 4+res+relu'
    """
    rename: dict[str, str] = {}
    replace = {}
    for node in graph:
        if node.kind != "conv2d":
            continue
        inputs, act, residual = node.inputs, None, False
        tail = node.id
        nxt = sole_consumer(graph, tail)
        if nxt is not None and nxt not in rename \
                and (other := _fusable_add(graph, nxt, tail)) is not None \
                and resolve(rename, other) not in {resolve(rename, i) for i in inputs}:
            inputs, residual = (*inputs, other), True
            rename[nxt] = node.id
            tail = nxt
            nxt = sole_consumer(graph, tail)
        if nxt is not None and graph[nxt].kind == "activation":
            act = graph[nxt].op.fn
            rename[nxt] = node.id
        if act is None and not residual:
            continue
        fused = FusedConv2d(**node.op.model_dump(), act=act, residual=residual)
        replace[node.id] = (fused, inputs)
    return rebuild(graph, rename, replace) if rename else graph
