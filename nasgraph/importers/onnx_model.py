"""from_onnx: an ONNX CNN (a file) -> a nasgraph Graph and its state dict.

Initializers and Constant nodes are constants; each other ONNX node is mapped to IR ops by
one table, `_onnx_ops.CONVERTERS` (`ON_VIEWS` for a node reading a view that the IR has no
value for: ShuffleNet's 5-D channel shuffle, ConvNeXt's channels-last layers). The ONNX
shape inference's shapes, where it finds them, are compared with the imported ones, so a
mistranslated node fails at that node; a node
without an IR counterpart is refused in one line naming the op type, the node and what is
supported. Only the `onnx` package is used (no onnxruntime).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from nasgraph.errors import GraphError
from nasgraph.importers._common import ImportBuilder, node_id, op_from
from nasgraph.importers._onnx_ops import BATCH, CONVERTERS, ON_VIEWS, PASS_THROUGH
from nasgraph.importers._onnx_views import VIEWS, describe, viewed
from nasgraph.ir import Graph, Tensor, ops


def _module_path(name: str, op_type: str) -> tuple[str, str] | None:
    """(module path, last part) of a node name written by torch's exporter, which repeats
    each scope's parent (`/layer1/layer1.0/conv1/Conv` -> (`layer1.0.conv1`, `Conv`));
    None for other names."""
    parts = [p for p in name.split("/") if p]
    if len(parts) < 2 or not parts[-1].startswith(op_type):
        return None
    path: list[str] = []
    previous = ""
    for scope in parts[:-1]:
        path.append(scope.removeprefix(previous + ".") if previous else scope)
        previous = scope
    return ".".join(path), parts[-1]


class OnnxWalk:
    """One pass over an ONNX graph: the value of every ONNX tensor name (an IR Tensor or a
    numpy constant) and the builder. While a node is converted, `node` is it and `attrs`
    its attributes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.build = ImportBuilder(graph.name or "onnx")
        self.opsets = {o.domain: o.version for o in model.opset_import}
        self.batches: set[int] = {BATCH}  # what a shape's batch entry may read: BATCH or fixed
        self.values: dict[str, object] = {"": None}  # "" is ONNX's omitted optional input
        self.shapes = _inferred_shapes(model)
        self.nodes = list(graph.node)  # one list: nodes are compared by identity
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.done: set[int] = set()  # nodes converted with an earlier one (fused patterns)
        self.aliases: list[tuple[str, str]] = []  # (output of a fused node, the value it takes)
        self.node: onnx.NodeProto | None = None
        self.attrs: dict[str, object] = {}
        for init in graph.initializer:
            self.values[init.name] = numpy_helper.to_array(init)
        for node in self.nodes:  # known ahead: patterns read constants placed after them
            if node.op_type == "Constant" and len(node.output) == 1:
                with contextlib.suppress(GraphError):  # refused when the walk reaches it
                    self.values[node.output[0]] = _constant(
                        {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})

    # ------------------------------------------------------------------ context of a node

    @property
    def where(self) -> str:
        return f"ONNX {self.node.op_type} node {self.node.name or self.node.output[0]!r}"

    def refuse(self, reason: str) -> GraphError:
        """The one-line error for a node the IR cannot express."""
        return GraphError(f"cannot import {self.where}: {reason}; supported ONNX ops: "
                          f"{', '.join(sorted({*CONVERTERS, *PASS_THROUGH, 'Constant'}))}")

    def node_id(self, weighted: bool = False) -> str:
        """The current node's IR id: its module path when it holds weights, else the path
        and the op type."""
        found = _module_path(self.node.name, self.node.op_type)
        if found is None:
            return node_id(self.node.name, self.node.op_type.lower())
        path, last = node_id(found[0]), node_id(found[1].lower())
        # a module of its own (`relu` running Relu) is named by its path alone
        if weighted or path.rsplit("/", 1)[-1].rstrip("_0123456789") == last.rstrip("_0123456789"):
            return path
        return f"{path}/{last}"

    # ------------------------------------------------------------------ inputs

    def input(self, index: int) -> object:
        """The value of input `index` (None when omitted)."""
        names = self.node.input
        if index >= len(names):
            return None
        if names[index] not in self.values:
            raise self.refuse(f"input {names[index]!r} has no value (an output that the "
                              "import does not produce, such as a mask or indices)")
        return self.values[names[index]]

    def tensor(self, index: int = 0) -> Tensor:
        """Input `index`, which must be an imported tensor, not a constant."""
        value = self.input(index)
        if isinstance(value, VIEWS):
            raise self.refuse(f"input {index} is {describe(value)}, which the IR has no "
                              "value for")
        if not isinstance(value, Tensor):
            raise self.refuse(f"input {index} is a constant, not a tensor computed from the "
                              "graph input")
        return value

    def constant(self, index: int) -> np.ndarray | None:
        """Input `index` as a numpy constant (a weight), or None when omitted."""
        value = self.input(index)
        if value is not None and not isinstance(value, np.ndarray):
            raise self.refuse(f"input {index} must be an initializer or a constant")
        return value

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading tensor `name`, or None when there are several or none (or it
        is a graph output)."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def foldable(self, index: int) -> bool:
        """Whether input `index` is a tensor that this node alone reads: the layer that
        made it may then take a constant into its weights."""
        value = self.values.get(self.node.input[index])
        return isinstance(value, Tensor) and self.sole_reader(value)

    def sole_reader(self, x: Tensor) -> bool:
        """Whether this node reads `x` once and no other node reads it: every ONNX tensor
        holding x (or a view of it) is read only by nodes whose outputs hold it too
        (Identity, Transpose, a fused Add) and by this node, and none is a graph output."""
        names = {n for n, v in self.values.items()
                 if (held := viewed(v)) is not None and held.id == x.id}
        reads = 0
        for name in names:
            if name in self.outputs:
                return False
            for user in self.consumers.get(name, []):
                if user is self.node:
                    reads += 1
                elif not set(user.output) <= names:
                    return False
        return reads == 1

    # ------------------------------------------------------------------ emitting

    def spec(self, cls: type[ops.Op], **attrs: object) -> ops.Op:
        return op_from(cls, f"cannot import {self.where}", **attrs)

    def emit(self, op: ops.Op, inputs: Sequence[Tensor], weights: dict | None = None,
             wanted_id: str | None = None) -> Tensor:
        weighted = bool(weights)
        return self.build.add(op, list(inputs), wanted_id or self.node_id(weighted),
                              f"cannot import {self.where}", weights)

    # ------------------------------------------------------------------ the walk

    def run(self, graph: onnx.GraphProto) -> None:
        """Convert the inputs, every node in order, and the outputs."""
        for inp in graph.input:
            if inp.name not in self.values:
                self.values[inp.name] = self.build.input(_sample_shape(inp), node_id(inp.name))
                self.batches = {BATCH, _dims(inp)[0] or BATCH}
        for k, node in enumerate(self.nodes):
            if k in self.done:
                continue
            self.node = node
            self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            results = self._convert(node)
            if isinstance(results, Tensor | VIEWS) or not isinstance(results, tuple):
                results = (results,)  # (a Tensor or a view is a named tuple: one result)
            for name, value in zip(node.output, results, strict=False):
                self.values[name] = value
                self._check_shape(name, value)
            for name, source in self.aliases:
                self.values[name] = self.values[source]
            self.aliases.clear()
        for k, out in enumerate(graph.output):
            value = self.values[out.name]
            if not isinstance(value, Tensor):
                raise GraphError(f"graph output {out.name!r} is not computed from the input")
            self.build.add(ops.Output(), [value], node_id(out.name, "output"), f"output {k}")

    def _convert(self, node: onnx.NodeProto) -> object:
        if node.op_type == "Constant":
            return _constant(self.attrs)
        if node.op_type in PASS_THROUGH:
            return self.input(0)
        if node.op_type == "Shape":
            # the batch is unknown: BATCH stands for it, and only Reshape and Resize read it
            return np.array([BATCH, *self.tensor(0).type.shape], dtype=np.int64)[
                slice(self.attrs.get("start"), self.attrs.get("end"))]
        inputs = [self.input(k) for k in range(len(node.input))]
        if all(v is None or isinstance(v, np.ndarray) for v in inputs):
            return self._fold(node, inputs)
        views = [k for k, v in enumerate(inputs) if isinstance(v, VIEWS)]
        if views:
            if views != [0] or node.op_type not in ON_VIEWS:
                raise self.refuse(f"input {views[0]} is {describe(inputs[views[0]])}: only "
                                  f"{', '.join(sorted(ON_VIEWS))} read such a view as their "
                                  "first input (a channel shuffle, ConvNeXt's channels-last "
                                  "layers)")
            return ON_VIEWS[node.op_type](self)
        if node.op_type not in CONVERTERS:
            raise self.refuse("no nasgraph op computes it")
        return CONVERTERS[node.op_type](self)

    def _fold(self, node: onnx.NodeProto, inputs: list[np.ndarray | None]) -> tuple:
        """A node on constants only (shape arithmetic, a padding amount): evaluated now by
        onnx's reference implementation."""
        from onnx.reference import ReferenceEvaluator

        try:
            evaluator = ReferenceEvaluator(node, opsets=self.opsets)
            feeds = {n: v for n, v in zip(node.input, inputs, strict=True) if n}
            return tuple(evaluator.run(None, feeds))
        except Exception as e:  # the reference implementation's own error
            raise self.refuse(f"cannot evaluate it on constants ({str(e)[:100]})") from None

    def skip(self, node: onnx.NodeProto) -> None:
        """Mark `node` as converted already (the second half of a fused pattern)."""
        self.done.add(next(k for k, n in enumerate(self.nodes) if n is node))

    def alias(self, name: str, source: str) -> None:
        """Tensor `name` (a skipped node's output) takes the value of `source`, an output
        of the current node, once that is converted."""
        self.aliases.append((name, source))

    def _check_shape(self, name: str, value: object) -> None:
        shape = self.shapes.get(name)
        if isinstance(value, Tensor) and shape is not None and shape != value.type.shape:
            raise self.refuse(f"imported as {value.type} but ONNX shape inference gives "
                              f"{'x'.join(map(str, shape))}")


def _constant(attrs: dict) -> np.ndarray:
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key in ("value_float", "value_int"):
        if key in attrs:
            return np.array(attrs[key])
    for key in ("value_floats", "value_ints"):
        if key in attrs:
            return np.array(list(attrs[key]))
    raise GraphError(f"Constant node with attributes {sorted(attrs)}: not a numeric constant")


def _dims(info: onnx.ValueInfoProto) -> list[int | None]:
    dims = info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _sample_shape(info: onnx.ValueInfoProto) -> tuple[int, ...]:
    """A graph input's shape without the batch dimension; every other one must be fixed."""
    dims = _dims(info)
    if len(dims) < 2 or any(d is None for d in dims[1:]):
        raise GraphError(f"ONNX input {info.name!r} has shape {dims}: nasgraph needs fixed "
                         "C x H x W (or F) after the batch dimension")
    if info.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise GraphError(f"ONNX input {info.name!r} is not float32")
    return tuple(dims[1:])


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes that ONNX shape inference fixes completely (batch left out)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a check only; a model it cannot read still imports
        return {}
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = _dims(info)
        if len(dims) >= 2 and all(d is not None for d in dims[1:]):
            shapes[info.name] = tuple(dims[1:])
    return shapes


def from_onnx(path: str | Path) -> tuple[Graph, dict[str, np.ndarray]]:
    """A nasgraph Graph computing the ONNX model at `path`, and its weights.

    The model takes one N x C x H x W (or N x F) float32 input whose dimensions after the
    batch are fixed. Node ids come from the ONNX node names; torch's exporter's names
    become module paths (`/layer1/layer1.0/conv1/Conv` -> `layer1/0/conv1`).

    Returns:
        (graph, state): state maps `lower(graph).state_dict()`'s keys to numpy arrays,
        for `lower(graph).load_state_dict` and `nasgraph.backends.numba.compile`.

    Raises:
        GraphError: the file cannot be read, or one line naming the ONNX node the IR
            cannot express.
    """
    try:
        model = onnx.load(str(path))
    except Exception as e:  # OSError, protobuf's DecodeError, onnx's own errors
        raise GraphError(f"{path}: cannot read as ONNX ({str(e).splitlines()[0][:200]})") \
            from None
    walk = OnnxWalk(model)
    walk.run(model.graph)
    return walk.build.finish()
