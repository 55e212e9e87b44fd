"""Compiler passes: pure rewrites of a Graph (and, where weights change, its state dict).

`optimize` runs the inference pipeline (`pipeline.INFERENCE`: drop identities, fold
BatchNorm, fuse epilogues, merge residual biases) that both backends use; `plan_memory`
then places every tensor in a reusable buffer.
"""

from __future__ import annotations

from nasgraph.passes.fold_batchnorm import StateDict, as_numpy, fold_batchnorm
from nasgraph.passes.fuse import FusedConv2d, fuse_epilogues
from nasgraph.passes.memory import MemoryPlan, plan_memory
from nasgraph.passes.pipeline import INFERENCE, merge_residual_biases, optimize
from nasgraph.passes.simplify import drop_identities

__all__ = ["INFERENCE", "FusedConv2d", "MemoryPlan", "StateDict", "as_numpy",
           "drop_identities", "fold_batchnorm", "fuse_epilogues", "merge_residual_biases",
           "optimize", "plan_memory"]
