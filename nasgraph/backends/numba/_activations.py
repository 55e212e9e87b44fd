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


@njit(cache=True)
def activate_call(v, code):
    """`activate` as a call, not inlined: code that applies an activation at many sites
    (the tiled conv's unrolled epilogue) stays small and quick to compile."""
    return activate(v, code)


@njit(inline="always", cache=True)
def activate_inline(v, code):
    """`activate`, with only the identity, ReLU and ReLU6 inlined and the rest called:
    code that applies it at many sites stays small and quick to compile, and loops over
    the cheap ones still vectorize."""
    if code == 0:
        return v
    if code == 1:
        return max(v, np.float32(0.0))
    if code == 2:
        return min(max(v, np.float32(0.0)), np.float32(6.0))
    return activate_call(v, code)


@njit(inline="always", cache=True)
def activate_row(row, code):
    """`row[k] = activate(row[k], code)` in place, with a loop of its own for the cheap
    activations: a per-element switch keeps LLVM from vectorizing the loop."""
    if code == 0:
        return
    if code == 1:
        for k in range(row.shape[0]):
            row[k] = max(row[k], np.float32(0.0))
    elif code == 2:
        for k in range(row.shape[0]):
            row[k] = min(max(row[k], np.float32(0.0)), np.float32(6.0))
    else:
        for k in range(row.shape[0]):
            row[k] = activate(row[k], code)


@njit(cache=True)
def finish_row(acc, b, res_row, has_res, code, dst):
    """The conv epilogue over one row: `dst[k] = act(acc[k] + b + res_row[k])` for k <
    len(dst) (`res_row` read only when `has_res`). A call, not inlined: its loops are
    compiled once for every kernel that uses it (compile time, on a fresh machine)."""
    if has_res:
        for k in range(dst.shape[0]):
            dst[k] = acc[k] + b + res_row[k]
    else:
        for k in range(dst.shape[0]):
            dst[k] = acc[k] + b
    activate_row(dst, code)
