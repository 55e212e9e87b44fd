"""Convolution and linear kernels: (im2col +) BLAS GEMM, and a direct kernel for depthwise.

Every kernel writes its N x C x H x W result at channel offset `co` of `out`, so that a
producer can fill its slice of a concat buffer in place, and applies the fused epilogue
`act(acc + bias + residual)` while writing. Arrays are C-contiguous float32 of fixed rank, so
each kernel compiles once, whatever the shapes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate, activate_inline, finish_row


@njit(inline="always", cache=True)
def _epilogue(acc, col0, out, n, c0, cb, bias, res, act, has_bias, has_res):
    # acc: C' x (columns) rows for channels cb.. of the node; columns col0.. (H*W of them)
    # are written to out[n, c0 + cb + r]
    hw = out.shape[2] * out.shape[3]
    for r in range(acc.shape[0]):
        c = cb + r
        b = bias[c] if has_bias else np.float32(0.0)
        res_row = res[n, c].reshape(hw) if has_res else res[0, 0, 0]
        finish_row(acc[r, col0:], b, res_row, has_res, act, out[n, c0 + c].reshape(hw))


@njit(cache=True)
def _im2col(x, n, c_lo, cols, col0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, rows_lo, rows_hi):
    # x[n, c_lo:c_lo+Cg] (H x W planes) -> cols rows (c, i, j) x columns col0..+ho*wo
    h, w = x.shape[2], x.shape[3]
    for row in range(rows_lo, rows_hi):
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        plane = x[n, c_lo + c]
        for oh in range(ho):
            ih = oh * sh - ph + i * dh
            base = col0 + oh * wo
            if ih < 0 or ih >= h:
                for ow in range(wo):
                    cols[row, base + ow] = 0.0
                continue
            for ow in range(wo):
                iw = ow * sw - pw + j * dw
                cols[row, base + ow] = plane[ih, iw] if 0 <= iw < w else np.float32(0.0)


GEMM_COLUMNS = 512  # samples share one GEMM until it has this many columns: a BLAS call
# costs about a microsecond, more than a small layer's GEMM per sample


@njit(parallel=True, cache=True)
def conv2d_gemm(x, w, bias, res, out, co, kh, kw, sh, sw, ph, pw, dh, dw, act, has_bias,
                has_res, threads):
    """N x Cin x H x W, weights G x Cout/G x (Cin/G*kh*kw) -> out[:, co:co+Cout].

    A 1x1 conv with stride 1 and no padding multiplies a sample's input planes as they
    are; otherwise, and for samples batched side by side into one GEMM (small outputs),
    im2col builds the right operand. `threads` is numba's thread count (read in Python:
    reading it here defeats caching).
    """
    n_batch = x.shape[0]
    groups, cog, k = w.shape
    cig = k // (kh * kw)
    ho, wo = out.shape[2], out.shape[3]
    hw = ho * wo
    pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    if n_batch >= threads:
        per = max(1, min(GEMM_COLUMNS // hw, n_batch // threads))  # samples per GEMM
        direct = pointwise and per == 1
        for chunk in prange((n_batch + per - 1) // per):
            n0 = chunk * per
            m = min(per, n_batch - n0)
            cols = np.empty((0 if direct else k, m * hw), np.float32)
            for g in range(groups):
                if direct:
                    rhs = x[n0].reshape((x.shape[1], hw))[g * cig:(g + 1) * cig]
                else:
                    for s in range(m):
                        _im2col(x, n0 + s, g * cig, cols, s * hw, kh, kw, sh, sw, ph, pw, dh,
                                dw, ho, wo, 0, k)
                    rhs = cols
                acc = np.dot(w[g], rhs)
                for s in range(m):
                    _epilogue(acc, s * hw, out, n0 + s, co, g * cog, bias, res, act, has_bias,
                              has_res)
    else:
        cols = np.empty((0 if pointwise else k, hw), np.float32)
        # few samples: split each GEMM into blocks of output channels, one per thread
        blocks = min(threads, cog)
        step = (k + threads - 1) // threads
        for n in range(n_batch):
            for g in range(groups):
                if pointwise:
                    rhs = x[n].reshape((x.shape[1], hw))[g * cig:(g + 1) * cig]
                else:
                    for t in prange(threads):
                        _im2col(x, n, g * cig, cols, 0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
                                min(t * step, k), min((t + 1) * step, k))
                    rhs = cols
                for t in prange(blocks):
                    lo = t * cog // blocks
                    hi = (t + 1) * cog // blocks
                    acc = np.dot(w[g][lo:hi], rhs)
                    _epilogue(acc, 0, out, n, co, g * cog + lo, bias, res, act, has_bias,
                              has_res)


@njit(inline="always", cache=True)
def _phase_geometry(h, wi, ph, pw, sh, sw, kh, kw, dh, dw, wq):
    # Where input rows and column phases land in the phase planes, and where each tap
    # reads: computed once per call, so that no division runs per channel plane
    row_phase, row_at = np.empty(h, np.int64), np.empty(h, np.int64)
    for r in range(h):
        row_phase[r] = (r + ph) % sh * sw
        row_at[r] = (r + ph) // sh * wq
    col_first, col_at, col_count = (np.empty(sw, np.int64), np.empty(sw, np.int64),
                                    np.empty(sw, np.int64))
    for q in range(sw):
        k0 = (q - pw) % sw  # the first input column whose padded column is q mod sw
        col_first[q], col_at[q] = k0, (k0 + pw) // sw
        col_count[q] = max(0, (wi - k0 + sw - 1) // sw)
    tap_phase, tap_at = np.empty(kh * kw, np.int64), np.empty(kh * kw, np.int64)
    for i in range(kh):
        for j in range(kw):
            tap_phase[i * kw + j] = i * dh % sh * sw + j * dw % sw
            tap_at[i * kw + j] = i * dh // sh * wq + j * dw // sw
    return row_phase, row_at, col_first, col_at, col_count, tap_phase, tap_at


BAND = 4096  # accumulator floats per band of output rows (16 KiB: stays in L1)


@njit(cache=True, fastmath={"contract", "nsz", "arcp"})
def _plane_9_taps(phases, tap_phase, tap_at, wc, b, wq, ho, wo, acc, out1, o_at, res1, r_at,
                  has_res, act):
    # One output plane of a 9-tap kernel (3x3 at any stride and dilation), a band of rows
    # at a time: all nine taps summed in one pass over the band (not one pass per tap),
    # then the epilogue per row. Flat `out1` and `res1` from o_at and r_at, at unsigned
    # offsets (no negative-index fix-ups)
    p0, p1, p2 = phases[tap_phase[0]], phases[tap_phase[1]], phases[tap_phase[2]]
    p3, p4, p5 = phases[tap_phase[3]], phases[tap_phase[4]], phases[tap_phase[5]]
    p6, p7, p8 = phases[tap_phase[6]], phases[tap_phase[7]], phases[tap_phase[8]]
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wc[0], wc[1], wc[2], wc[3], wc[4], wc[5], wc[6],
                                          wc[7], wc[8])
    band = max(1, acc.shape[0] // wq)
    for oh0 in range(0, ho, band):
        rows = min(band, ho - oh0)
        at = oh0 * wq
        q0, q1, q2 = p0[at + tap_at[0]:], p1[at + tap_at[1]:], p2[at + tap_at[2]:]
        q3, q4, q5 = p3[at + tap_at[3]:], p4[at + tap_at[4]:], p5[at + tap_at[5]:]
        q6, q7, q8 = p6[at + tap_at[6]:], p7[at + tap_at[7]:], p8[at + tap_at[8]:]
        for k in range((rows - 1) * wq + wo):
            acc[k] = (b + w0 * q0[k] + w1 * q1[k] + w2 * q2[k] + w3 * q3[k] + w4 * q4[k]
                      + w5 * q5[k] + w6 * q6[k] + w7 * q7[k] + w8 * q8[k])
        for r in range(rows):
            ob, ab = np.uint64(o_at + (oh0 + r) * wo), np.uint64(r * wq)
            if has_res:
                rb = np.uint64(r_at + (oh0 + r) * wo)
                for k in range(wo):
                    u = np.uint64(k)
                    out1[ob + u] = activate_inline(acc[ab + u] + res1[rb + u], act)
            elif act == 0:  # the common activations get loops of their own (vectorized)
                for k in range(wo):
                    u = np.uint64(k)
                    out1[ob + u] = acc[ab + u]
            elif act == 2:
                for k in range(wo):
                    u = np.uint64(k)
                    out1[ob + u] = min(max(acc[ab + u], np.float32(0.0)), np.float32(6.0))
            else:
                for k in range(wo):
                    u = np.uint64(k)
                    out1[ob + u] = activate_inline(acc[ab + u], act)


@njit(parallel=True, cache=True, fastmath={"contract", "nsz", "arcp"})
def conv2d_depthwise(x, w, bias, res, out, co, sh, sw, ph, pw, dh, dw, act, has_bias,
                     has_res, threads):
    """Convs with one input channel per group (depthwise, any channel multiplier):
    N x Cin x H x W, Cout x kh x kw weights -> out[:, co:co+Cout].

    Per channel plane, the input is copied once into its zero-padded stride phases (phase
    (a, b) holds padded rows a, a+sh, ... and columns b, b+sw, ...), so that every tap
    reads a contiguous window of one phase. A band of output rows is then accumulated
    one tap at a time, as one loop over the band's rows laid end to end (`wq` wide, the
    columns past Wo wasted): long, contiguous, vectorized, with no bounds test, for any
    stride and dilation. Staying NCHW spares the transposes, which would cost more than
    these layers' few flops per value.
    """
    n_batch, cin, h, wi = x.shape
    cout, kh, kw = w.shape
    mult = cout // cin
    ho, wo = out.shape[2], out.shape[3]
    hq = max((h + ph + sh - 1) // sh, ho + (kh - 1) * dh // sh)
    wq = max((wi + pw + sw - 1) // sw, wo + (kw - 1) * dw // sw)
    band = max(1, BAND // wq)
    row_phase, row_at, col_first, col_at, col_count, tap_phase, tap_at = _phase_geometry(
        h, wi, ph, pw, sh, sw, kh, kw, dh, dw, wq)
    jobs = n_batch * cout
    x1, out1, res1 = x.reshape(x.size), out.reshape(out.size), res.reshape(res.size)
    for t in prange(threads):
        # per thread: the padding stays zero, each plane overwrites the same interior
        phases = np.zeros((sh * sw, (hq + 1) * wq), np.float32)
        acc = np.empty(band * wq, np.float32)
        flat = phases.reshape(phases.size)
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            n, c = job // cout, job % cout
            plane = (n * cin + c // mult) * h * wi  # where the input plane starts in x1
            for r in range(h):  # flat, unsigned offsets: a view per row costs more
                for q in range(sw):
                    dst = np.uint64((row_phase[r] + q) * phases.shape[1] + row_at[r] + col_at[q])
                    src = np.uint64(plane + r * wi + col_first[q])
                    if sw == 1:
                        for k in range(col_count[q]):
                            flat[dst + np.uint64(k)] = x1[src + np.uint64(k)]
                    elif sw == 2:  # a constant stride: LLVM vectorizes it with shuffles
                        for k in range(col_count[q]):
                            flat[dst + np.uint64(k)] = x1[src + np.uint64(2 * k)]
                    else:
                        for k in range(col_count[q]):
                            flat[dst + np.uint64(k)] = x1[src + np.uint64(k * sw)]
            wc = w[c].reshape(kh * kw)
            b = bias[c] if has_bias else np.float32(0.0)
            if kh * kw == 9:
                _plane_9_taps(phases, tap_phase, tap_at, wc, b, wq, ho, wo, acc, out1,
                              ((n * out.shape[1] + co + c) * ho) * wo, res1,
                              ((n * cout + c) * ho) * wo, has_res, act)
                continue
            for oh0 in range(0, ho, band):
                rows = min(band, ho - oh0)
                m = (rows - 1) * wq + wo
                for k in range(m):
                    acc[k] = 0.0
                for tap in range(kh * kw):
                    wv = wc[tap]
                    src = phases[tap_phase[tap], oh0 * wq + tap_at[tap]:]
                    for k in range(m):
                        acc[k] += wv * src[k]
                b = bias[c] if has_bias else np.float32(0.0)
                for r in range(rows):
                    res_row = res[n, c, oh0 + r] if has_res else res[0, 0, 0]
                    finish_row(acc[r * wq:], b, res_row, has_res, act,
                               out[n, co + c, oh0 + r])


@njit(cache=True)
def linear(x, wt, bias, out, co, act, has_bias):
    """N x F x 1 x 1, weights F x O -> out[:, co:co+O, 0, 0]."""
    n_batch = x.shape[0]
    acc = np.dot(x.reshape((n_batch, x.shape[1])), wt)
    for n in range(n_batch):
        for o in range(wt.shape[1]):
            v = acc[n, o] + (bias[o] if has_bias else np.float32(0.0))
            out[n, co + o, 0, 0] = activate(v, act)
