"""Backward kernels of convolution: the gradients of the input and of the weights.

For y = conv(x, w) the input gradient is the full convolution of dy with the kernel
rotated by 180 degrees, and the weight gradient the correlation of x with dy. Both are
GEMMs on im2col's columns: with cols = im2col(x) (K x pixels) and y = w @ cols,

    dw = dy @ cols.T        dx = col2im(w.T @ dy)

where col2im, the adjoint of im2col, adds each column entry back into the pixel it was
read from. Convs with one input channel per group (depthwise) have GEMMs of one row; they
run as direct loops instead (their forward is the executor's, `_conv`).

Arrays are C-contiguous float32 N x C x H x W; gradients of inputs are added into
zeroed arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# samples share one GEMM until it has this many columns: fewer, larger BLAS calls
COLUMNS = 2048


@njit(inline="always", cache=True)
def _valid_columns(a, sw, w, wo):
    # output columns ow with 0 <= ow * sw - a < w (a: padding minus the tap's offset), as
    # lo <= ow < hi with 0 <= lo <= hi <= wo
    lo = min(max(0, (a + sw - 1) // sw), wo)
    hi = max(min(wo, (w - 1 + a) // sw + 1), lo)
    return lo, hi


@njit(cache=True)
def _im2col(x1, x_at, h, w, cols, col0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    # The Cg = rows / (kh * kw) planes of flat x1 from offset x_at -> rows (c, i, j) x
    # columns col0.. of cols. Bounds are worked out per row of taps, not per value, and
    # offsets are unsigned: the copies vectorize
    zero = np.float32(0.0)
    for row in range(cols.shape[0]):
        c, i, j = row // (kh * kw), (row // kw) % kh, row % kw
        dst = cols[row]
        a = pw - j * dw
        lo, hi = _valid_columns(a, sw, w, wo)
        for oh in range(ho):
            ih = oh * sh - ph + i * dh
            base = col0 + oh * wo
            if ih < 0 or ih >= h:
                lo_r, hi_r = wo, wo  # the whole row is padding
            else:
                lo_r, hi_r = lo, hi
            for ow in range(lo_r):
                dst[base + ow] = zero
            d0 = np.uint64(base + lo_r)
            s0 = np.uint64(x_at + (c * h + ih) * w + lo_r * sw - a) if lo_r < hi_r \
                else np.uint64(0)
            if sw == 1:
                for k in range(np.uint64(hi_r - lo_r)):
                    dst[d0 + k] = x1[s0 + k]
            else:
                step = np.uint64(sw)
                for k in range(np.uint64(hi_r - lo_r)):
                    dst[d0 + k] = x1[s0 + k * step]
            for ow in range(hi_r, wo):
                dst[base + ow] = zero


@njit(cache=True)
def _col2im_add(cols, col0, g1, g_at, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    # adjoint of `_im2col`: rows (c, i, j) x columns col0.. of cols are added into the
    # planes of flat g1 from offset g_at, at the pixels im2col read them from
    for row in range(cols.shape[0]):
        c, i, j = row // (kh * kw), (row // kw) % kh, row % kw
        src = cols[row]
        a = pw - j * dw
        lo, hi = _valid_columns(a, sw, w, wo)
        if lo == hi:
            continue
        for oh in range(ho):
            ih = oh * sh - ph + i * dh
            if ih < 0 or ih >= h:
                continue
            s0 = np.uint64(col0 + oh * wo + lo)
            d0 = np.uint64(g_at + (c * h + ih) * w + lo * sw - a)
            if sw == 1:
                for k in range(np.uint64(hi - lo)):
                    g1[d0 + k] += src[s0 + k]
            else:
                step = np.uint64(sw)
                for k in range(np.uint64(hi - lo)):
                    g1[d0 + k * step] += src[s0 + k]


@njit(cache=True)
def _gather_rows(a1, c_all, hw, n0, m, c_lo, out):
    # planes c_lo.. of samples n0..n0+m of flat N x c_all x hw a1 -> out: rows x (m * hw),
    # samples side by side
    for s in range(m):
        for r in range(out.shape[0]):
            src = np.uint64(((n0 + s) * c_all + c_lo + r) * hw)
            dst = out[r]
            d0 = np.uint64(s * hw)
            for k in range(np.uint64(hw)):
                dst[d0 + k] = a1[src + k]


@njit(inline="always", cache=True)
def _columns(x1, cin, h, w, n0, m, c_lo, cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo,
             pointwise):
    # the GEMM operand of samples n0..n0+m, group from channel c_lo: im2col, or for a 1x1
    # stride-1 unpadded conv the input planes themselves
    hw = ho * wo
    if pointwise:
        _gather_rows(x1, cin, hw, n0, m, c_lo, cols)
    else:
        for s in range(m):
            _im2col(x1, ((n0 + s) * cin + c_lo) * h * w, h, w, cols, s * hw, kh, kw, sh, sw,
                    ph, pw, dh, dw, ho, wo)


@njit(parallel=True, cache=True)
def conv2d_forward(x, w, bias, out, kh, kw, sh, sw, ph, pw, dh, dw, has_bias, threads):
    """A grouped (im2col +) GEMM conv: x N x Cin x H x W, w G x Cout/G x K (K = Cin/G * kh
    * kw), out N x Cout x Ho x Wo (+ bias where `has_bias`).

    Each thread takes a contiguous run of samples, COLUMNS columns' worth per GEMM.
    `threads` is numba's thread count (read in Python: reading it here defeats caching)."""
    n_batch, cin, h, wi = x.shape
    groups, cog, k = w.shape
    cig = k // (kh * kw)
    cout, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    hw = ho * wo
    pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    per = max(1, COLUMNS // hw)
    x1, out1 = x.reshape(x.size), out.reshape(out.size)
    for t in prange(threads):
        lo, hi = t * n_batch // threads, (t + 1) * n_batch // threads
        for n0 in range(lo, hi, per):
            m = min(per, hi - n0)
            cols = np.empty((k, m * hw), np.float32)
            for g in range(groups):
                _columns(x1, cin, h, wi, n0, m, g * cig, cols, kh, kw, sh, sw, ph, pw, dh, dw,
                         ho, wo, pointwise)
                acc = np.dot(w[g], cols)  # Cout/G x (m * Ho * Wo)
                for s in range(m):
                    for r in range(cog):
                        c = g * cog + r
                        b = bias[c] if has_bias else np.float32(0.0)
                        src, d0 = acc[r], np.uint64(((n0 + s) * cout + c) * hw)
                        s0 = np.uint64(s * hw)
                        for q in range(np.uint64(hw)):
                            out1[d0 + q] = src[s0 + q] + b


@njit(parallel=True, cache=True)
def conv2d_backward(x, w, gy, gx, gw_parts, kh, kw, sh, sw, ph, pw, dh, dw, need_dx, threads):
    """Gradients of a `conv2d_forward` conv: gy N x Cout x Ho x Wo -> gx += dx (N x Cin x
    H x W, when `need_dx`) and gw_parts[t] += the weight gradient of thread t's samples
    (threads x G x Cout/G x K; the caller sums them: no two threads add into one array).

        dw = gy @ cols.T        dx = col2im(w.T @ gy)

    with gy's planes side by side as a Cout/G x (samples * Ho * Wo) matrix. For a 1x1
    stride-1 unpadded conv, cols is the input and col2im the identity."""
    n_batch, cin, h, wi = x.shape
    groups, cog, k = w.shape
    cig = k // (kh * kw)
    cout, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    hw = ho * wo
    pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    per = max(1, COLUMNS // hw)
    x1, gy1, gx1 = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size)
    for t in prange(threads):
        lo, hi = t * n_batch // threads, (t + 1) * n_batch // threads
        for n0 in range(lo, hi, per):
            m = min(per, hi - n0)
            cols = np.empty((k, m * hw), np.float32)
            rows = np.empty((cog, m * hw), np.float32)
            for g in range(groups):
                _columns(x1, cin, h, wi, n0, m, g * cig, cols, kh, kw, sh, sw, ph, pw, dh, dw,
                         ho, wo, pointwise)
                _gather_rows(gy1, cout, hw, n0, m, g * cog, rows)
                gw_parts[t, g] += np.dot(rows, cols.T)  # Cout/G x K
                if not need_dx:
                    continue
                back = np.dot(w[g].T, rows)  # K x (m * Ho * Wo)
                for s in range(m):
                    at = ((n0 + s) * cin + g * cig) * h * wi
                    if pointwise:
                        for r in range(cig):
                            src, d0 = back[r], np.uint64(at + r * hw)
                            s0 = np.uint64(s * hw)
                            for q in range(np.uint64(hw)):
                                gx1[d0 + q] += src[s0 + q]
                    else:
                        _col2im_add(back, s * hw, gx1, at, h, wi, kh, kw, sh, sw, ph, pw, dh,
                                    dw, ho, wo)


_FAST = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, fastmath=_FAST)
def _dot_run(a, b, b_at, n, step):
    # sum(a[k] * b[b_at + k * step] for k < n)
    s = np.float32(0.0)
    if step == 1:  # loops of their own: contiguous, and a constant stride, vectorize
        for k in range(np.uint64(n)):
            s += a[k] * b[b_at + k]
    elif step == 2:
        for k in range(np.uint64(n)):
            s += a[k] * b[b_at + np.uint64(2) * k]
    else:
        for k in range(np.uint64(n)):
            s += a[k] * b[b_at + k * step]
    return s


@njit(cache=True, fastmath=_FAST)
def _axpy_run(v, a, b, b_at, n, step):
    # b[b_at + k * step] += v * a[k] for k < n
    if step == 1:
        for k in range(np.uint64(n)):
            b[b_at + k] += v * a[k]
    elif step == 2:
        for k in range(np.uint64(n)):
            b[b_at + np.uint64(2) * k] += v * a[k]
    else:
        for k in range(np.uint64(n)):
            b[b_at + k * step] += v * a[k]


@njit(inline="always", cache=True)
def _padded_geometry(h, wi, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw):
    # Padded planes Wp wide (rounded up to a multiple of sw), gy's rows R = sh * Wp / sw
    # wide: output (oh, ow) is then at t = oh * R + ow and reads padded input sw * t +
    # tap offset. R < Wo (a stride wider across than down) cannot be laid out so: R = 0
    wp = -(-(wi + 2 * pw) // sw) * sw
    r = sh * wp // sw
    size = max((h + 2 * ph) * wp, (kh - 1) * dh * wp + (kw - 1) * dw + sw * ho * r) + 1
    return wp, (r if r >= wo else 0), size


@njit(cache=True)
def _depthwise_backward_padded(x, w, gy, gx, gw, ci, mult, sh, sw, ph, pw, dh, dw, need_dx):
    # One input channel of a depthwise conv, on zero-padded planes laid out row after row
    # (`_padded_geometry`; gy's rows padded from Wo to R with zeros), the samples' planes
    # one after another (gy's `block` apart, x's sw * block): each tap is then one long
    # dot product (dw) and one long axpy (dx) over the whole batch at stride sw, with no
    # bounds tests
    n_batch, _, h, wi = x.shape
    _, kh, kw = w.shape
    ho, wo = gy.shape[2], gy.shape[3]
    wp, r, size = _padded_geometry(h, wi, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    block = max(ho * r, -(-size // sw))
    length = n_batch * block
    step = np.uint64(sw)
    xp = np.zeros(sw * length + size, np.float32)
    gp = np.zeros(length, np.float32)
    dxp = np.zeros(sw * length + size if need_dx else 1, np.float32)
    for n in range(n_batch):
        at = n * sw * block
        for row in range(h):
            xp[at + (row + ph) * wp + pw:at + (row + ph) * wp + pw + wi] = x[n, ci, row]
    for q in range(mult):
        co = ci * mult + q
        for n in range(n_batch):
            for row in range(ho):
                gp[n * block + row * r:n * block + row * r + wo] = gy[n, co, row]
        for i in range(kh):
            for j in range(kw):
                at = np.uint64(i * dh * wp + j * dw)
                gw[co, i, j] = _dot_run(gp, xp, at, length, step)
                if need_dx:
                    _axpy_run(w[co, i, j], gp, dxp, at, length, step)
    if need_dx:
        for n in range(n_batch):
            at = n * sw * block
            for row in range(h):
                gx[n, ci, row] += dxp[at + (row + ph) * wp + pw:at + (row + ph) * wp + pw + wi]


@njit(parallel=True, cache=True, fastmath=_FAST)
def conv2d_depthwise_backward(x, w, gy, gx, gw, sh, sw, ph, pw, dh, dw, need_dx):
    """Gradients of a conv with one input channel per group (depthwise, any channel
    multiplier): x N x Cin x H x W, w Cout x kh x kw, gy N x Cout x Ho x Wo -> gx += dx
    (when `need_dx`), gw = dw (Cout x kh x kw).

    One job per input channel: it owns its dx planes and the weights of its Cout/Cin
    output channels, so no two threads write one value. It runs on padded planes
    (`_depthwise_backward_padded`), or where a stride across exceeds the stride down by
    too much for their layout, tap by tap over the valid windows."""
    n_batch, cin, h, wi = x.shape
    cout, kh, kw = w.shape
    mult = cout // cin
    ho, wo = gy.shape[2], gy.shape[3]
    padded = _padded_geometry(h, wi, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)[1] > 0
    for ci in prange(cin):
        if padded:
            _depthwise_backward_padded(x, w, gy, gx, gw, ci, mult, sh, sw, ph, pw, dh, dw,
                                       need_dx)
            continue
        for q in range(mult):
            co = ci * mult + q
            for i in range(kh):
                for j in range(kw):
                    a = pw - j * dw
                    lo, hi = _valid_columns(a, sw, wi, wo)
                    wv = w[co, i, j]
                    acc = np.float32(0.0)
                    for n in range(n_batch):
                        for oh in range(ho):
                            ih = oh * sh - ph + i * dh
                            if ih < 0 or ih >= h:
                                continue
                            src, g = x[n, ci, ih], gy[n, co, oh]
                            for ow in range(lo, hi):
                                acc += g[ow] * src[ow * sw - a]
                            if need_dx:
                                dst = gx[n, ci, ih]
                                for ow in range(lo, hi):
                                    dst[ow * sw - a] += wv * g[ow]
                    gw[co, i, j] = acc


@njit(parallel=True, cache=True, fastmath=_FAST)
def channel_sums(gy, out):
    """out[c] = gy[:, c].sum() (N x C x H x W): the bias gradient, summed per plane in
    float32 and across planes in float64."""
    n_batch, c_in, h, w = gy.shape
    hw = h * w
    for c in prange(c_in):
        total = 0.0
        for n in range(n_batch):
            plane = gy[n, c].reshape(hw)
            s = np.float32(0.0)
            for k in range(hw):
                s += plane[k]
            total += s
        out[c] = total
