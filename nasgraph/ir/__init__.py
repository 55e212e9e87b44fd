"""The core IR: tensor types, op specs, graphs and the builder.

Imports pydantic, networkx and numpy only; everything else in nasgraph stands on it.
"""

from nasgraph.ir import ops
from nasgraph.ir.builder import GraphBuilder, Tensor
from nasgraph.ir.graph import SCHEMA_VERSION, Graph, Node, load, save
from nasgraph.ir.ops import OPS, Op, WeightSpec, register_op
from nasgraph.ir.types import TensorType
from nasgraph.ir.walk import walk

__all__ = ["OPS", "SCHEMA_VERSION", "Graph", "GraphBuilder", "Node", "Op", "Tensor",
           "TensorType", "WeightSpec", "load", "ops", "register_op", "save", "walk"]
