"""What an ONNX converter sees of the walk over an ONNX graph (`onnx_model.OnnxWalk`),
described as a protocol so that the converter tables (`_onnx_ops`, `_onnx_views`) need not
import the module that imports them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import onnx

from nasgraph.errors import GraphError
from nasgraph.importers._common import ImportBuilder
from nasgraph.ir import Tensor, ops


class OnnxWalk(Protocol):
    """What a converter uses of `onnx_model.OnnxWalk`."""

    build: ImportBuilder
    node: onnx.NodeProto
    attrs: dict[str, object]
    batches: set[int]
    values: dict[str, object]
    where: str

    def refuse(self, reason: str) -> GraphError: ...
    def node_id(self, weighted: bool = False) -> str: ...
    def input(self, index: int) -> object: ...
    def tensor(self, index: int = 0) -> Tensor: ...
    def constant(self, index: int) -> np.ndarray | None: ...
    def only_consumer(self, name: str) -> onnx.NodeProto | None: ...
    def foldable(self, index: int) -> bool: ...
    def sole_reader(self, x: Tensor) -> bool: ...
    def spec(self, cls: type[ops.Op], **attrs: object) -> ops.Op: ...
    def emit(self, op: ops.Op, inputs: Sequence[Tensor], weights: dict | None = None,
             wanted_id: str | None = None) -> Tensor: ...
    def skip(self, node: onnx.NodeProto) -> None: ...
    def alias(self, name: str, source: str) -> None: ...


Converter = Callable[[OnnxWalk], object]
