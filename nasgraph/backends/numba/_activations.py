"""Activation functions as numba-inlined scalar code, selected by an integer code."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

ACT_CODES: dict[str | None, int] = {
    None: 0, "relu": 1, "relu6": 2, "sigmoid": 3, "tanh": 4, "silu": 5, "hardswish": 6,
    "gelu": 7,
}


@njit(inline="always", cache=True)
def activate(v, code):
    if code == 0:
        return v
    if code == 1:
        return max(v, np.float32(0.0))
    if code == 2:
        return min(max(v, np.float32(0.0)), np.float32(6.0))
    if code == 3:
        return np.float32(1.0 / (1.0 + math.exp(-v)))
    if code == 4:
        return np.float32(math.tanh(v))
    if code == 5:
        return np.float32(v / (1.0 + math.exp(-v)))
    if code == 6:
        return np.float32(v * min(max(v + 3.0, 0.0), 6.0) / 6.0)
    return np.float32(0.5 * v * (1.0 + math.erf(v * 0.7071067811865476)))
