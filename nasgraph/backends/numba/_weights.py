"""A state dict checked against the weights a graph needs (its op specs' `weight_specs`).

A state dict is keyed as `lower(graph).state_dict()` keys it (DESIGN: the one currency).
Entries a spec marks optional (BN's `num_batches_tracked`, torch's count of training steps)
may be there or not: nothing here reads them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nasgraph.errors import GraphError
from nasgraph.ir import Graph, Node
from nasgraph.passes import StateDict


def weight_shapes(graph: Graph) -> dict[str, tuple[Node, tuple[int, ...]]]:
    """Every weight `graph` needs (`Graph.weight_specs`, optional ones left out): state
    dict key -> (the node it belongs to, its shape).

        >>> from nasgraph import zoo
        >>> shapes = weight_shapes(zoo.get("lenet5"))
        >>> shapes["c1.weight"][1], shapes["f7.bias"][1]
        ((6, 1, 5, 5), (10,))
    """
    return {key: (node, spec.shape) for key, (node, spec) in graph.weight_specs().items()
            if not spec.optional}


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _array(value: object) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def _where(key: str, node: Node) -> str:
    return f"weight {key!r} of node {node.id!r} ({node.kind}: {node.op.label()})"


def checked_state(graph: Graph, state_dict: Mapping[str, object]) -> StateDict:
    """`state_dict` as float32 numpy arrays, once every key matches a weight of `graph`
    (`weight_shapes`) in shape and has a floating-point dtype (float16 and float64 are
    cast; integers, booleans and complex numbers are not weights).

    Raises:
        GraphError: naming the node, its op, the key and both shapes, on one line, for the
            first weight (in graph order) missing or with another shape or dtype, or a key
            no weight of the graph has.
    """
    expected = weight_shapes(graph)
    state: StateDict = {}
    for key, (node, shape) in expected.items():
        if key not in state_dict:
            raise GraphError(f"{_where(key, node)} is missing from the state dict (expected "
                             f"{_fmt(shape)}); hint: keys as lower(graph).state_dict() has "
                             "them")
        value = _array(state_dict[key])
        if value.shape != shape:
            raise GraphError(f"{_where(key, node)} has shape {_fmt(value.shape)}, expected "
                             f"{_fmt(shape)}; hint: these weights are for another "
                             "architecture or input size")
        if value.dtype.kind != "f":
            raise GraphError(f"{_where(key, node)} has dtype {value.dtype} (shape "
                             f"{_fmt(value.shape)}), expected a floating-point dtype")
        state[key] = np.ascontiguousarray(value, dtype=np.float32)
    known = graph.weight_specs()  # optional entries included
    nodes = {n.param_key: n for n in graph}
    for key in state_dict:
        if key in known:
            continue
        prefix = key.rpartition(".")[0]
        node = nodes.get(prefix)
        if node is None:
            raise GraphError(f"state dict key {key!r} names no node of graph {graph.name!r} "
                             "(keys are '<node id with / as .>.<weight>'); hint: the weights "
                             "are for another graph")
        has = [k for k in expected if k.rpartition(".")[0] == prefix]
        raise GraphError(f"state dict key {key!r} is no weight of node {node.id!r} "
                         f"({node.kind}: {node.op.label()}), which has "
                         f"{', '.join(has) or 'none'}; hint: the weights are for another "
                         "architecture")
    return state
