"""Backward kernels of convolution: the gradients of the input and of the weights.

For y = conv(x, w) the input gradient is the full convolution of dy with the kernel
rotated by 180 degrees, and the weight gradient the correlation of x with dy (seed 003).

Convs that the executor runs with its register-tiled direct kernel (`_tiled`: no groups,
no dilation across, wider than 1x1 or strided) train on it too, on x zero-padded in NHWC.
Their weight gradient is `_wgrad`'s register-tiled kernel on the input's stride-phase
planes (`phase_planes`, `conv2d_weight_grad`) where that pays (few output channels:
`_backward_ops._planes_pay`), else one GEMM per chunk of samples, dw = dy @ cols, whose
columns are whole runs of the padded NHWC rows the forward kept (`conv2d_nhwc_backward`).
The input gradient of a stride-1 conv is itself a stride-1 tiled conv of dy with the
rotated kernel (`conv2d_input_grad`); of a strided one, the GEMM dy.T @ w added back
window by window into padded rows.

Convs with one input channel per group (depthwise) run on the same phase planes: the
forward one axpy per tap along a padded row (`depthwise_forward`), the weight gradient
`_wgrad`'s kernel group by group, the input gradient the forward's adjoint, one axpy per
tap into the planes (`depthwise_input_grad`).

Other convs go through im2col's columns (K x pixels), cols = im2col(x), y = w @ cols:

    dw = dy @ cols.T        dx = col2im(w.T @ dy)

where col2im, the adjoint of im2col, adds each column entry back into the pixel it was
read from.

Arrays are C-contiguous float32 N x C x H x W; gradients of inputs are added into
zeroed arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba import _tiled as tiled_k
from nasgraph.backends.numba import _tiled_narrow as narrow_k
from nasgraph.backends.numba import _wgrad as wgrad_k

# samples share one GEMM until it has this many columns: fewer, larger BLAS calls
COLUMNS = 2048
_NO_RES = np.zeros((1, 1, 1, 1), np.float32)


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


def padded_nhwc(x: np.ndarray, pad: tuple[int, int], threads: int) -> np.ndarray:
    """x (N x C x H x W) copied into zero-padded N x (H+2ph) x (W+2pw) x C: what the tiled
    kernels read."""
    n, c, h, w = x.shape
    xp = np.empty((n, h + 2 * pad[0], w + 2 * pad[1], c), np.float32)
    (tiled_k.to_padded_nhwc_1 if threads == 1 else tiled_k.to_padded_nhwc)(x, xp, *pad)
    return xp


def conv2d_direct(xp: np.ndarray, w: np.ndarray, bias: np.ndarray | None, out: np.ndarray,
                  stride: tuple[int, int], dilation: int, threads: int) -> None:
    """out = conv(x, w) + bias by the executor's register-tiled direct kernel (`_tiled`),
    from x zero-padded in NHWC (`padded_nhwc`): w Cout x Cin x kh x kw (no groups), out
    N x Cout x Ho x Wo; `dilation` down (none across). Faster than im2col + GEMM wherever
    the executor picks it (3x3 convs of 8-32 channels at batch 128: 1.5-3x)."""
    n, _, _, cin = xp.shape
    cout, _, kh, _ = w.shape
    # convs of at most 8 output channels on the narrow twin's 12 x 8 tiles: 16-channel
    # ones would leave half the accumulators zero (Fashion ResNet's 7-channel 3x3 convs,
    # forward or input gradient: 0.5x the time, one thread, batch 128)
    kernels = narrow_k if cout <= narrow_k.V and out.shape[2] * out.shape[3] >= narrow_k.R \
        else tiled_k
    (kernels.conv2d_tiled_1 if threads == 1 else kernels.conv2d_tiled)(
        xp.reshape(n, xp.shape[1], -1), 0, kernels.pack_weights(w),
        kernels.pack_bias(bias, cout), _NO_RES, out, 0, cout, cin, kh, *stride, dilation, 0,
        0, out.shape[2], out.shape[3], -1, -1, threads)


def conv2d_input_grad(gy: np.ndarray, w: np.ndarray, gx: np.ndarray, pad: tuple[int, int],
                      dilation: int, threads: int) -> None:
    """gx = the input gradient of a stride-1 conv (no groups, `dilation` down): the full
    convolution of gy with the kernel rotated by 180 degrees and its channel axes
    swapped (seed 003), that is a stride-1 conv of gy padded by (k - 1) * d - p,
    run by `conv2d_direct`. Overwrites gx."""
    kh, kw = w.shape[2:]
    rotated = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    gp = padded_nhwc(gy, ((kh - 1) * dilation - pad[0], kw - 1 - pad[1]), threads)
    conv2d_direct(gp, rotated, None, gx, (1, 1), dilation, threads)


@njit(parallel=True, cache=True)
def conv2d_nhwc_backward(xp, gy, w2, parts, gxp, kh, kw, sh, sw, dh, need_dw, need_dx,
                         threads):
    """Gradients of a conv (no groups, `dh` dilation down, none across) from its input
    zero-padded in NHWC (xp, N x Hp x Wp x Cin, as the forward had it; only its shape is
    read where not `need_dw`) and gy (N x Cout x Ho x Wo): where `need_dw` parts[t] +=
    thread t's share of the weight gradient, and where `need_dx` gxp += the input
    gradient, padded like xp. Both in the taps-outer, channels-inner
    order of a window: w2 is the weight as Cout x (kh * kw * Cin), parts threads x Cout x
    (kh * kw * Cin) (the caller sums and reorders).

        dw = gy @ cols        back = gy.T @ w2, added back window by window

    The window of an output pixel is kh contiguous runs of kw * Cin values of xp, so the
    columns (pixels x K) are copies of whole runs and the input gradient adds whole runs,
    without the per-value bounds of NCHW's im2col."""
    n_batch, hp, wp, cin = xp.shape
    cout, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    hw, run = ho * wo, kw * cin
    k = kh * run
    per = max(1, COLUMNS // hw)
    xf, gy1, gxf = xp.reshape(xp.size), gy.reshape(gy.size), gxp.reshape(gxp.size)
    run_u = np.uint64(run)
    for t in prange(threads):
        lo, hi = t * n_batch // threads, (t + 1) * n_batch // threads
        for n0 in range(lo, hi, per):
            m = min(per, hi - n0)
            rows = np.empty((cout, m * hw), np.float32)
            _gather_rows(gy1, cout, hw, n0, m, 0, rows)
            if need_dw:
                cols = np.empty((m * hw, k), np.float32)
                cols1 = cols.reshape(cols.size)
                for s in range(m):
                    base = (n0 + s) * hp * wp * cin
                    for oh in range(ho):
                        for ow in range(wo):
                            dst = np.uint64((s * hw + oh * wo + ow) * k)
                            for i in range(kh):
                                src = np.uint64(base + ((oh * sh + i * dh) * wp + ow * sw)
                                                * cin)
                                at = dst + np.uint64(i) * run_u
                                for q in range(run_u):
                                    cols1[at + q] = xf[src + q]
                parts[t] += np.dot(rows, cols)
            if not need_dx:
                continue
            back = np.dot(rows.T, w2)  # pixels x K, laid out as cols
            back1 = back.reshape(back.size)
            for s in range(m):
                base = (n0 + s) * hp * wp * cin
                for oh in range(ho):
                    for ow in range(wo):
                        src = np.uint64((s * hw + oh * wo + ow) * k)
                        for i in range(kh):
                            dst = np.uint64(base + ((oh * sh + i * dh) * wp + ow * sw) * cin)
                            at = src + np.uint64(i) * run_u
                            for q in range(run_u):
                                gxf[dst + q] += back1[at + q]


# a chunk of samples' dy rows and input planes of one group, in float32 values, that
# `_wgrad` sums before it adds its accumulators into float64: a quarter of a 512 KB L2
CHUNK_VALUES = 32768


class PhasePlanes(NamedTuple):
    """A conv's input zero-padded and split into its stride phases (`_wgrad`'s layout,
    `phase_planes`): xq is N x C*sh*sw x `plane`, channel c's planes from c*sh*sw*plane
    in a sample's values. Output pixel (oh, ow) is p = oh*wq + ow of a row `length`
    long (whole vectors); tap t reads x at its offset taps[t] + p into a channel's planes."""

    xq: np.ndarray
    shape: tuple[int, ...]  # x's
    out_hw: tuple[int, int]  # Ho, Wo
    wq: int
    length: int
    plane: int
    taps: np.ndarray  # int64, kh*kw: each tap's offset into a channel's planes
    stride: tuple[int, int]
    pad: tuple[int, int]


def phase_planes(x: np.ndarray, out_hw: tuple[int, int], kernel: tuple[int, int],
                 stride: tuple[int, int], pad: tuple[int, int], dilation: tuple[int, int]
                 ) -> PhasePlanes:
    """x (N x C x H x W) as `PhasePlanes` for a conv of this geometry: planes Wq = Wo +
    (kw-1)*dw // sw wide, so that every tap's window of a row fits in a row, and long
    enough for the farthest tap to read a whole padded row of dy."""
    (ho, wo), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, stride, dilation
    wq = wo + (kw - 1) * dw // sw
    length = -(-ho * wq // wgrad_k.LANES) * wgrad_k.LANES
    plane = (kh - 1) * dh // sh * wq + (kw - 1) * dw // sw + length
    taps = np.array([(i * dh % sh * sw + j * dw % sw) * plane + i * dh // sh * wq
                     + j * dw // sw for i in range(kh) for j in range(kw)], np.int64)
    xq = np.empty((x.shape[0], x.shape[1] * sh * sw, plane), np.float32)
    wgrad_k.to_phase_planes(x, xq, sh, sw, *pad, wq)
    return PhasePlanes(xq, x.shape, out_hw, wq, length, plane, taps, stride, pad)


def _rows(planes: PhasePlanes, gy: np.ndarray, groups: int, rows: int) -> np.ndarray:
    # gy as `_wgrad.to_rows` lays it out: each group's channels padded to `rows` rows
    gp = np.empty((gy.shape[0], groups * rows, planes.length), np.float32)
    wgrad_k.to_rows(gy, gp, planes.wq, groups)
    return gp


def _tile(groups: int, out_per_group: int) -> tuple[int, int]:
    # `_wgrad`'s tile (rows, taps): 4 x 3 for ungrouped convs and groups of 4+ outputs
    return wgrad_k.TILES[0] if groups == 1 or out_per_group >= 4 else wgrad_k.TILES[1]


def conv2d_weight_grad(planes: PhasePlanes, gy: np.ndarray, groups: int,
                       kernel: tuple[int, int], threads: int,
                       gp: np.ndarray | None = None) -> np.ndarray:
    """The weight gradient of a conv, Cout x Cin/G x kh x kw, by `_wgrad`'s register-
    tiled kernels: each tap's sum over the batch is a dot product of dy's padded rows with
    one offset into the input's `planes`; no im2col columns are copied. gy: N x Cout x Ho
    x Wo; `gp`: gy already laid out as `depthwise_rows` gives it."""
    n = gy.shape[0]
    cout, cin = gy.shape[1], planes.shape[1]
    cig, cog = cin // groups, cout // groups
    r, s = _tile(groups, cog)
    blocks = -(-cog // r)
    if gp is None:
        gp = _rows(planes, gy, groups, blocks * r)
    phases = planes.stride[0] * planes.stride[1]
    ntaps = cig * len(planes.taps)
    tiles = -(-ntaps // s)
    offs = np.empty((groups, tiles * s), np.int64)  # the last tile padded with repeats
    channels = np.arange(cin).reshape(groups, cig, 1) * (phases * planes.plane)
    offs[:, :ntaps] = (channels + planes.taps).reshape(groups, ntaps)
    offs[:, ntaps:] = offs[:, ntaps - 1:ntaps]
    parts = np.zeros((threads, groups, blocks, tiles, r * s * wgrad_k.LANES))
    per_group = (gp[0].size + planes.xq[0].size) // groups  # a sample's, a tile's group
    wgrad_k.weight_grad(gp.reshape(gp.size), gp[0].size, planes.xq.reshape(planes.xq.size),
                        planes.xq[0].size, offs.reshape(groups, tiles, s), parts, n, blocks,
                        planes.length // wgrad_k.LANES, max(1, CHUNK_VALUES // per_group),
                        threads)
    sums = parts.sum(axis=0).reshape(groups, blocks, tiles, r, s, wgrad_k.LANES).sum(axis=5)
    sums = sums.transpose(0, 1, 3, 2, 4).reshape(groups, blocks * r, tiles * s)
    return sums[:, :cog, :ntaps].astype(np.float32).reshape(cout, cig, *kernel)


def depthwise_rows(planes: PhasePlanes, gy: np.ndarray) -> np.ndarray:
    """gy laid out for a depthwise conv's `conv2d_weight_grad` and
    `depthwise_input_grad`: each input channel's Cout/Cin rows padded to whole tiles."""
    cin, cout = planes.shape[1], gy.shape[1]
    r = _tile(cin, cout // cin)[0]
    return _rows(planes, gy, cin, -(-(cout // cin) // r) * r)


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
            acc[:] = bias[co]
            base = n * x_n + co // mult * ci_n
            for k in range(taps.size):
                wv = w[co, k]
                src = np.uint64(base + taps[k])
                for p in range(np.uint64(length)):
                    acc[p] += wv * x1[src + p]
            # out[n, co], flat and unsigned: views cost reference counting, signed offsets
            # negative-index fix-ups
            dst = np.uint64(job * ho * wo)
            for r in range(ho):
                d, a = dst + np.uint64(r * wo), np.uint64(r * wq)
                for c in range(np.uint64(wo)):
                    out1[d + c] = acc[a + c]


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
    for t in prange(threads):
        buf = np.empty(sh * sw * plane, np.float32)
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            n, ci = job // cin, job % cin
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
                r_lo, r_hi = wgrad_k.phase_span(a, sh, ph, h, plane // wq)
                for b in range(sw):
                    c_lo, c_hi = wgrad_k.phase_span(b, sw, pw, wi, wq)
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


@njit(parallel=True, cache=True)
def from_padded_nhwc(xp, x, ph, pw):
    """The interior of zero-padded N x Hp x Wp x C `xp` -> N x C x H x W `x`."""
    n_batch, c_in, h, w = x.shape
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        for r in range(h):
            for q in range(w):
                x[n, c, r, q] = xp[n, r + ph, q + pw, c]


_FAST = {"reassoc", "contract", "nsz", "arcp"}


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
