"""GraphBuilder: write a network as code, with types checked at every call.

    >>> from nasgraph.ir import GraphBuilder
    >>> b = GraphBuilder("tiny")
    >>> x = b.input(3, 32, 32)
    >>> with b.scope("stem"):
    ...     x = b.conv(x, 16, 3, padding=1, bias=False)
    ...     x = b.bn(x)
    ...     x = b.act(x, "relu")
    >>> x.id, str(x.type)
    ('stem/relu', '16x32x32')
    >>> b.output(b.linear(b.flatten(b.gap(x)), 10)).id
    'output'
    >>> len(b.build())
    8

A mistake raises at the line that made it, naming the node, the op and the shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from pydantic import ValidationError

from nasgraph.errors import GraphError, ShapeError
from nasgraph.ir import ops
from nasgraph.ir.graph import _ID, Graph, NodeDef, _checked_name
from nasgraph.ir.types import TensorType

# The default name of a node, by op kind, before numbering makes it unique.
_SHORT = {"conv2d": "conv", "batchnorm2d": "bn", "maxpool2d": "maxpool",
          "avgpool2d": "avgpool", "global_avgpool": "gap",
          "adaptive_avgpool2d": "avgpool", "channel_pad": "pad"}


def _default_name(kind: str, attrs: dict) -> str:
    if kind == "activation":
        return str(attrs.get("fn", "relu"))
    return _SHORT.get(kind, kind)


class Tensor(NamedTuple):
    """A handle on a node's output while building: its id and inferred type."""

    id: str
    type: TensorType

    @property
    def channels(self) -> int:
        return self.type.channels

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape


class GraphBuilder:
    """Builds a Graph one op at a time, inferring each output type as it goes."""

    def __init__(self, name: str = "graph") -> None:
        self.name = _checked_name(name)
        self._defs: list[NodeDef] = []
        self._types: dict[str, TensorType] = {}
        self._scopes: list[str] = []

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Name a block: nodes made inside get ids `name/...`; scopes nest."""
        if not _ID.fullmatch(name):
            raise GraphError(f"scope {name!r} is not of the form 'name/name/...'")
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    @property
    def prefix(self) -> str:
        return "/".join(self._scopes)

    def _unique_id(self, name: str | None, base: str) -> str:
        prefix = self.prefix + "/" if self._scopes else ""
        if name is not None:
            node_id = prefix + name
            if node_id in self._types:
                raise GraphError(f"node {node_id!r} already exists; hint: give another name")
            return node_id
        base = prefix + base
        node_id, k = base, 1
        while node_id in self._types:
            node_id, k = f"{base}_{k}", k + 1
        return node_id

    def node(self, op: ops.Op, inputs: Sequence[Tensor], name: str | None = None) -> Tensor:
        """Append any op applied to `inputs`; returns the handle of its output."""
        node_id = self._unique_id(name, _default_name(op.kind, op.__dict__))
        if not _ID.fullmatch(node_id):
            raise GraphError(f"node id {node_id!r} is not of the form 'name/name/...' with "
                             "letters, digits and '_'")
        for t in inputs:
            if not isinstance(t, Tensor) or self._types.get(t.id) != t.type:
                raise GraphError(f"node {node_id!r} ({op.kind}): input {t!r} was not made by "
                                 f"this builder")
        low, high = op.arity
        if len(inputs) < low or (high is not None and len(inputs) > high):
            raise GraphError(f"node {node_id!r} ({op.kind}) takes {low}"
                             f"{'' if low == high else ' or more'} inputs, got {len(inputs)}")
        try:
            out = op.infer([t.type for t in inputs])
        except ShapeError as e:
            shapes = ", ".join(f"{t.type} (from {t.id!r})" for t in inputs)
            raise ShapeError(f"node {node_id!r} ({op.kind}): {e}; inputs: {shapes}") from None
        self._defs.append((node_id, op, [t.id for t in inputs]))
        self._types[node_id] = out
        return Tensor(node_id, out)

    def _make(self, cls: type[ops.Op], inputs: Sequence[Tensor], name: str | None,
              **attrs: object) -> Tensor:
        try:
            op = cls(**attrs)
        except ValidationError as e:
            node_id = self._unique_id(name, _default_name(cls.kind, attrs))
            where = ", ".join(f"{t.type}" for t in inputs) or "no inputs"
            raise GraphError(f"node {node_id!r} ({cls.kind}): "
                             f"{ops.attribute_error(cls, attrs, e)}; inputs: {where}") from None
        return self.node(op, inputs, name)

    def build(self) -> Graph:
        """The finished graph; the builder may go on to build more."""
        return Graph(self._defs, name=self.name)

    # ------------------------------------------------------------------ one method per op

    def input(self, channels: int, height: int, width: int, name: str = "input") -> Tensor:
        return self._make(ops.Input, [], name, channels=channels, height=height, width=width)

    def output(self, x: Tensor, name: str | None = None) -> Tensor:
        return self._make(ops.Output, [x], name or "output")

    def conv(self, x: Tensor, out_channels: int, kernel: int | tuple[int, int] = 3,
             stride: int | tuple[int, int] = 1,
             padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
             groups: int = 1, bias: bool = True, name: str | None = None) -> Tensor:
        return self._make(ops.Conv2d, [x], name, out_channels=out_channels, kernel=kernel,
                          stride=stride, padding=padding, dilation=dilation, groups=groups,
                          bias=bias)

    def bn(self, x: Tensor, eps: float = 1e-5, momentum: float = 0.1,
           name: str | None = None) -> Tensor:
        return self._make(ops.BatchNorm2d, [x], name, eps=eps, momentum=momentum)

    def act(self, x: Tensor, fn: str = "relu", name: str | None = None) -> Tensor:
        return self._make(ops.Activation, [x], name, fn=fn)

    def relu(self, x: Tensor, name: str | None = None) -> Tensor:
        return self.act(x, "relu", name)

    def maxpool(self, x: Tensor, kernel: int | tuple[int, int] = 2,
                stride: int | tuple[int, int] | None = None,
                padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
                name: str | None = None) -> Tensor:
        return self._make(ops.MaxPool2d, [x], name, kernel=kernel, stride=stride,
                          padding=padding, ceil_mode=ceil_mode)

    def avgpool(self, x: Tensor, kernel: int | tuple[int, int] = 2,
                stride: int | tuple[int, int] | None = None,
                padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
                count_include_pad: bool = True, name: str | None = None) -> Tensor:
        return self._make(ops.AvgPool2d, [x], name, kernel=kernel, stride=stride,
                          padding=padding, ceil_mode=ceil_mode,
                          count_include_pad=count_include_pad)

    def adaptive_avgpool(self, x: Tensor, size: int | tuple[int, int],
                         name: str | None = None) -> Tensor:
        return self._make(ops.AdaptiveAvgPool2d, [x], name, size=size)

    def gap(self, x: Tensor, name: str | None = None) -> Tensor:
        return self._make(ops.GlobalAvgPool, [x], name)

    def concat(self, xs: Sequence[Tensor], name: str | None = None) -> Tensor:
        return self._make(ops.Concat, list(xs), name)

    def add(self, xs: Sequence[Tensor], weights: Sequence[float] | None = None,
            name: str | None = None) -> Tensor:
        """Elementwise sum of `xs`, weighted by `weights` when given."""
        return self._make(ops.Add, list(xs), name,
                          weights=tuple(weights) if weights is not None else None)

    def mul(self, x: Tensor, y: Tensor, name: str | None = None) -> Tensor:
        return self._make(ops.Mul, [x, y], name)

    def flatten(self, x: Tensor, name: str | None = None) -> Tensor:
        return self._make(ops.Flatten, [x], name)

    def linear(self, x: Tensor, out_features: int, bias: bool = True,
               name: str | None = None) -> Tensor:
        return self._make(ops.Linear, [x], name, out_features=out_features, bias=bias)

    def dropout(self, x: Tensor, p: float = 0.5, name: str | None = None) -> Tensor:
        return self._make(ops.Dropout, [x], name, p=p)

    def identity(self, x: Tensor, name: str | None = None) -> Tensor:
        return self._make(ops.Identity, [x], name)

    def upsample(self, x: Tensor, scale: float | None = None,
                 size: int | tuple[int, int] | None = None, mode: str = "nearest",
                 align_corners: bool = False, name: str | None = None) -> Tensor:
        return self._make(ops.Upsample, [x], name, scale=scale, size=size, mode=mode,
                          align_corners=align_corners)

    def channel_pad(self, x: Tensor, after: int, before: int = 0,
                    name: str | None = None) -> Tensor:
        return self._make(ops.ChannelPad, [x], name, before=before, after=after)
