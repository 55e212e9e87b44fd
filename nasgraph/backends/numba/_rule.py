"""What every training rule shares (`_backward_ops.BACKWARD`, `_conv_rules`): the `Rule`
and `Run` types, the placeholder arrays kernels take where an argument is unused, and the
activations the fused conv and the activation rules both apply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from nasgraph.backends.numba import _backward_elementwise as elem_b
from nasgraph.backends.numba._activations import ACT_CODES
from nasgraph.ir import Node

Weights = dict[str, np.ndarray]
Grads = tuple[list[np.ndarray | None], Weights]

F32 = np.float32
NO_BIAS = np.zeros(1, F32)
NO_RES = np.zeros((1, 1, 1, 1), F32)
NO_GRAD = np.zeros((1, 1, 1, 1), F32)  # where the kernels skip the input gradient


@dataclass
class Run:
    """One forward and backward pass: the graph inputs' values, the mode, numba's thread
    count, the dropout seed, and where BatchNorm puts its updated running statistics
    (state-dict key -> new array)."""

    inputs: dict[str, np.ndarray]
    training: bool = True
    threads: int = 1
    seed: int = 0
    buffers: dict[str, np.ndarray] = field(default_factory=dict)


class Rule(NamedTuple):
    """How one op kind trains: its forward (keeping what the backward needs) and its
    backward."""

    forward: Callable[[Node, list[np.ndarray], Weights, Run], tuple[np.ndarray, Any]]
    backward: Callable[[Node, np.ndarray, Any, Weights, Run, list[bool]], Grads]


def shape4(node: Node) -> tuple[int, int, int]:
    """A node's per-sample output shape as stored here: C x H x W (flat: F x 1 x 1)."""
    t = node.type
    return t.channels, t.height, t.width


def empty(x: np.ndarray, node: Node) -> np.ndarray:
    """An uninitialized N x C x H x W output of `node` for input batch `x`."""
    return np.empty((x.shape[0], *shape4(node)), F32)


def activate(x: np.ndarray, out: np.ndarray, code: int) -> None:
    """out = the activation `code` (`ACT_CODES`) of x."""
    elem_b.activation_forward(x, out, code)


def activation_grad(x: np.ndarray, gy: np.ndarray, code: int) -> np.ndarray:
    """gy times the derivative of activation `code` at x, a new array."""
    gx = np.empty_like(x)
    if code == ACT_CODES["relu"]:
        elem_b.relu_backward(x, gy, gx)
    else:
        elem_b.activation_backward(x, gy, gx, code)
    return gx
