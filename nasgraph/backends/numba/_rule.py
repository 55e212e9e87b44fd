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


class Spread(NamedTuple):
    """The input gradient of a strided 1x1 conv (`_conv_rules._Subsampled`): nonzero only
    at the pixels the conv read, every sh-th row and sw-th column of an N x C x H x W
    map, and kept as those values alone (N x C x Ho x Wo). Where its input has other
    readers, the sum of their gradients adds it in its own pass (`Terms.total`,
    `activation_grad`) instead of the zeros around it being written and read back."""

    values: np.ndarray
    stride: tuple[int, int]
    shape: tuple[int, ...]  # the whole gradient's

    def dense(self) -> np.ndarray:
        """The whole gradient, zeros around the values."""
        out = np.zeros(self.shape, F32)
        self.add_into(out)
        return out

    def added_to(self, g: np.ndarray) -> np.ndarray:
        """g + this gradient, a new array: g's values, and at the pixels their sums with
        the values, rounded as `g + self.dense()` rounds them."""
        out = g.copy()
        self.add_into(out)
        return out

    def add_into(self, out: np.ndarray) -> None:
        sh, sw = self.stride
        out[:, :, ::sh, ::sw] += self.values


Gradient = np.ndarray | Spread


class Terms(tuple):
    """The gradients that a node's consumers sent it, not yet summed: what the walker
    (`grad._backward`) hands the rules that take them, `activation_grad`'s callers, which
    sum them in their own pass. Summed left to right (`total`), as the walker sums them
    for every other rule; a `Spread` term at its pixels alone."""

    def total(self) -> np.ndarray:
        out = dense(self[0])
        for g in self[1:]:
            out = g.added_to(out) if isinstance(g, Spread) else out + g
        return out


def dense(g: Gradient) -> np.ndarray:
    """A gradient as one array."""
    return g.dense() if isinstance(g, Spread) else g


def thread_total(parts: np.ndarray) -> np.ndarray:
    """The threads' partial sums (a kernel's `parts`, one row a thread) added up; one
    thread's row as it is."""
    return parts[0] if len(parts) == 1 else parts.sum(axis=0)


def activation_grad(x: np.ndarray, gy: Gradient | Terms, code: int) -> np.ndarray:
    """gy times the derivative of activation `code` at x, a new array. gy may come in
    `Terms`: for ReLU, the last two are summed in its mask's pass (`relu_backward_sum`:
    one pass over three arrays where the sum and the mask took two over five), the sum
    rounded as `Terms.total` rounds it; a `Spread` term at its pixels alone
    (`relu_backward_spread`), the last of two (a sum of two commutes, bit for bit)."""
    gx = np.empty_like(x)
    if isinstance(gy, Terms) and len(gy) == 2 and isinstance(gy[0], Spread):
        gy = Terms(gy[::-1])
    if isinstance(gy, Terms) and code == ACT_CODES["relu"]:
        head, last = Terms(gy[:-1]).total(), gy[-1]
        if isinstance(last, Spread):
            elem_b.relu_backward_spread(x, head, last.values, *last.stride, gx)
        else:
            elem_b.relu_backward_sum(x, head, last, gx)
    elif code == ACT_CODES["relu"]:
        elem_b.relu_backward(x, dense(gy), gx)
    else:
        gy = gy.total() if isinstance(gy, Terms) else dense(gy)
        elem_b.activation_backward(x, gy, gx, code)
    return gx


class Normalized(NamedTuple):
    """A BatchNorm's output not written: act(x * scale + shift) per channel (float32),
    which the op that alone reads it computes in its own pass: an add (`add_act_forward`;
    no activation), or a depthwise conv with the batch in the lanes, as it lays its input
    out (`_conv_rules.conv_forward`); `grad._plan` and `grad._deferred_for` say where.
    `mean`: the batch's (or the running) mean, float32, which that conv's backward
    centers x on for the BatchNorm's sums (`Summed`)."""

    x: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    act: int
    mean: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape


class Summed(NamedTuple):
    """The gradient of a BatchNorm's output (`Normalized`) from the depthwise conv that
    alone reads it, with the sums the BatchNorm's backward takes over it: per channel,
    of dy' and of dy' * (x - mean), dy' masked by the BatchNorm's activation
    (`_depthwise_lanes.masked_sums`), float64, 2 x C. The BatchNorm's backward then makes
    one pass, not two (`_batchnorm.batchnorm_backward`)."""

    g: np.ndarray
    sums: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.g.shape
