"""SGD (Nesterov momentum) and AdamW, step for step as torch.optim computes them.

The trainable weights live in one flat float32 vector (`FlatParams`), the state dict's
entries being views of it: an optimizer step is then one pass of a numba loop over whole
vectors, whatever the number of layers, rather than a dozen operations per weight tensor.
Each weight's update is the same float32 arithmetic, in the same order, as torch's
(and as the dozen numpy whole-vector operations this module first ran, which read and
wrote the vectors once each: for the digits candidate's 20k weights 2.4x the time for
AdamW, 3.3x for SGD). As
`nasgraph.train.make_optimizer` groups them, weights of two or more dimensions (conv
and linear kernels) are decayed and the rest (biases, BatchNorm's scale and shift) are not;
the decayed weights come first in the vector, so a group is a slice.

    >>> import numpy as np
    >>> state = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    >>> flat = FlatParams(state, ["w", "b"])
    >>> opt = make_optimizer("sgd", flat, weight_decay=0.5, momentum=0.9)
    >>> flat.grad[:] = 0.0
    >>> opt.step(lr=0.1)
    >>> state["w"][0, 0], state["b"][0]  # decay moved the weight, not the bias
    (np.float32(0.905), np.float32(1.0))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Literal

import numpy as np
from numba import njit

__all__ = ["SGD", "AdamW", "FlatParams", "make_optimizer"]


class FlatParams:
    """The weights `keys` of `state` copied into one float32 vector, `data`; each entry of
    `state` becomes a view of it (modified in place by the optimizer). `grad` is a vector
    of the same layout, filled by `set_grads`. `decayed` is the length of the leading
    slice of weights with two or more dimensions."""

    def __init__(self, state: MutableMapping[str, np.ndarray], keys: Iterable[str]) -> None:
        keys = list(keys)
        ordered = [k for k in keys if np.ndim(state[k]) > 1]
        self.decayed = sum(int(np.size(state[k])) for k in ordered)
        ordered += [k for k in keys if np.ndim(state[k]) <= 1]
        self.keys = ordered
        self.data = np.empty(sum(int(np.size(state[k])) for k in ordered), np.float32)
        self.grad = np.zeros_like(self.data)
        self.slices: dict[str, tuple[slice, tuple[int, ...]]] = {}
        start = 0
        for key in ordered:
            value = np.asarray(state[key], np.float32)
            end = start + value.size
            self.slices[key] = (slice(start, end), value.shape)
            self.data[start:end] = value.ravel()
            state[key] = self.data[start:end].reshape(value.shape)
            start = end

    def set_grads(self, grads: Mapping[str, np.ndarray]) -> None:
        """Copy the gradient of every weight (state-dict key -> array) into `grad`."""
        for key, (where, _) in self.slices.items():
            self.grad[where] = grads[key].ravel()

    def groups(self, weight_decay: float) -> list[tuple[slice, float]]:
        """torch's two parameter groups as (slice of `data`, weight decay)."""
        return [(slice(0, self.decayed), weight_decay), (slice(self.decayed, None), 0.0)]


class SGD:
    """`torch.optim.SGD(groups, lr, momentum, nesterov=True)`, dampening 0:

        d = g + wd * p;  b = d (first step) or momentum * b + d;  p -= lr * (d + momentum * b)
    """

    def __init__(self, params: FlatParams, weight_decay: float = 0.0,
                 momentum: float = 0.9) -> None:
        self.params, self.momentum = params, np.float32(momentum)
        self.groups = params.groups(weight_decay)
        self.buf: np.ndarray | None = None

    def step(self, lr: float) -> None:
        """One update of `params.data` from `params.grad` at learning rate `lr`."""
        p, g = self.params.data, self.params.grad
        first = self.buf is None
        if first:
            self.buf = np.empty_like(p)
        for where, wd in self.groups:
            lo, hi, _ = where.indices(p.size)
            _sgd(p, g, self.buf, lo, hi, np.float32(wd), self.momentum, np.float32(lr), first)


class AdamW:
    """`torch.optim.AdamW(groups, lr, betas=(0.9, 0.999), eps=1e-8)`, decoupled decay:

        p *= 1 - lr * wd;  m = lerp(m, g, 1 - b1);  v = b2 * v + (1 - b2) * g^2;
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: FlatParams, weight_decay: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.betas, self.eps = params, betas, eps
        self.groups = params.groups(weight_decay)
        self.m = np.zeros_like(params.data)
        self.v = np.zeros_like(params.data)
        self.steps = 0

    def step(self, lr: float) -> None:
        """One update of `params.data` from `params.grad` at learning rate `lr`."""
        p = self.params.data
        b1, b2 = self.betas
        self.steps += 1
        bias2 = np.float32(np.sqrt(1.0 - b2 ** self.steps))
        step_size = np.float32(lr / (1.0 - b1 ** self.steps))
        for where, wd in self.groups:
            lo, hi, _ = where.indices(p.size)
            _adamw(p, self.params.grad, self.m, self.v, lo, hi, np.float32(1.0 - lr * wd),
                   np.float32(1.0 - b1), np.float32(b2), np.float32(1.0 - b2), bias2,
                   np.float32(self.eps), step_size)


@njit(cache=True)
def _sgd(p, g, buf, lo, hi, wd, momentum, lr, first):
    # weights lo..hi: d = g + wd * p; b = d (first step) or momentum * b + d;
    # p -= (d + momentum * b) * lr, each in float32 as torch rounds it
    for i in range(np.uint64(lo), np.uint64(hi)):  # unsigned: no wraparound checks
        d = g[i] + wd * p[i] if wd else g[i]
        b = d if first else momentum * buf[i] + d
        buf[i] = b
        p[i] -= (d + momentum * b) * lr


@njit(cache=True, error_model="numpy")  # no ZeroDivisionError branch: it vectorizes
def _adamw(p, g, m, v, lo, hi, decay, one_b1, b2, one_b2, bias2, eps, step_size):
    # weights lo..hi: p *= decay (1 - lr * wd); m += (g - m) * (1 - b1), torch's lerp;
    # v = v * b2 + g * g * (1 - b2); p -= m / (sqrt(v) / bias2 + eps) * step_size, with
    # bias2 = sqrt(1 - b2^t) and step_size = lr / (1 - b1^t); each in float32
    for i in range(np.uint64(lo), np.uint64(hi)):  # unsigned: no wraparound checks
        gi = g[i]
        mi = m[i] + (gi - m[i]) * one_b1
        vi = v[i] * b2 + gi * gi * one_b2
        m[i], v[i] = mi, vi
        p[i] = p[i] * decay - mi / (np.sqrt(vi) / bias2 + eps) * step_size


def make_optimizer(kind: Literal["sgd", "adamw"], params: FlatParams, weight_decay: float,
                   momentum: float = 0.9) -> SGD | AdamW:
    """The optimizer a `Recipe` names (`recipe.optimizer`), as `nasgraph.train` makes it."""
    if kind == "sgd":
        return SGD(params, weight_decay, momentum)
    return AdamW(params, weight_decay)
