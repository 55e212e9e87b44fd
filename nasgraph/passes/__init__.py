"""Compiler passes: pure rewrites of a Graph (and, for BN folding, its state dict).

`optimize` runs them in the order the Numba executor uses; `plan_memory` then places
every tensor in a reusable buffer.
"""

from __future__ import annotations

from collections.abc import Mapping

from nasgraph.ir import Graph
from nasgraph.passes.fold_batchnorm import StateDict, as_numpy, fold_batchnorm
from nasgraph.passes.fuse import FusedConv2d, fuse_epilogues
from nasgraph.passes.memory import MemoryPlan, plan_memory
from nasgraph.passes.simplify import drop_identities


def optimize(graph: Graph, state_dict: Mapping[str, object]) -> tuple[Graph, StateDict]:
    """Drop identities, fold BatchNorm into convs, fuse activations and residual adds."""
    graph = drop_identities(graph)
    graph, state = fold_batchnorm(graph, state_dict)
    return fuse_epilogues(graph), state


__all__ = ["FusedConv2d", "MemoryPlan", "StateDict", "as_numpy", "drop_identities",
           "fold_batchnorm", "fuse_epilogues", "optimize", "plan_memory"]
