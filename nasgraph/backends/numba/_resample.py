"""Pooling and resizing kernels: max/avg windows, adaptive average, nearest and bilinear.

Inputs are N x C x H x W; each writes at channel offset `co` of `out` (see _conv.py).
Index arithmetic follows torch's CPU kernels, in float32 where torch computes in float32,
so that nearest-neighbour choices match exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def pool2d(x, out, co, kh, kw, sh, sw, ph, pw, is_max, count_include_pad):
    """Max or average windows; windows past the input (ceil_mode) are clipped as in torch."""
    n_batch, c_in, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src, dst = x[n, c], out[n, co + c]
        for oh in range(ho):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, h + ph)
            for ow in range(wo):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, w + pw)
                area = (h1 - h0) * (w1 - w0)
                a0, a1, b0, b1 = max(h0, 0), min(h1, h), max(w0, 0), min(w1, w)
                if is_max:
                    v = -np.inf
                    for i in range(a0, a1):
                        for j in range(b0, b1):
                            v = max(v, src[i, j])
                    dst[oh, ow] = v
                else:
                    s = np.float32(0.0)
                    for i in range(a0, a1):
                        for j in range(b0, b1):
                            s += src[i, j]
                    if not count_include_pad:
                        area = (a1 - a0) * (b1 - b0)
                    dst[oh, ow] = s / area


@njit(parallel=True, cache=True)
def adaptive_avgpool(x, out, co):
    """Window i covers [floor(i * n / size), ceil((i + 1) * n / size)) on each axis."""
    n_batch, c_in, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src, dst = x[n, c], out[n, co + c]
        for oh in range(ho):
            a0, a1 = (oh * h) // ho, -((-(oh + 1) * h) // ho)
            for ow in range(wo):
                b0, b1 = (ow * w) // wo, -((-(ow + 1) * w) // wo)
                s = np.float32(0.0)
                for i in range(a0, a1):
                    for j in range(b0, b1):
                        s += src[i, j]
                dst[oh, ow] = s / ((a1 - a0) * (b1 - b0))


@njit(cache=True)
def _nearest_index(dst, size_in, size_out, scale):
    if size_out == size_in:
        return dst
    if size_out == 2 * size_in:
        return dst >> 1
    return min(int(math.floor(np.float32(dst) * scale)), size_in - 1)


@njit(cache=True)
def _linear_index(dst, size_in, scale, align_corners):
    if align_corners:
        src = scale * np.float32(dst)
    else:
        src = max(scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5),
                  np.float32(0.0))
    i0 = min(int(math.floor(src)), size_in - 1)
    lam = min(max(src - np.float32(i0), np.float32(0.0)), np.float32(1.0))
    return i0, i0 + (1 if i0 < size_in - 1 else 0), lam


@njit(parallel=True, cache=True)
def upsample(x, out, co, bilinear, align_corners, scale_h, scale_w):
    """Nearest or bilinear resize; scales are torch's float32 source-per-output steps."""
    n_batch, c_in, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    fh, fw = np.float32(scale_h), np.float32(scale_w)
    one = np.float32(1.0)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src, dst = x[n, c], out[n, co + c]
        for oh in range(ho):
            if bilinear:
                i0, i1, lh = _linear_index(oh, h, fh, align_corners)
            else:
                i0, i1, lh = _nearest_index(oh, h, ho, fh), 0, np.float32(0.0)
            for ow in range(wo):
                if bilinear:
                    j0, j1, lw = _linear_index(ow, w, fw, align_corners)
                    dst[oh, ow] = (one - lh) * ((one - lw) * src[i0, j0] + lw * src[i0, j1]) \
                        + lh * ((one - lw) * src[i1, j0] + lw * src[i1, j1])
                else:
                    dst[oh, ow] = src[i0, _nearest_index(ow, w, wo, fw)]
