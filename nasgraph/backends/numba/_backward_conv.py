"""Backward kernels of convolution: the gradients of the input and of the weights.

For y = conv(x, w) the input gradient is the full convolution of dy with the kernel
rotated by 180 degrees, and the weight gradient the correlation of x with dy (seed 003).

Convs that the executor runs with its register-tiled direct kernel (`_tiled`: no groups,
no dilation across, wider than 1x1 or strided) train on it too, on x zero-padded in NHWC
(`conv2d_direct`; `_tiled_narrow` for at most 8 output channels, and where numba
compiles 512-bit vectors (`_isa`) `_tiled_mid` for 9-16 and `_tiled_wide` or
`_tiled_wide48` for more; 3-column convs on tiles of a row, `row_tiles`: of 9-16 on
`_tiled_row`'s where vectors are 512 bits, of 4-8 on `_tiled_row8`'s and 9-32 on
`_tiled_row4`'s where they are 256). Their weight gradient, where vectors are 512 bits
and there are more than 8 output channels, or 256 bits and at most 32 (28 if strided;
`nhwc_weight_grad_pays`), is `_wgrad_nhwc`'s register tiles on the padded NHWC input the
forward kept and dy in NHWC (`conv2d_weight_grad_nhwc`; `_wgrad_row`'s tiles of a row for
3-column convs where they fit, `row_weight_grad`); else
`_planes_wgrad.conv2d_weight_grad` where that pays (few output channels:
`_conv_paths.planes_pay`), else one GEMM per chunk of samples, dw = dy @ cols, whose
columns are whole runs of the padded NHWC rows (`conv2d_nhwc_backward`). The input
gradient of a stride-1 conv is itself a stride-1 tiled conv of dy with the rotated kernel
(`conv2d_input_grad`), of 3x3 convs of many channels on `_winograd`'s F(4x4, 3x3)
(`winograd_pays`); of a strided one, the GEMM dy.T @ w added back window by window
into padded rows. Depthwise convs train in `_depthwise` (small outputs, in NHWC) or
`_planes`.

Other convs go through im2col's columns (K x pixels), cols = im2col(x), y = w @ cols:

    dw = dy @ cols.T        dx = col2im(w.T @ dy)

where col2im, the adjoint of im2col, adds each column entry back into the pixel it was
read from.

Arrays are C-contiguous float32 N x C x H x W; gradients of inputs are added into
zeroed arrays.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba import _tiled as tiled_k
from nasgraph.backends.numba import _tiled_mid as mid_k
from nasgraph.backends.numba import _tiled_narrow as narrow_k
from nasgraph.backends.numba import _tiled_row as row_k
from nasgraph.backends.numba import _tiled_row4 as row4_k
from nasgraph.backends.numba import _tiled_row8 as row8_k
from nasgraph.backends.numba import _tiled_wide as wide_k
from nasgraph.backends.numba import _tiled_wide48 as wide48_k
from nasgraph.backends.numba import _wgrad_nhwc as wgrad_nhwc_k
from nasgraph.backends.numba import _wgrad_row as wgrad_row_k
from nasgraph.backends.numba import _winograd as winograd_k
from nasgraph.backends.numba._isa import l2_bytes, wide_vectors
from nasgraph.backends.numba._transpose import (
    store_columns2,
    store_columns2x8,
    store_columns4,
    store_columns4x8,
    store_columns8,
    store_columns8x8,
)

# samples share one GEMM until it has this many columns: fewer, larger BLAS calls
COLUMNS = 2048
_NO_RES = np.zeros((1, 1, 1, 1), np.float32)
WIDE = wide_vectors()  # 512-bit vectors: `conv2d_direct` may take `_tiled_wide`'s tiles
# pixels that `_wgrad_nhwc`'s tiles sum in float32 before a thread adds them into its
# float64 share: a chunk of samples whose input and dy the tiles re-read from cache
CHUNK_PIXELS = 1024
# the bytes of input and dy a chunk may hold: half of a core's L2 (`chunk_samples`)
CHUNK_BYTES = (l2_bytes() or 0) // 2
NHWC_TILES = wgrad_nhwc_k.NHWC_TILES  # (columns, channels): `nhwc_weight_grad_tile`


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
def conv2d_backward(x, w, gy, gx, gw_parts, kh, kw, sh, sw, ph, pw, dh, dw, need_dx, need_dw,
                    threads):
    """Gradients of a `conv2d_forward` conv: gy N x Cout x Ho x Wo -> gx += dx (N x Cin x
    H x W, when `need_dx`) and, when `need_dw`, gw_parts[t] += the weight gradient of
    thread t's samples (threads x G x Cout/G x K; the caller sums them: no two threads add
    into one array).

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
                _gather_rows(gy1, cout, hw, n0, m, g * cog, rows)
                if need_dw:
                    _columns(x1, cin, h, wi, n0, m, g * cig, cols, kh, kw, sh, sw, ph, pw,
                             dh, dw, ho, wo, pointwise)
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


def lanes(channels: int, width: int) -> int:
    """Vector lanes that tiles of `width` channels spend on `channels`: whole tiles."""
    return -(-channels // width) * width


class PaddedNHWC(NamedTuple):
    """An N x C x H x W tensor as the tiled kernels read it: zero-padded by `pad` in NHWC
    (what `padded_nhwc` copies). A conv's input or dy, written so by the BatchNorm that
    produces it (`_conv_layouts.padded_x`, `_conv_layouts.padded_dy` say where) instead of
    copied by the conv."""

    xp: np.ndarray  # N x (H + 2 pad[0]) x (W + 2 pad[1]) x C
    pad: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, hp, wp, c = self.xp.shape
        return n, c, hp - 2 * self.pad[0], wp - 2 * self.pad[1]


def padded_nhwc(x: np.ndarray, pad: tuple[int, int], threads: int) -> np.ndarray:
    """x (N x C x H x W) copied into zero-padded N x (H+2ph) x (W+2pw) x C: what the tiled
    kernels read."""
    n, c, h, w = x.shape
    xp = np.empty((n, h + 2 * pad[0], w + 2 * pad[1], c), np.float32)
    (tiled_k.to_padded_nhwc_1 if threads == 1 else tiled_k.to_padded_nhwc)(x, xp, *pad)
    return xp


def conv2d_direct(xp: np.ndarray, w: np.ndarray, bias: np.ndarray | None, out: np.ndarray,
                  stride: tuple[int, int], dilation: int, threads: int,
                  flip: bool = False) -> None:
    """out = conv(x, w) + bias by the executor's register-tiled direct kernel (`_tiled`),
    from x zero-padded in NHWC (`padded_nhwc`): w Cout x Cin x kh x kw (no groups; with
    `flip`, Cin x Cout x kh x kw, run rotated: `_tiled.pack_tiles`), out N x Cout x Ho x Wo;
    `dilation` down (none across). Faster than im2col + GEMM wherever the executor picks it
    (3x3 convs of 8-32 channels at batch 128: 1.5-3x)."""
    n, _, _, cin = xp.shape
    cout, kh = out.shape[1], w.shape[2]
    pixels = out.shape[2] * out.shape[3]
    rows = row_tiles(cout, w.shape[3], stride[1], out.shape[3])
    if rows is not None:
        (rows.conv2d_row_1 if threads == 1 else rows.conv2d_row)(
            xp.reshape(n, xp.shape[1], -1), tiled_k.pack_tiles(w, rows.V, flip),
            rows.pack_bias(bias, cout), out, cout, cin, kh, stride[0], dilation, threads)
        return
    # convs of at most 8 output channels on the narrow twin's 12 x 8 tiles: 16-channel
    # ones would leave half the accumulators zero (Fashion ResNet's 7-channel 3x3 convs,
    # forward or input gradient: 0.5x the time, one thread, batch 128); where vectors are
    # 512 bits (`_isa`), of 9-16 on the mid twin's 12 x 16 and of more than 16 on the
    # wide twins' 8 x 32 or 8 x 48, whichever pads the channels less
    if cout <= narrow_k.V and pixels >= narrow_k.R:
        kernels = narrow_k
    elif WIDE and cout > tiled_k.V and pixels >= wide_k.R:
        kernels = wide48_k if lanes(cout, wide48_k.V) < lanes(cout, wide_k.V) else wide_k
    elif WIDE and cout > narrow_k.V and pixels >= mid_k.R:
        kernels = mid_k
    else:
        kernels = tiled_k
    (kernels.conv2d_tiled_1 if threads == 1 else kernels.conv2d_tiled)(
        xp.reshape(n, xp.shape[1], -1), 0, tiled_k.pack_tiles(w, kernels.V, flip),
        kernels.pack_bias(bias, cout), _NO_RES, out, 0, cout, cin, kh, *stride, dilation, 0,
        0, out.shape[2], out.shape[3], -1, -1, threads)


def winograd_pays(cin: int, cout: int, kernel: tuple[int, int], dilation: int,
                  out_size: tuple[int, int]) -> bool:
    """Whether `conv2d_input_grad` (a stride-1 conv) runs as Winograd F(4x4, 3x3)
    (`conv2d_winograd`): 3x3, no dilation, maps of at least 4 x 4, and at least as many
    input and output channels as `WINOGRAD_FROM` gives for the vector width. One thread,
    weights transformed in the call, output NCHW, against the direct kernels here
    (docs/numba.md, "Winograd in training"). On an AVX-512 Xeon, batch 64 and 128:
    0.58-0.79x the time for 64-128 channels on 4x4 to 16x16 maps; 32-45 channels
    0.85-1.05x. Compiled for AVX2 (`NUMBA_CPU_NAME=haswell`) on the same Xeon, where the
    direct kernel is the 6 x 16 tile: 0.40-0.91x for 28-90 channels on 4x4 to 16x16 maps
    (28 on 14x14 0.97-0.99x), 16-24 channels 0.93-1.13x. On 2 x 2 maps the kernel's 4 x 4
    tiles do not fit.

    The input gradient only: Winograd rounds 1e-6 to 1e-5 of a conv's output scale, the
    direct kernel about 1e-7, and in the forward that error reaches the BatchNorm
    statistics, which deep nets at small batches amplify: with the forward on Winograd
    too, wide_resnet50_2's gradients at batch 4 missed float64 by 1.8% of fc.weight's
    scale with AVX2 code, 9x torch's own float32 distance (the zoo's gradient test allows
    8x), and by 11% of a conv's with the rule for AVX2. The input gradient's error goes
    back through the BatchNorms linearly: the zoo's tests pass."""
    channels, side = WINOGRAD_FROM[WIDE]
    return (kernel == (3, 3) and dilation == 1 and min(cin, cout) >= channels
            and min(out_size) >= side)


# `winograd_pays`' fewest input and output channels and smallest map side, where vectors
# are 512 bits (`WIDE`: True) and where they are 256
WINOGRAD_FROM = {True: (64, 4), False: (28, 4)}


def conv2d_winograd(xp: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                    out: np.ndarray, threads: int, flip: bool = False) -> None:
    """`conv2d_direct`'s conv, 3x3 and stride 1, by `_winograd`'s F(4x4, 3x3) kernel, its
    weights transformed here (every step: they change), `flip` as there."""
    cout = out.shape[1]
    u = winograd_k.pack_weights(w, flip)
    zeros = np.zeros(u.shape[0] * u.shape[1] * tiled_k.V, np.float32)
    work = np.empty((threads, winograd_k.work_size(xp.shape[3], cout)), np.float32)
    (winograd_k.conv2d_winograd_1 if threads == 1 else winograd_k.conv2d_winograd)(
        xp.reshape(xp.shape[0], xp.shape[1], -1), 0, u, zeros,
        zeros if bias is None else tiled_k.pack_bias(bias, cout), _NO_RES, out, 0, cout,
        0, 0, out.shape[2], out.shape[3], -1, -1, work, threads)


ROW8_FEWEST_CHANNELS = 4  # `row_tiles`' fewest output channels on `_tiled_row8`
ROW4_MOST_CHANNELS = 32  # and most on `_tiled_row4`: two blocks of 16


def row_tiles(cout: int, kw: int, stride_w: int, wo: int) -> ModuleType | None:
    """The tiles of pixels of a row on which `conv2d_direct` runs a conv, each input value
    loaded once for the three kernel columns that read it, or None. 3 columns and stride
    1 across, and:
    - where vectors are 512 bits, 9-16 output channels on `_tiled_row`'s 8 pixels (one
      vector a pixel, where `_tiled_mid`'s 12 x 16 tiles load an input value for every
      multiply-add), on rows that fill at least 7/8 of the tiles they take (8, 14-16,
      21-24, ... pixels: a row's last tile recomputes pixels of the one before);
    - where they are 256 bits, ROW8_FEWEST_CHANNELS-8 on `_tiled_row8`'s 8 pixels (one
      vector a pixel, where `_tiled_narrow`'s 12 x 8 tiles load an input value for every
      multiply-add), on such rows: 0.67-0.86x their time for 4-8 channels on 8x8 to 28x28
      maps (1-3 channels: 0.87-0.99x);
    - and 9-ROW4_MOST_CHANNELS on `_tiled_row4`'s 4 pixels (two vectors a pixel, where
      `_tiled`'s 6 x 16 tiles load an input value for every two), on rows of whole tiles:
      0.82-0.95x their time for 12-32 channels on 8x8 to 32x32 maps, 0.73-0.83x on 4x4,
      0.42-0.53x for stems of 1-3 input channels (rows of 14: 0.99-1.04x; 64 channels on
      8x8: 0.97-1.00x).
    One thread, batch 32-128, AMD EPYC (docs/numba.md, "Tiles of a row")."""
    if kw != row_k.KW or stride_w != 1:
        return None
    if not WIDE and cout > narrow_k.V:
        fits = cout <= ROW4_MOST_CHANNELS and wo % row4_k.R == 0
        return row4_k if fits else None
    if wo < row_k.R:  # the 8-pixel twins' tiles
        return None
    kernels, fewest = (row_k, narrow_k.V + 1) if WIDE else (row8_k, ROW8_FEWEST_CHANNELS)
    tiles = -(-wo // kernels.R)
    fills = 8 * wo >= 7 * tiles * kernels.R
    return kernels if fewest <= cout <= kernels.V and fills else None


def conv2d_input_grad(gy: np.ndarray, w: np.ndarray, gx: np.ndarray, pad: tuple[int, int],
                      dilation: int, threads: int) -> np.ndarray:
    """gx = the input gradient of a stride-1 conv (no groups, `dilation` down): the full
    convolution of gy with the kernel rotated by 180 degrees and its channel axes
    swapped (seed 003), that is a stride-1 conv of gy padded by (k - 1) * d - p,
    run by `conv2d_winograd` where that pays (`winograd_pays`), else by `conv2d_direct`.
    Overwrites gx; returns gy's padded NHWC copy, which the weight gradient may read
    (`dy_padding`). gy may come so already (`PaddedNHWC`)."""
    if isinstance(gy, PaddedNHWC):
        gp = gy.xp
    else:
        gp = padded_nhwc(gy, dy_padding(w.shape[2:], pad, dilation), threads)
    if winograd_pays(w.shape[0], w.shape[1], w.shape[2:], dilation, gx.shape[2:]):
        conv2d_winograd(gp, w, None, gx, threads, flip=True)
    else:
        conv2d_direct(gp, w, None, gx, (1, 1), dilation, threads, flip=True)
    return gp


def dy_padding(kernel: tuple[int, int], pad: tuple[int, int], dilation: int
               ) -> tuple[int, int]:
    """How far a stride-1 conv's input gradient pads dy: (k - 1) * d - p (no dilation
    across)."""
    return (kernel[0] - 1) * dilation - pad[0], kernel[1] - 1 - pad[1]


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


def nhwc_weight_grad_pays(out_channels: int, stride: tuple[int, int]) -> bool:
    """Whether a tiled conv's weight gradient runs on `_wgrad_nhwc`'s tiles
    (`conv2d_weight_grad_nhwc`). Where vectors are 512 bits, for more than 8 output
    channels. Measured on an AVX-512 Xeon, one thread (docs/numba.md, "The weight
    gradient"): 0.4-0.75x the time of `_wgrad`'s tiles and of the GEMM of copied columns
    for 16-64 channels, as long for 90 channels on 4x4 maps; at 8 channels on 28x28, 1.3x
    `_wgrad`'s, whose tiles are of 4 output channels. Where they are 256 bits, for at most
    NHWC_MAX_CHANNELS_256 at stride 1 and NHWC_MAX_CHANNELS_256_STRIDED at others.
    Measured on an AMD EPYC with AVX2, one thread, 3x3 convs at batch 128, against
    `_wgrad` with the phase planes it lays out (docs/numba.md, "The weight gradient on
    AVX2"): 0.46-0.91x for 6-28 channels with dy read from the input gradient's padded
    copy, 0.48-0.77x for strided ones (and a third to two thirds of the GEMM's time).
    Whole conv backwards against the GEMM, in turns, with the allocator set as a training
    step sets it (`grad._reuse_freed_memory`): 29-32 channels at stride 1 0.67-0.92x on
    7x7 to 28x28 maps (1.01x on 4x4), at stride 2 1.06-1.09x; 36-90 channels at stride 1
    0.88-1.30x. Above, the GEMM keeps them."""
    if WIDE:
        return out_channels > narrow_k.V
    if stride == (1, 1):
        return out_channels <= NHWC_MAX_CHANNELS_256
    return out_channels <= NHWC_MAX_CHANNELS_256_STRIDED


# where vectors are 256 bits, convs of at most this many output channels take
# `_wgrad_nhwc`'s tiles for their weight gradient (`nhwc_weight_grad_pays`): at stride 1
# (29-32 fill the 6 x 16 tile's two vectors of 8 twice), and at others
NHWC_MAX_CHANNELS_256 = 32
NHWC_MAX_CHANNELS_256_STRIDED = 28


@njit(parallel=True, cache=True)
def to_channels_last(gy, gt):
    """gy (N x C x Ho x Wo) -> gt (N x Ho*Wo x Cp), channels C..Cp zero: dy as
    `_wgrad_nhwc`'s tiles read it, a tile's channels of a pixel one run. Each pixel's
    channels are written as one run, read a plane apart: 0.6-0.84x the time of copying
    blocks of 8 pixels a channel (12-90 channels, one thread)."""
    n_batch, c, ho, wo = gy.shape
    hw, cp = ho * wo, gt.shape[2]
    g1, t1 = gy.reshape(gy.size), gt.reshape(gt.size)
    cu, cpu, hwu = np.uint64(c), np.uint64(cp), np.uint64(hw)
    for n in prange(n_batch):
        for q in range(hwu):
            src = np.uint64(n * c * hw) + q
            dst = (np.uint64(n * hw) + q) * cpu
            for k in range(cu):
                t1[dst + k] = g1[src + k * hwu]
            for k in range(cu, cpu):
                t1[dst + k] = 0.0


@njit(inline="always")
def _weight_grad_nhwc(xp, gf, g_geometry, offs, parts, ho, wo, sh, sw, chunk, tile, threads,
                      wide):
    """parts[t] += thread t's share of dw (K x Cp, its samples; Cp: the output channels
    in whole tiles), by `_wgrad_nhwc`'s tiles: NHWC_TILES[tile] (16 columns x 16
    channels, 12 x 32 or 8 x 48 for 512-bit vectors, 12 x 8, 6 x 16 or 4 x 24 for 256-bit
    ones). xp: the input zero-padded in NHWC (N x Hp x Wp x Cin);
    gf: dy in NHWC, flat, with g_geometry = (values a sample, a row, a pixel, the first
    pixel's offset): `to_channels_last`'s layout (Cp values a pixel), or the zero-padded
    copy the input gradient reads (Cout a pixel; a tile's lanes past Cout read the next
    pixels', whose sums no weight takes); offs: each of the K columns' offset from a
    pixel's window in a sample of xp, padded to whole tiles; samples go in chunks of
    `chunk`; wide: tile is one of the 512-bit tiles (0-2), else of the 256-bit ones."""
    n_batch, hp, wp, cin = xp.shape
    gs, grow, gpix, gbase = g_geometry
    cols, chans = NHWC_TILES[tile]
    n_kb, n_cb = offs.shape[0] // cols, parts.shape[2] // chans
    row, xs = wp * cin, hp * wp * cin
    xf = xp.reshape(xp.size)
    for t in prange(threads):
        lo, hi = t * n_batch // threads, (t + 1) * n_batch // threads
        out = np.empty(cols * chans, np.float32)
        for n0 in range(lo, hi, chunk):
            n1 = min(hi, n0 + chunk)
            for cb in range(n_cb):
                for kb in range(n_kb):
                    args = (xf, gf, offs, kb, cb, n0, n1, ho, wo, row, sh, sw, cin, gpix,
                            xs, gs, grow, gbase, out)
                    if wide:  # a constant where inlined: one ISA's tiles compiled
                        if tile == 0:
                            wgrad_nhwc_k.tile_16x16(*args)
                        elif tile == 1:
                            wgrad_nhwc_k.tile_12x32(*args)
                        else:
                            wgrad_nhwc_k.tile_8x48(*args)
                    elif tile == 3:
                        wgrad_nhwc_k.tile_12x8(*args)
                    elif tile == 4:
                        wgrad_nhwc_k.tile_6x16(*args)
                    else:
                        wgrad_nhwc_k.tile_4x24(*args)
                    for k in range(cols):
                        for v in range(chans):
                            parts[t, kb * cols + k, cb * chans + v] += out[k * chans + v]


# `_weight_grad_nhwc` for each vector width. With the width a constant, numba drops the
# other width's branch before it types the calls, so a process compiles only the three
# tiles its CPU takes: on an AMD EPYC (AVX2) the 512-bit ones had been 50 of the 250 s
# that the Fashion ResNet's first training step spent compiling with numba's cache cold
# (docs/numba.md, "A training step's first call compiles only its CPU's tiles").
@njit(parallel=True, cache=True)
def weight_grad_nhwc_512(xp, gf, g_geometry, offs, parts, ho, wo, sh, sw, chunk, tile,
                         threads):
    _weight_grad_nhwc(xp, gf, g_geometry, offs, parts, ho, wo, sh, sw, chunk, tile, threads,
                      True)


@njit(parallel=True, cache=True)
def weight_grad_nhwc_256(xp, gf, g_geometry, offs, parts, ho, wo, sh, sw, chunk, tile,
                         threads):
    _weight_grad_nhwc(xp, gf, g_geometry, offs, parts, ho, wo, sh, sw, chunk, tile, threads,
                      False)


@njit(parallel=True, cache=True)
def weight_grad_rows(xp, gf, g_geometry, parts, ho, wo, sh, dh, kh, chunk, tile, threads):
    """`_weight_grad_nhwc` by `_wgrad_row`'s tiles WG_TILES[tile], each the KW kernel
    columns of a group of input channels in one kernel row x a block of output channels
    (`row_weight_grad` says where): parts[t] += thread t's share of dw (K x Cp, K in
    `_nhwc_columns`' order: kernel row, column, input channel), its samples in chunks of
    `chunk`."""
    n_batch, hp, wp, cin = xp.shape
    gs, grow, gpix, gbase = g_geometry
    row, xs = wp * cin, hp * wp * cin
    xf = xp.reshape(xp.size)
    kw = wgrad_row_k.KW
    v, _, cb = wgrad_row_k.WG_TILES[tile]
    for t in prange(threads):
        lo, hi = t * n_batch // threads, (t + 1) * n_batch // threads
        out = np.empty(kw * cb * v, np.float32)
        for n0 in range(lo, hi, chunk):
            n1 = min(hi, n0 + chunk)
            for g0 in range(0, parts.shape[2], v):
                for i in range(kh):
                    for c0 in range(0, cin, cb):
                        args = (xf, gf, i, c0, g0, n0, n1, ho, wo, row, sh, dh, cin, gpix,
                                xs, gs, grow, gbase, out)
                        if tile == 0:
                            wgrad_row_k.wgrad_row_16(*args)
                        else:
                            wgrad_row_k.wgrad_row_32(*args)
                        for j in range(kw):
                            for c in range(cb):
                                k = (i * kw + j) * cin + c0 + c
                                for q in range(v):
                                    parts[t, k, g0 + q] += out[(j * cb + c) * v + q]


def row_weight_grad(out_channels: int, in_channels: int, kernel: tuple[int, int],
                    stride: tuple[int, int], wo: int) -> int | None:
    """Which of `_wgrad_row`'s tiles (an index of WG_TILES)
    `conv2d_weight_grad_nhwc` takes, or None: those load each input value once for the
    three kernel columns that read it, where `_wgrad_nhwc`'s 16 x 16 and 12 x 32 tiles
    load one for every 16 or 24 multiply-adds. For 3 columns, stride 1 across, input
    channels in whole groups and rows in whole runs of the tile's pixels: 9-16 output
    channels on the 16-channel tile, and where the NHWC tiles take 32-channel blocks
    (17-32, 49-64 channels, ...), the 32-channel tile. One thread, 3x3 convs, dy laid out
    alike (docs/numba.md, "Tiles of a row"): 16 channels 0.66-0.77x the 16 x 16 tile's
    time, 17-64 channels 0.90-0.95x the 12 x 32 tile's."""
    if not (WIDE and out_channels > narrow_k.V and kernel[1] == wgrad_row_k.KW
            and stride[1] == 1):
        return None
    tile = nhwc_weight_grad_tile(out_channels)  # WG_TILES follows NHWC_TILES' first two
    if tile >= len(wgrad_row_k.WG_TILES):  # 8 x 48: no row tile of 48 channels
        return None
    _, pixels, channels = wgrad_row_k.WG_TILES[tile]
    return tile if in_channels % channels == 0 and wo % pixels == 0 else None


def nhwc_weight_grad_tile(out_channels: int) -> int:
    """Which of `_wgrad_nhwc`'s tiles (an index of NHWC_TILES) takes a conv's weight
    gradient. For 512-bit vectors: 16 x 16 for at most 16 output channels, else 12 x 32 or
    8 x 48, whichever pads the channels to fewer lanes (8 x 48 for 33-48, 129-144, ...).
    For 256-bit ones: 12 x 8 for at most 8, else 6 x 16 or 4 x 24, whichever pads fewer
    (4 x 24 for 17-24, 65-72, ...)."""
    first = 0 if WIDE else wgrad_nhwc_k.FIRST_256
    narrow, one, other = NHWC_TILES[first:first + 3]
    if out_channels <= narrow[1]:
        return first
    fewer = lanes(out_channels, other[1]) < lanes(out_channels, one[1])
    return first + (2 if fewer else 1)


def conv2d_weight_grad_nhwc(xp: np.ndarray, gy: np.ndarray, kernel: tuple[int, int],
                            stride: tuple[int, int], dilation: int, threads: int,
                            gp: np.ndarray | None = None, gp_pad: tuple[int, int] = (0, 0)
                            ) -> np.ndarray:
    """The weight gradient (Cout x Cin x kh x kw) of a conv with no groups, `dilation`
    down and none across, from its input zero-padded in NHWC (xp, `padded_nhwc`, as the
    forward read it) and gy (N x Cout x Ho x Wo): dw = dy . cols, seed 003's correlation,
    by `_wgrad_nhwc`'s register tiles, the columns read in place (kh runs of kw * Cin
    values of xp a pixel), dy laid out in NHWC (`to_channels_last`), or read from `gp`,
    dy zero-padded in NHWC by `gp_pad` (the input gradient's copy, `padded_nhwc`), where
    the tiles' reads stay inside it (`shares_padded_dy`). Sums: float32 over CHUNK_PIXELS
    pixels or a sample, float64 across."""
    n, _, wp, cin = xp.shape
    cout, ho, wo = gy.shape[1:]
    tile = nhwc_weight_grad_tile(cout)
    cp = lanes(cout, NHWC_TILES[tile][1])
    offs = _nhwc_columns(kernel, cin, wp, dilation, NHWC_TILES[tile][0])
    if gp is not None and shares_padded_dy(cout, gp_pad, wo):
        gpw = gp.shape[2]
        geometry = (gp[0].size, gpw * cout, cout, (gp_pad[0] * gpw + gp_pad[1]) * cout)
        gf = gp.reshape(gp.size)
    else:
        gt = np.empty((n, ho * wo, cp), np.float32)
        to_channels_last(gy, gt)
        geometry, gf = (ho * wo * cp, wo * cp, cp, 0), gt.reshape(gt.size)
    parts = np.zeros((threads, offs.size, cp))
    chunk = chunk_samples(ho * wo, (xp[0].size + geometry[0]) * xp.itemsize)
    row_tile = row_weight_grad(cout, cin, kernel, stride, wo)
    if row_tile is not None:
        weight_grad_rows(xp, gf, geometry, parts, ho, wo, stride[0], dilation, kernel[0],
                         chunk, row_tile, threads)
    else:
        run = weight_grad_nhwc_512 if tile < wgrad_nhwc_k.FIRST_256 else weight_grad_nhwc_256
        run(xp, gf, geometry, offs, parts, ho, wo, *stride, chunk, tile, threads)
    dw = np.empty((cout, cin, *kernel), np.float32)
    unpack_weight_grad(parts, dw)
    return dw


def chunk_samples(pixels: int, sample_bytes: int) -> int:
    """How many samples of `pixels` output pixels `_wgrad_nhwc`'s tiles take at a time:
    CHUNK_PIXELS pixels, fewer where their input and dy (`sample_bytes` a sample) would
    not fit in CHUNK_BYTES, half of the L2 (1 and more). Every tile pass reads the whole
    chunk again, from L2 where it fits. Measured on an AMD EPYC (512 KB of L2), one
    thread, 3x3 convs at batch 128 (docs/numba.md, "The weight gradient on AVX2"): where
    1024 pixels held 330-590 KB, 28 and 32 channels onto 4x4 and 8x8 maps, 0.73-0.91x
    the time; where they held less (7-24 channels onto 7x7 to 32x32), smaller chunks
    were no faster. Where the L2 cannot be read, CHUNK_PIXELS alone."""
    chunk = max(1, CHUNK_PIXELS // pixels)
    if CHUNK_BYTES:
        chunk = min(chunk, max(1, CHUNK_BYTES // sample_bytes))
    return chunk


def shares_padded_dy(out_channels: int, pad: tuple[int, int], width: int) -> bool:
    """Whether `conv2d_weight_grad_nhwc` reads dy (`width` pixels a row) from the input
    gradient's NHWC copy, zero-padded by `pad`, in place. Where the output channels fill
    the tiles' vectors (16, 32, 64, 96 ...), always. Where they do not, a tile's last
    lanes read the next pixel's values, whose sums are dropped: taken for at most
    SHARED_DY_MAX_CHANNELS channels, where the padding after the copy's last pixel (the
    right border and the bottom rows) holds those lanes."""
    over = lanes(out_channels, NHWC_TILES[nhwc_weight_grad_tile(out_channels)][1]) \
        - out_channels
    return over == 0 or (out_channels <= SHARED_DY_MAX_CHANNELS
                         and over <= (pad[1] + pad[0] * (width + 2 * pad[1])) * out_channels)


# Output channels up to which the weight gradient reads the padded dy in place although
# they do not fill its tiles' vectors. Measured on an AVX-512 Xeon, one thread, 3x3
# convs at batch 128 (docs/numba.md, "dy read in place"): 0.78-0.94x the time of laying
# dy out again for 12-28 channels; 0.91-1.08x for 36-100, where the copy is a smaller
# share and each pixel's vectors straddle cache lines
SHARED_DY_MAX_CHANNELS = 32


@functools.lru_cache(maxsize=256)
def _nhwc_columns(kernel: tuple[int, int], cin: int, wp: int, dilation: int,
                  cols: int) -> np.ndarray:
    # each column's offset from a pixel's window in a padded NHWC sample Wp wide: kh runs
    # of kw * Cin values, padded to whole tiles of `cols` by repeating the last column.
    # One array per conv geometry, shared (never written): five numpy calls took 5 us
    kh, kw = kernel
    run = kw * cin  # a kernel row's taps over the input channels, one run of xp
    k = kh * run
    q = np.minimum(np.arange(-(-k // cols) * cols), k - 1)
    offs = (q // run) * dilation * wp * cin + q % run
    return offs


@njit(cache=True)
def unpack_weight_grad(parts, dw):
    """dw (Cout x Cin x kh x kw, float32) = the sum over threads of parts (threads x K x
    Cp, float64; column k = (i * kw + j) * Cin + c of tap (i, j), input channel c): each
    column's channels read in a row (numpy's transposing copies: 1.5x the time)."""
    cout, cin, kh, kw = dw.shape
    threads, k_all, cp = parts.shape
    taps = np.uint64(kh * kw)
    p1, d1 = parts.reshape(parts.size), dw.reshape(dw.size)  # flat: unsigned offsets
    for t in range(taps):
        for c in range(np.uint64(cin)):
            src = (t * np.uint64(cin) + c) * np.uint64(cp)
            dst = c * taps + t
            for o in range(np.uint64(cout)):
                total = p1[src + o]
                for th in range(1, threads):
                    total += p1[np.uint64(th * k_all * cp) + src + o]
                d1[dst + o * np.uint64(cin) * taps] = total


@njit(inline="always", cache=True)
def _pixels_to_planes(xf, src, c, width, x1, dst, hw, n, pixels):
    # `pixels` (8, 4 or 2) pixels of xf from src (c values apart), their first n <= width
    # channels, into n planes of x1 (hw apart) from dst, by `_transpose.store_columns*`
    cu, hwu, nu = np.uint64(c), np.uint64(hw), np.uint64(n)
    if width == 8:
        if pixels == 8:
            store_columns8x8(xf, src, cu, x1, dst, hwu, nu)
        elif pixels == 4:
            store_columns4x8(xf, src, cu, x1, dst, hwu, nu)
        else:
            store_columns2x8(xf, src, cu, x1, dst, hwu, nu)
    elif pixels == 8:
        store_columns8(xf, src, cu, x1, dst, hwu, nu)
    elif pixels == 4:
        store_columns4(xf, src, cu, x1, dst, hwu, nu)
    else:
        store_columns2(xf, src, cu, x1, dst, hwu, nu)


@njit(parallel=True, cache=True)
def from_padded_nhwc(xp, x, ph, pw):
    """The interior of zero-padded N x Hp x Wp x C `xp` -> N x C x H x W `x`, a padded
    row at a time. On rows of an even width, 8, 4 and 2 pixels of up to 16 channels (8
    for at most 8 channels) at a time, transposed in registers
    (`_transpose.store_columns8` and its twins): each pixel's read of a vector runs
    past its channels into the next pixel's values or the padding. Where that would pass
    the end of xp, and on rows of an odd width, each channel's values in turn, gathered
    from the row while it is in cache (a job per plane read the whole sample once per
    channel: 1.25-1.9x the time). One thread, the vectors against that (docs/numba.md,
    "The strided input gradient in registers"): 0.33-0.48x the time for 3-32 channels
    on 8x8 to 28x28 maps, 0.60x on 4x4. On 7x7 maps they took 1.1-1.4x, the last pixel of
    each row left to value by value: odd widths go that way alone."""
    n_batch, c, h, w = x.shape
    hw, sample, wp = h * w, xp[0].size, xp.shape[2]
    xf, x1 = xp.reshape(xp.size), x.reshape(x.size)
    width = 8 if c <= 8 else 16
    last = (n_batch - 1) * sample + ((h - 1 + ph) * wp + w - 1 + pw) * c  # last pixel
    vector = w % 2 == 0 and last + (c - 1) // width * width + width <= xf.size
    if not vector:
        for n in prange(n_batch):
            for r in range(h):
                for k in range(c):
                    for q in range(w):
                        x[n, k, r, q] = xp[n, r + ph, q + pw, k]
        return
    for n in prange(n_batch):
        for r in range(h):
            src = np.uint64(n * sample + ((r + ph) * wp + pw) * c)
            dst = np.uint64(n * c * hw + r * w)
            q = 0
            for pixels in (8, 4, 2):
                while q + pixels <= w:
                    at = src + np.uint64(q * c)
                    for c0 in range(0, c, width):
                        _pixels_to_planes(xf, at + np.uint64(c0), c, width, x1,
                                          dst + np.uint64(c0 * hw + q), hw,
                                          min(width, c - c0), pixels)
                    q += pixels


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
