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


class Terms(tuple):
    """The gradients that a node's consumers sent it, not yet summed: what the walker
    (`grad._backward`) hands the rules that take them, `activation_grad`'s callers, which
    sum them in their own pass. Summed left to right (`total`), as the walker sums them
    for every other rule."""

    def total(self) -> np.ndarray:
        out = self[0]
        for g in self[1:]:
            out = out + g
        return out


def activation_grad(x: np.ndarray, gy: np.ndarray | Terms, code: int) -> np.ndarray:
    """gy times the derivative of activation `code` at x, a new array. gy may come in
    `Terms`: for ReLU, the last two are summed in its mask's pass (`relu_backward_sum`:
    one pass over three arrays where the sum and the mask took two over five), the sum
    rounded as `Terms.total` rounds it."""
    gx = np.empty_like(x)
    if isinstance(gy, Terms) and code == ACT_CODES["relu"]:
        head = Terms(gy[:-1]).total()
        elem_b.relu_backward_sum(x, head, gy[-1], gx)
    elif code == ACT_CODES["relu"]:
        elem_b.relu_backward(x, gy, gx)
    else:
        gy = gy.total() if isinstance(gy, Terms) else gy
        elem_b.activation_backward(x, gy, gx, code)
    return gx
