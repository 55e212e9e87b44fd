"""Depthwise convs (one input channel per group) on stride-phase planes (`_planes`), which
the training pass keeps for the weight gradient (`_planes_wgrad.conv2d_weight_grad`).

The forward takes each output channel's row of the input's planes: for a 3x3 kernel a
pixel's nine taps summed in registers (`_nine_taps`), else one axpy per tap along the
padded row. The input gradient is the forward's adjoint: for a stride-1 3x3 conv of one
output a channel, the same nine-tap sum over dy's row between zeros, read at the taps in
reverse; else one axpy per tap of w * dy into the channel's planes, gathered back.

Copies and gathers index flat arrays with unsigned offsets, as in `_planes`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._planes import PhasePlanes, phase_span
from nasgraph.backends.numba._planes_wgrad import _rows, _tile


def depthwise_rows(planes: PhasePlanes, gy: np.ndarray, wide: bool = False) -> np.ndarray:
    """gy laid out for a depthwise conv's `conv2d_weight_grad` (with the same `wide`) and
    `depthwise_input_grad`: each input channel's Cout/Cin rows padded to whole tiles."""
    cin, cout = planes.shape[1], gy.shape[1]
    r = _tile(cin, cout // cin, wide)[0]
    return _rows(planes, gy, cin, -(-(cout // cin) // r) * r)


@njit(inline="always", cache=True, fastmath={"contract", "nsz", "arcp"})
def _nine_taps(x1, base, taps, w, b, acc, length):
    # acc[p] = b + the sum over the 9 taps k of w[k] x1[base + taps[k] + p], in tap order
    # (as the axpy per tap adds them), each pixel's sum in registers: an axpy per tap
    # loaded and stored the row nine times (0.77x the time, 3x3 on 14x14 maps)
    s0, s1, s2 = (np.uint64(base + taps[0]), np.uint64(base + taps[1]),
                  np.uint64(base + taps[2]))
    s3, s4, s5 = (np.uint64(base + taps[3]), np.uint64(base + taps[4]),
                  np.uint64(base + taps[5]))
    s6, s7, s8 = (np.uint64(base + taps[6]), np.uint64(base + taps[7]),
                  np.uint64(base + taps[8]))
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
    for p in range(np.uint64(length)):
        acc[p] = (b + w0 * x1[s0 + p] + w1 * x1[s1 + p] + w2 * x1[s2 + p] + w3 * x1[s3 + p]
                  + w4 * x1[s4 + p] + w5 * x1[s5 + p] + w6 * x1[s6 + p] + w7 * x1[s7 + p]
                  + w8 * x1[s8 + p])


@njit(inline="always", cache=True)
def _crop_rows(acc, out1, dst, ho, wo, wq):
    # out1[dst + r*wo + c] = acc[r*wq + c], c < wo. Where wq <= 2*wo each row but the last
    # is copied whole, wq values, in order: its padding lands on the next row's first
    # values, which that row's copy then overwrites. A row of fewer values than a vector
    # does not vectorize; a whole padded row does (the 3x3 depthwise forward on 14x14
    # maps: 0.8x the time)
    whole = ho - 1 if wq <= 2 * wo else 0
    for r in range(whole):
        d, a = dst + np.uint64(r * wo), np.uint64(r * wq)
        for c in range(np.uint64(wq)):
            out1[d + c] = acc[a + c]
    for r in range(whole, ho):
        d, a = dst + np.uint64(r * wo), np.uint64(r * wq)
        for c in range(np.uint64(wo)):
            out1[d + c] = acc[a + c]


@njit(parallel=True, cache=True, fastmath={"contract", "nsz", "arcp"})
def _depthwise_planes_forward(x1, x_n, ci_n, taps, w, bias, out, wq, length, threads):
    # out[n, co] = bias[co] + the sum over taps t of w[co, t] times the planes of input
    # channel co // m (ci_n values each; x_n a sample) from taps[t] + p, cropped from
    # rows wq wide to wo: one axpy per tap along a row `length` long, which vectorizes,
    # into a row that stays in L1
    n_batch, cout, ho, wo = out.shape
    mult = cout // (x_n // ci_n)
    jobs = n_batch * cout
    out1 = out.reshape(out.size)
    for t in prange(threads):
        acc = np.empty(length, np.float32)
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            n, co = job // cout, job % cout
            base = n * x_n + co // mult * ci_n
            if taps.size == 9:  # 3x3: a pixel's nine taps summed in registers
                _nine_taps(x1, base, taps, w[co], bias[co], acc, length)
            else:
                acc[:] = bias[co]
                for k in range(taps.size):
                    wv = w[co, k]
                    src = np.uint64(base + taps[k])
                    for p in range(np.uint64(length)):
                        acc[p] += wv * x1[src + p]
            # out[n, co], flat and unsigned: views cost reference counting, signed offsets
            # negative-index fix-ups
            _crop_rows(acc, out1, np.uint64(job * ho * wo), ho, wo, wq)


def depthwise_forward(planes: PhasePlanes, w: np.ndarray, bias: np.ndarray | None,
                      out: np.ndarray, threads: int) -> None:
    """out = the depthwise conv of the input of `planes` (one input channel per group,
    Cout/Cin outputs each) with w (Cout x kh*kw) + bias, from its phase planes: the
    training pass keeps them for the weight gradient."""
    xq = planes.xq
    per_channel = xq.shape[1] // planes.shape[1] * planes.plane
    _depthwise_planes_forward(xq.reshape(xq.size), xq[0].size, per_channel, planes.taps, w,
                              np.zeros(out.shape[1], np.float32) if bias is None else bias,
                              out, planes.wq, planes.length, threads)


@njit(parallel=True, cache=True, fastmath={"contract", "nsz", "arcp"})
def _depthwise_planes_input_grad(g1, g_n, rows, taps, w, gx, sh, sw, ph, pw, wq, length,
                                 plane, threads):
    # gx[n, ci] = the sum over its m output channels co and taps t of w[co, t] times dy's
    # padded row (rows apart in g1, from sample n's g_n values) added at taps[t] + p into
    # the channel's phase planes (the adjoint of the forward's reads), then gathered back
    # from the planes. dy is zero in the padded columns, so they add nothing.
    n_batch, cin, h, wi = gx.shape
    mult = w.shape[0] // cin
    jobs = n_batch * cin
    gx1 = gx.reshape(gx.size)
    gather = taps.size == 9 and sh * sw == 1 and mult == 1  # a 3x3 conv of dy
    reach = taps.max()  # plane = reach + length at stride 1
    flipped = reach - taps
    for t in prange(threads):
        buf = np.empty(sh * sw * plane, np.float32)
        padded = np.zeros(2 * reach + length, np.float32) if gather else buf
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            n, ci = job // cin, job % cin
            if gather:
                # buf[q] = the sum over taps k of w[k] dy[q - taps[k]], in registers, in
                # the order the axpys below add them: dy's row between `reach` zeros,
                # read from reach - taps[k] (0.65x the time, 3x3 on 14x14 maps)
                src = np.uint64(n * g_n + ci * rows * length)
                for p in range(np.uint64(length)):
                    padded[np.uint64(reach) + p] = g1[src + p]
                _nine_taps(padded, 0, flipped, w[ci], np.float32(0.0), buf, plane)
            else:
                buf[:] = 0.0
                for q in range(mult):
                    co = ci * mult + q
                    src = np.uint64(n * g_n + (ci * rows + q) * length)
                    for k in range(taps.size):
                        wv = w[co, k]
                        dst = np.uint64(taps[k])
                        for p in range(np.uint64(length)):
                            buf[dst + p] += wv * g1[src + p]
            # gx[n, ci], flat and unsigned: views cost reference counting, signed offsets
            # negative-index fix-ups
            d0 = np.uint64(job * h * wi)
            for k in range(np.uint64(h * wi)):
                gx1[d0 + k] = 0.0  # pixels no window reads: past the planes
            for a in range(sh):
                r_lo, r_hi = phase_span(a, sh, ph, h, plane // wq)
                for b in range(sw):
                    c_lo, c_hi = phase_span(b, sw, pw, wi, wq)
                    for r in range(r_lo, r_hi):
                        dst = d0 + np.uint64((r * sh + a - ph) * wi + b - pw + c_lo * sw)
                        src = np.uint64((a * sw + b) * plane + r * wq + c_lo)
                        for c in range(np.uint64(c_hi - c_lo)):
                            gx1[dst + c * np.uint64(sw)] = buf[src + c]


def depthwise_input_grad(planes: PhasePlanes, gp: np.ndarray, w: np.ndarray,
                         threads: int) -> np.ndarray:
    """dx of a depthwise conv (any stride, dilation and channel multiplier), N x Cin x H x
    W: each output channel's dy row (`depthwise_rows`) added tap by tap, times the tap's
    weight, where the forward read the input: seed 003's full convolution of dy with the
    rotated kernel, as the forward's adjoint."""
    gx = np.empty(planes.shape, np.float32)
    _depthwise_planes_input_grad(gp.reshape(gp.size), gp[0].size, gp.shape[1] // gx.shape[1],
                                 planes.taps, w, gx, *planes.stride, *planes.pad, planes.wq,
                                 planes.length, planes.plane, threads)
    return gx
