"""The inference pipeline: the compiler passes every backend runs, in one named order.

Each pass maps (graph, state dict) to (graph, state dict) and preserves the graph's outputs
in eval mode (tests/passes check them one by one). The numba executor runs the pipeline and
then plans memory (`plan_memory`); torch's `prepare(fold_bn=True)` runs the same pipeline and
lowers the fused convs it makes, so both backends fold and fuse exactly the same nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph
from nasgraph.passes._rewrite import rebuild, sole_consumer
from nasgraph.passes.fold_batchnorm import StateDict, as_numpy, fold_batchnorm
from nasgraph.passes.fuse import fuse_epilogues
from nasgraph.passes.simplify import drop_identities

Pass = Callable[[Graph, StateDict], tuple[Graph, StateDict]]


def merge_residual_biases(graph: Graph, state_dict: Mapping[str, object]
                          ) -> tuple[Graph, StateDict]:
    """Move the bias of a conv whose only reader is a fused conv's residual add into the
    fused conv's bias: act(a(x) + b_a + (d(y) + b_d)) == act(a(x) + d(y) + (b_a + b_d)).

    After BN folding a ResNet's downsample conv has a bias; this leaves it none, so no
    backend spends a pass over its output adding one (on CUDA the fused conv's epilogue
    adds the sum for free).
    """
    state = as_numpy(state_dict)
    replace = {}
    for node in graph:
        if node.kind != "fused_conv2d" or not node.op.residual:
            continue
        other = graph[node.inputs[1]]
        if (other.kind != "conv2d" or not other.op.bias
                or sole_consumer(graph, other.id) != node.id):
            continue
        moved = state.pop(f"{other.param_key}.bias")
        key = f"{node.param_key}.bias"
        state[key] = (state[key] + moved if node.op.bias else moved).astype(np.float32)
        replace[other.id] = (other.op.model_copy(update={"bias": False}), other.inputs)
        replace[node.id] = (node.op.model_copy(update={"bias": True}), node.inputs)
    return (rebuild(graph, {}, replace) if replace else graph), state


# name -> pass, in the order `optimize` runs them
INFERENCE: dict[str, Pass] = {
    "drop_identities": lambda graph, state: (drop_identities(graph), state),
    "fold_batchnorm": fold_batchnorm,
    "fuse_epilogues": lambda graph, state: (fuse_epilogues(graph), state),
    "merge_residual_biases": merge_residual_biases,
}


def optimize(graph: Graph, state_dict: Mapping[str, object],
             passes: Sequence[str] = tuple(INFERENCE)) -> tuple[Graph, StateDict]:
    """Run the named `passes` (default: all of `INFERENCE`, in its order) on `graph` and its
    weights; the state dict comes back as numpy arrays.

        >>> from nasgraph import zoo, init_state
        >>> g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
        >>> g2, state = optimize(g, init_state(g))
        >>> sorted({n.kind for n in g2} - {"input", "output"})  # conv2d: the downsamples
        ['conv2d', 'flatten', 'fused_conv2d', 'global_avgpool', 'linear', 'maxpool2d']
    """
    unknown = [p for p in passes if p not in INFERENCE]
    if unknown:
        raise NasgraphError(f"unknown pass {unknown[0]!r}; the passes: {', '.join(INFERENCE)}")
    state = as_numpy(state_dict)
    for name in passes:
        graph, state = INFERENCE[name](graph, state)
    return graph, state
