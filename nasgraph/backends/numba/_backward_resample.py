"""Training kernels of pooling and resizing: max pooling that records where each maximum
came from, and the backward of max, average, adaptive average pooling and upsampling.

Windows and source indices are the forward kernels' (`_resample`), which follow torch's:
max pooling routes each output's gradient to its window's first maximum (torch's pick on
ties, which ReLU's zeros make common), average pooling spreads it evenly over the window
it averaged, resizing adds it back to the pixels it interpolated from. One job per
N x C plane: a plane's gradient is written by one thread. Max pooling's forward, which
records those maxima, is the executor's (`_resample.maxpool2d`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._resample import _linear_index, _nearest_index, tiles


@njit(parallel=True, cache=True)
def maxpool2d_backward(gy, argmax, gx):
    """gx[n, c] = 0, then += each output's gradient at its maximum's index (the plane's
    flat index: no division a value); a plane zeroed by the thread that adds into it.
    Flat offsets, no view a plane (`_resample.maxpool2d`)."""
    n_batch, c_in, ho, wo = gy.shape
    plane, howo = np.uint64(gx.shape[2] * gx.shape[3]), np.uint64(ho * wo)
    g1, a1, d1 = gy.reshape(gy.size), argmax.reshape(argmax.size), gx.reshape(gx.size)
    for job in prange(n_batch * c_in):
        d0, s0 = np.uint64(job) * plane, np.uint64(job) * howo
        for k in range(plane):
            d1[d0 + k] = 0.0
        for k in range(howo):
            d1[d0 + np.uint64(a1[s0 + k])] += g1[s0 + k]


@njit(parallel=True, cache=True)
def avgpool2d_backward(gy, gx, kh, kw, sh, sw, ph, pw, count_include_pad):
    """gx (zeroed) += each output's gradient divided by the count it averaged over
    (the window clipped to the padded input, or to the input without
    `count_include_pad`), over that window's input pixels. 2x2 windows that tile the
    input (`_resample.tiles`) take straight-line code (`_tiled_avgpool_backward_2x2`).
    Flat offsets, no view a plane (`_resample.maxpool2d`)."""
    n_batch, c_in, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    if kh == 2 and kw == 2 and tiles(h, w, ho, wo, kh, kw, sh, sw, ph, pw):
        _tiled_avgpool_backward_2x2(gy, gx)
        return
    g1, d1 = gy.reshape(gy.size), gx.reshape(gx.size)
    for job in prange(n_batch * c_in):
        s0, d0 = job * ho * wo, job * h * w
        for oh in range(ho):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, h + ph)
            a0, a1 = max(h0, 0), min(h1, h)
            for ow in range(wo):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, w + pw)
                b0, b1 = max(w0, 0), min(w1, w)
                area = (h1 - h0) * (w1 - w0) if count_include_pad else (a1 - a0) * (b1 - b0)
                v = g1[np.uint64(s0 + oh * wo + ow)] / np.float32(area)
                for i in range(a0, a1):
                    for j in range(b0, b1):
                        d1[np.uint64(d0 + i * w + j)] += v


@njit(parallel=True, cache=True)
def _tiled_avgpool_backward_2x2(gy, gx):
    # `avgpool2d_backward` of 2x2 windows that tile gx (zeroed): each input pixel in one
    # window, so it gets its output's share added once, as the window loop adds it; in
    # straight-line code (`_resample._tiled_avgpool_2x2`)
    n_batch, c_in, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    area = np.float32(4.0)
    g1, d1 = gy.reshape(gy.size), gx.reshape(gx.size)
    for job in prange(n_batch * c_in):
        for oh in range(ho):
            src = np.uint64((job * ho + oh) * wo)
            first = np.uint64((job * h + oh * 2) * w)
            second = first + np.uint64(w)
            for ow in range(np.uint64(wo)):
                share, k = g1[src + ow] / area, ow * np.uint64(2)
                d1[first + k] += share
                d1[first + k + np.uint64(1)] += share
                d1[second + k] += share
                d1[second + k + np.uint64(1)] += share


@njit(parallel=True, cache=True)
def adaptive_avgpool_backward(gy, gx):
    """The adjoint of `_resample.adaptive_avgpool`: window i of an axis covers
    [floor(i * n / size), ceil((i + 1) * n / size)); gx (zeroed) += gradient / window."""
    n_batch, c_in, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        g, dst = gy[n, c], gx[n, c]
        for oh in range(ho):
            a0, a1 = (oh * h) // ho, -((-(oh + 1) * h) // ho)
            for ow in range(wo):
                b0, b1 = (ow * w) // wo, -((-(ow + 1) * w) // wo)
                v = g[oh, ow] / np.float32((a1 - a0) * (b1 - b0))
                for i in range(a0, a1):
                    for j in range(b0, b1):
                        dst[i, j] += v


# plane sums reassociated, so that LLVM vectorizes them
REASSOC = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, fastmath=REASSOC)
def global_avgpool_planes(xf, of, hw, p0, p1):
    """of[p] = the mean of plane p of the flat x (its hw values, from p * hw on), for
    planes p0..p1: flat offsets, no view per plane and no parallel region, where the
    adaptive pool's per-plane views and window loops took 6-8x as long at one thread
    (32 x 32 planes of 4x4: 11.8 against 2.1 us)."""
    scale = np.float32(1.0 / hw)
    for p in range(p0, p1):
        at = np.uint64(p * hw)
        s = np.float32(0.0)
        for j in range(np.uint64(hw)):
            s += xf[at + j]
        of[p] = s * scale


@njit(cache=True)
def global_avgpool_backward_planes(gf, xf, hw, p0, p1):
    """The adjoint of `global_avgpool_planes`: plane p of the flat gx (written, not
    added to) = gf[p] / hw, for planes p0..p1."""
    for p in range(p0, p1):
        v = gf[p] / np.float32(hw)
        at = np.uint64(p * hw)
        for j in range(np.uint64(hw)):
            xf[at + j] = v


@njit(parallel=True, cache=True)
def global_avgpool_parallel(xf, of, hw, threads):
    """`global_avgpool_planes` over all planes, a run of them per thread."""
    planes = of.size
    for t in prange(threads):
        global_avgpool_planes(xf, of, hw, t * planes // threads, (t + 1) * planes // threads)


@njit(parallel=True, cache=True)
def global_avgpool_backward_parallel(gf, xf, hw, threads):
    """`global_avgpool_backward_planes` over all planes, a run of them per thread."""
    planes = gf.size
    for t in prange(threads):
        global_avgpool_backward_planes(gf, xf, hw, t * planes // threads,
                                       (t + 1) * planes // threads)


@njit(parallel=True, cache=True)
def upsample_backward(gy, gx, bilinear, align_corners, scale_h, scale_w):
    """The adjoint of `_resample.upsample` (same float32 source indices and weights):
    gx (zeroed) += each output's gradient at the pixel(s) it was read from."""
    n_batch, c_in, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    fh, fw = np.float32(scale_h), np.float32(scale_w)
    one = np.float32(1.0)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        g, dst = gy[n, c], gx[n, c]
        for oh in range(ho):
            if bilinear:
                i0, i1, lh = _linear_index(oh, h, fh, align_corners)
            else:
                i0, i1, lh = _nearest_index(oh, h, ho, fh), 0, np.float32(0.0)
            for ow in range(wo):
                v = g[oh, ow]
                if bilinear:
                    j0, j1, lw = _linear_index(ow, w, fw, align_corners)
                    top, bottom = (one - lh) * v, lh * v
                    dst[i0, j0] += (one - lw) * top
                    dst[i0, j1] += lw * top
                    dst[i1, j0] += (one - lw) * bottom
                    dst[i1, j1] += lw * bottom
                else:
                    dst[i0, _nearest_index(ow, w, wo, fw)] += v
