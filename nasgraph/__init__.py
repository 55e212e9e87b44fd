"""nasgraph: neural architecture search and a graph compiler for convolutional networks.

    >>> import nasgraph
    >>> g = nasgraph.zoo.get("resnet18")
    >>> nasgraph.summarize(g).params
    11689512
"""

from nasgraph import zoo
from nasgraph.analysis import Summary, summarize
from nasgraph.errors import (
    BudgetError,
    GraphError,
    NasgraphError,
    RenderError,
    ShapeError,
    SpaceError,
)
from nasgraph.init import init_state
from nasgraph.ir import OPS, Graph, GraphBuilder, Node, Tensor, TensorType, load, ops, save

__version__ = "0.1.0"

__all__ = [
    "OPS", "BudgetError", "Graph", "GraphBuilder", "GraphError", "NasgraphError", "Node",
    "RenderError", "ShapeError", "SpaceError", "Summary", "Tensor", "TensorType", "init_state",
    "load", "ops", "render", "save", "summarize", "zoo",
]


def __getattr__(name: str) -> object:
    # `render` loads graphviz: imported on first use, so the IR never pulls it in.
    if name == "render":
        from nasgraph.drawing import render

        return render
    raise AttributeError(f"module 'nasgraph' has no attribute {name!r}")
