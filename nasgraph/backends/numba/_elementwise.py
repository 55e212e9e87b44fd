"""Elementwise and copying kernels: scale-shift (BatchNorm, activations), layer norm over
channels, add, mul, copy, channel shuffle.

Inputs are N x C x H x W; each writes at channel offset `co` of `out` (see _conv.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate


@njit(parallel=True, cache=True)
def scale_shift(x, scale, shift, out, co, act):
    """out[:, co + c] = act(x[:, c] * scale[c] + shift[c])."""
    n_batch, c_in, h, w = x.shape
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src, dst = x[n, c], out[n, co + c]
        s, t = scale[c], shift[c]
        for i in range(h):
            for j in range(w):
                dst[i, j] = activate(src[i, j] * s + t, act)


@njit(parallel=True, cache=True)
def add_scaled(x, weight, out, co, accumulate):
    """out[:, co + c] (+)= weight * x[:, c]; a weight of 1 multiplies nothing."""
    n_batch, c_in, h, w = x.shape
    one = weight == 1.0
    wf = out.dtype.type(weight)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src, dst = x[n, c], out[n, co + c]
        for i in range(h):
            for j in range(w):
                v = src[i, j] if one else src[i, j] * wf
                dst[i, j] = dst[i, j] + v if accumulate else v


@njit(parallel=True, cache=True)
def mul(a, b, out, co):
    """out[:, co + c] = a[:, c] * b[:, c], b either the same shape or N x C x 1 x 1."""
    n_batch, c_in, h, w = a.shape
    bcast = b.shape[2] == 1 and b.shape[3] == 1 and (h > 1 or w > 1)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src, dst = a[n, c], out[n, co + c]
        for i in range(h):
            for j in range(w):
                dst[i, j] = src[i, j] * (b[n, c, 0, 0] if bcast else b[n, c, i, j])


@njit(parallel=True, cache=True)
def copy_channels(x, out, co):
    """out[:, co:co + C] = x (concat, channel padding)."""
    n_batch, c_in, h, w = x.shape
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        out[n, co + c] = x[n, c]


@njit(parallel=True, cache=True)
def shuffle_channels(x, out, co, groups):
    """out[:, co + j * groups + i] = x[:, i * (C / groups) + j]: ShuffleNet's shuffle."""
    n_batch, c_in = x.shape[0], x.shape[1]
    per_group = c_in // groups
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        i, j = c // per_group, c % per_group
        out[n, co + j * groups + i] = x[n, c]


@njit(parallel=True, cache=True)
def layer_norm_channels(x, weight, bias, eps, out, co):
    """out[:, co + c] = (x[:, c] - mean) / sqrt(var + eps) * weight[c] + bias[c], the
    mean and (biased) variance over the channels of each pixel; accumulated in float64."""
    n_batch, c_in, h, w = x.shape
    for job in prange(n_batch * h):
        n, i = job // h, job % h
        for j in range(w):
            total = 0.0
            for c in range(c_in):
                total += x[n, c, i, j]
            mean = total / c_in
            spread = 0.0
            for c in range(c_in):
                d = x[n, c, i, j] - mean
                spread += d * d
            inv = 1.0 / np.sqrt(spread / c_in + eps)
            for c in range(c_in):
                out[n, co + c, i, j] = (x[n, c, i, j] - mean) * inv * weight[c] + bias[c]
