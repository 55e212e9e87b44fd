"""What both frontends share: node ids made from foreign names, and `ImportBuilder`, a
GraphBuilder that also collects the state dict and turns every refusal into one line.

A frontend walks its source graph once and calls `ImportBuilder.add` per op; the builder
checks each op's type rule as it goes (so a mistranslated shape fails at the op that made
it, never in a returned graph) and each weight's shape against `Op.weight_specs`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import ValidationError

from nasgraph.errors import GraphError, ShapeError
from nasgraph.ir import Graph, GraphBuilder, Tensor, ops

_NOT_IN_ID = re.compile(r"[^A-Za-z0-9_/]")


def node_id(name: str, fallback: str = "node") -> str:
    """A valid IR id from a foreign name: `layer2.0.conv1` -> `layer2/0/conv1`.

    Dots and slashes separate scopes; any other character that the IR refuses becomes
    '_'; empty scopes are dropped.
    """
    text = _NOT_IN_ID.sub("_", name.replace(".", "/").replace(":", "/"))
    parts = [p for p in text.split("/") if p]
    return "/".join(parts) or fallback


def op_from(cls: type[ops.Op], where: str, **attrs: object) -> ops.Op:
    """`cls(**attrs)`, with a pydantic refusal as a one-line GraphError naming `where`."""
    try:
        return cls(**attrs)
    except ValidationError as e:
        raise GraphError(f"{where}: cannot express it as {cls.kind}: "
                         f"{ops.attribute_error(cls, attrs, e)}") from None


class ImportBuilder:
    """Builds the imported graph and its state dict (numpy arrays keyed like
    `lower(graph).state_dict()`), with ids made unique by numbering."""

    def __init__(self, name: str) -> None:
        self.builder = GraphBuilder(node_id(name, "imported"))
        self.state: dict[str, np.ndarray] = {}
        self.ops: dict[str, ops.Op] = {}

    def unique(self, wanted: str) -> str:
        """`wanted`, or `wanted_1`, `wanted_2`, ... when the id is taken."""
        candidate, k = wanted, 1
        while candidate in self.ops:
            candidate, k = f"{wanted}_{k}", k + 1
        return candidate

    def add(self, op: ops.Op, inputs: Sequence[Tensor], wanted_id: str, where: str,
            weights: Mapping[str, np.ndarray] | None = None) -> Tensor:
        """Append `op` on `inputs` as node `wanted_id` (numbered when taken), with `weights`
        (suffix -> array) for its state dict; `where` names the source op in errors."""
        nid = self.unique(wanted_id)
        try:
            out = self.builder.node(op, inputs, name=nid)
        except ShapeError as e:
            raise GraphError(f"{where}: {e}") from None
        self.ops[nid] = op
        specs = op.weight_specs([t.type for t in inputs])
        for suffix, array in (weights or {}).items():
            spec = specs.get(suffix)
            key = f"{nid.replace('/', '.')}.{suffix}"
            if spec is None or tuple(array.shape) != spec.shape:
                want = "no such weight" if spec is None else f"shape {spec.shape}"
                raise GraphError(f"{where}: weight {suffix!r} has shape {tuple(array.shape)}, "
                                 f"{op.kind} needs {want}")
            self.state[key] = np.array(array, dtype=spec.dtype, order="C")  # owned, writable
        return out

    def input(self, shape: Sequence[int], wanted_id: str = "input") -> Tensor:
        """A graph input of one sample's shape: (C, H, W), or (F,) for a feature vector."""
        if len(shape) == 3:
            op = ops.Input(channels=shape[0], height=shape[1], width=shape[2])
        elif len(shape) == 1:
            op = ops.Input(channels=shape[0], flat=True)
        else:
            raise GraphError(f"input of shape N x {' x '.join(map(str, shape))}: nasgraph "
                             "graphs take N x C x H x W images or N x F feature vectors")
        return self.add(op, [], wanted_id, "input")

    def scale(self, x: Tensor, factor: float, wanted_id: str, where: str) -> Tensor:
        """`x * factor`: the IR has no scalar multiply, so it is a weighted Add of `x` and
        an Identity of it with weights (factor, 0)."""
        twin = self.add(ops.Identity(), [x], wanted_id + "_twin", where)
        return self.add(ops.Add(weights=(float(factor), 0.0)), [x, twin], wanted_id, where)

    def add_to_bias(self, x: Tensor, constant: float) -> bool:
        """Fold `+ constant` into the bias of the conv or linear layer that made `x`;
        False when `x` is not made by one with a bias (the caller then refuses)."""
        op = self.ops.get(x.id)
        if not isinstance(op, ops.Conv2d | ops.Linear) or not op.bias:
            return False
        key = x.id.replace("/", ".") + ".bias"
        self.state[key] = self.state[key] + np.float32(constant)
        return True

    def scale_channels(self, x: Tensor, scale: np.ndarray) -> bool:
        """Fold `x * scale` (one factor per channel: ConvNeXt's layer scale) into the weights
        and bias of the conv that made `x`; False when a conv did not make it."""
        op = self.ops.get(x.id)
        if not isinstance(op, ops.Conv2d) or scale.shape != (x.channels,):
            return False
        key = x.id.replace("/", ".")
        self.state[key + ".weight"] = self.state[key + ".weight"] * scale[:, None, None, None]
        if op.bias:
            self.state[key + ".bias"] = self.state[key + ".bias"] * scale
        return True

    def finish(self, num_batches_tracked: Mapping[str, int] | None = None
               ) -> tuple[Graph, dict[str, np.ndarray]]:
        """The graph and its state dict, checked to hold exactly the graph's weights.

        BN's optional `num_batches_tracked` comes from `num_batches_tracked` (node param key
        -> count) or is 0.
        """
        graph = self.builder.build()
        counts = num_batches_tracked or {}
        state: dict[str, np.ndarray] = {}
        for key, (node, spec) in graph.weight_specs().items():
            if key in self.state:
                state[key] = self.state[key]
            elif spec.optional:
                state[key] = np.array(counts.get(node.param_key, 0), dtype=spec.dtype)
            else:
                raise GraphError(f"node {node.id!r} ({node.kind}): no value for weight "
                                 f"{key!r} in the source model")
        return graph, state
