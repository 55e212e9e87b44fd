"""Convolution and linear kernels: im2col + BLAS GEMM, and a direct kernel for depthwise.

Every kernel writes its N x C x H x W result at channel offset `co` of `out`, so that a
producer can fill its slice of a concat buffer in place, and applies the fused epilogue
`act(acc + bias + residual)` while writing. Arrays are C-contiguous float32 of fixed rank, so
each kernel compiles once, whatever the shapes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate


@njit(inline="always", cache=True)
def _epilogue(acc, out, n, c0, cb, bias, res, act, has_bias, has_res):
    # acc: C' x (H*W) rows for channels cb.. of the node, written to out[n, c0 + cb + r]
    ho, wo = out.shape[2], out.shape[3]
    for r in range(acc.shape[0]):
        c = cb + r
        b = bias[c] if has_bias else np.float32(0.0)
        dst = out[n, c0 + c]
        for oh in range(ho):
            for ow in range(wo):
                v = acc[r, oh * wo + ow] + b
                if has_res:
                    v += res[n, c, oh, ow]
                dst[oh, ow] = activate(v, act)


@njit(cache=True)
def _im2col(x, n, c_lo, cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, rows_lo, rows_hi):
    # x[n, c_lo:c_lo+Cg] (H x W planes) -> cols rows (c, i, j) x (ho*wo)
    h, w = x.shape[2], x.shape[3]
    for row in range(rows_lo, rows_hi):
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        plane = x[n, c_lo + c]
        for oh in range(ho):
            ih = oh * sh - ph + i * dh
            base = oh * wo
            if ih < 0 or ih >= h:
                for ow in range(wo):
                    cols[row, base + ow] = 0.0
                continue
            for ow in range(wo):
                iw = ow * sw - pw + j * dw
                cols[row, base + ow] = plane[ih, iw] if 0 <= iw < w else np.float32(0.0)


@njit(parallel=True, cache=True)
def conv2d_gemm(x, w, bias, res, out, co, kh, kw, sh, sw, ph, pw, dh, dw, act, has_bias,
                has_res, threads):
    """N x Cin x H x W, weights G x Cout/G x (Cin/G*kh*kw) -> out[:, co:co+Cout].

    `threads` is numba's thread count (read in Python: reading it here defeats caching).
    """
    n_batch = x.shape[0]
    groups, cog, k = w.shape
    cig = k // (kh * kw)
    ho, wo = out.shape[2], out.shape[3]
    if n_batch >= threads:
        for n in prange(n_batch):
            cols = np.empty((k, ho * wo), np.float32)
            for g in range(groups):
                _im2col(x, n, g * cig, cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, 0, k)
                acc = np.dot(w[g], cols)
                _epilogue(acc, out, n, co, g * cog, bias, res, act, has_bias, has_res)
    else:
        cols = np.empty((k, ho * wo), np.float32)
        # few samples: split each GEMM into blocks of output channels, one per thread
        blocks = min(threads, cog)
        step = (k + threads - 1) // threads
        for n in range(n_batch):
            for g in range(groups):
                for t in prange(threads):
                    _im2col(x, n, g * cig, cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
                            min(t * step, k), min((t + 1) * step, k))
                for t in prange(blocks):
                    lo = t * cog // blocks
                    hi = (t + 1) * cog // blocks
                    acc = np.dot(np.ascontiguousarray(w[g, lo:hi]), cols)
                    _epilogue(acc, out, n, co, g * cog + lo, bias, res, act, has_bias, has_res)


@njit(parallel=True, cache=True, fastmath={"contract", "nsz", "arcp"})
def conv2d_direct(x, w, bias, res, out, co, kh, kw, sh, sw, ph, pw, dh, dw, act, has_bias,
                  has_res):
    """Convs with one input channel per group (depthwise): Cout x 1 x kh x kw weights
    (passed as Cout x 1 x (kh*kw)) -> out[:, co:co+Cout]."""
    n_batch, cin, h, wi = x.shape
    cout = w.shape[0]
    mult = cout // cin
    ho, wo = out.shape[2], out.shape[3]
    hp, wp = h + 2 * ph, wi + 2 * pw
    for job in prange(n_batch * cout):
        n, c = job // cout, job % cout
        # N x Cin x H x W -> one zero-padded input plane, so the inner loop has no branch
        padded = np.zeros((hp, wp), np.float32)
        padded[ph:ph + h, pw:pw + wi] = x[n, c // mult]
        acc = np.zeros((ho, wo), np.float32)
        for i in range(kh):
            for j in range(kw):
                wv = w[c, 0, i * kw + j]
                for oh in range(ho):
                    row = padded[oh * sh + i * dh]
                    for ow in range(wo):
                        acc[oh, ow] += wv * row[ow * sw + j * dw]
        b = bias[c] if has_bias else np.float32(0.0)
        for oh in range(ho):
            for ow in range(wo):
                v = acc[oh, ow] + b
                if has_res:
                    v += res[n, c, oh, ow]
                out[n, co + c, oh, ow] = activate(v, act)


@njit(cache=True)
def linear(x, wt, bias, out, co, act, has_bias):
    """N x F x 1 x 1, weights F x O -> out[:, co:co+O, 0, 0]."""
    n_batch = x.shape[0]
    acc = np.dot(x.reshape((n_batch, x.shape[1])), wt)
    for n in range(n_batch):
        for o in range(wt.shape[1]):
            v = acc[n, o] + (bias[o] if has_bias else np.float32(0.0))
            out[n, co + o, 0, 0] = activate(v, act)
