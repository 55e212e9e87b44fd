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
    """Window i covers [floor(i * n / size), ceil((i + 1) * n / size)) on each axis.
    Flat offsets, no views: a view per channel updates one reference count shared by the
    threads (ResNet-20's global pool at batch 1: 64 channels, 2 views each)."""
    n_batch, c_in, h, w = x.shape
    c_out, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src = np.uint64(job * h * w)
        dst = np.uint64((n * c_out + co + c) * ho * wo)
        for oh in range(ho):
            a0, a1 = (oh * h) // ho, -((-(oh + 1) * h) // ho)
            for ow in range(wo):
                b0, b1 = (ow * w) // wo, -((-(ow + 1) * w) // wo)
                if b0 == 0 and b1 == w:  # whole rows: one run (the global pool: the plane)
                    s = _run_sum(xf, src + np.uint64(a0 * w), (a1 - a0) * w)
                else:
                    s = np.float32(0.0)
                    for i in range(a0, a1):
                        s += _run_sum(xf, src + np.uint64(i * w + b0), b1 - b0)
                of[dst + np.uint64(oh * wo + ow)] = s / ((a1 - a0) * (b1 - b0))


@njit(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _run_sum(xf, start, n):
    """xf[start:start + n].sum(), reassociated so that LLVM vectorizes it (one serial
    chain of adds took 12 us for ResNet-20's 64 x 8 x 8 global pool)."""
    s = np.float32(0.0)
    for j in range(np.uint64(n)):
        s += xf[start + j]
    return s


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
