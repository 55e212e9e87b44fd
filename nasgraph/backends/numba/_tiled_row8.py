"""Direct convolution on tiles of R=8 pixels of an output row x V=8
channels, each input value loaded once for the 3 kernel columns that read it (generated
by _tiled_row_gen.py, which explains the tile). Input: zero-padded NHWC rows, N x Hp x
(Wp*Cin), as `_tiled` reads them; weights packed by `_tiled.pack_tiles` with V=8; output
N x C x Ho x Wo. Stride 1 along rows, kernels 3 columns wide, rows at least R pixels.
The weight gradient's tiles of a row are `_wgrad_row`'s.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._transpose import store_columns8x8

R = 8
V = 8
KW = 3


@njit(cache=True, fastmath={"contract", "nsz", "arcp"})
def _rows(xf, x_0, row, wf, bias, cb, ho, wo, cout, cin, kh, sh, dh, of, o_0, o_c, o_h):
    # The ho output rows of channel block cb, for one sample: its padded input
    # rows start at x_0 in the flat xf (`row` values a row), its output plane of
    # channel c at o_0 + c * o_c in of. The last tile of a row is moved back to end
    # at its last pixel (it recomputes some rather than leave accumulators idle).
    # Unsigned offsets: no negative-index fix-ups. The accumulators go out
    # through `tile`, a pixel's channels side by side, so that LLVM packs them
    # channel-wise (stored straight into the N x C x Ho x Wo output, pixel-wise,
    # it packed the pixels and broadcast the weights: 2.4x the time), and from
    # there into the output's planes transposed in registers (`store_columns8x8`).
    tile = np.empty((R, V), np.float32)
    cu, v_u = np.uint64(cin), np.uint64(V)
    c0 = cb * V
    n_v = min(V, cout - c0)  # channels of this block that exist
    b0 = bias[c0 + 0]
    b1 = bias[c0 + 1]
    b2 = bias[c0 + 2]
    b3 = bias[c0 + 3]
    b4 = bias[c0 + 4]
    b5 = bias[c0 + 5]
    b6 = bias[c0 + 6]
    b7 = bias[c0 + 7]
    for job in range(ho * ((wo + R - 1) // R)):
        oh, t = job // ((wo + R - 1) // R), job % ((wo + R - 1) // R)
        ow0 = min(t * R, wo - R)
        a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a1_0, a1_1, a1_2, a1_3, a1_4, a1_5, a1_6, a1_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a2_0, a2_1, a2_2, a2_3, a2_4, a2_5, a2_6, a2_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a3_0, a3_1, a3_2, a3_3, a3_4, a3_5, a3_6, a3_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a4_0, a4_1, a4_2, a4_3, a4_4, a4_5, a4_6, a4_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a5_0, a5_1, a5_2, a5_3, a5_4, a5_5, a5_6, a5_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a6_0, a6_1, a6_2, a6_3, a6_4, a6_5, a6_6, a6_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a7_0, a7_1, a7_2, a7_3, a7_4, a7_5, a7_6, a7_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        for i in range(kh):
            xb = np.uint64(x_0 + (oh * sh + i * dh) * row + ow0 * cin)
            wb = np.uint64((cb * kh + i) * 3) * cu * v_u  # w[cb, i]: (3*Cin) x V
            x0 = xb + np.uint64(0) * cu
            x1 = xb + np.uint64(1) * cu
            x2 = xb + np.uint64(2) * cu
            x3 = xb + np.uint64(3) * cu
            x4 = xb + np.uint64(4) * cu
            x5 = xb + np.uint64(5) * cu
            x6 = xb + np.uint64(6) * cu
            x7 = xb + np.uint64(7) * cu
            x8 = xb + np.uint64(8) * cu
            x9 = xb + np.uint64(9) * cu
            for c in range(cu):
                wj = wb + (np.uint64(0) * cu + c) * v_u
                w0_0 = wf[wj + np.uint64(0)]
                w0_1 = wf[wj + np.uint64(1)]
                w0_2 = wf[wj + np.uint64(2)]
                w0_3 = wf[wj + np.uint64(3)]
                w0_4 = wf[wj + np.uint64(4)]
                w0_5 = wf[wj + np.uint64(5)]
                w0_6 = wf[wj + np.uint64(6)]
                w0_7 = wf[wj + np.uint64(7)]
                wj = wb + (np.uint64(1) * cu + c) * v_u
                w1_0 = wf[wj + np.uint64(0)]
                w1_1 = wf[wj + np.uint64(1)]
                w1_2 = wf[wj + np.uint64(2)]
                w1_3 = wf[wj + np.uint64(3)]
                w1_4 = wf[wj + np.uint64(4)]
                w1_5 = wf[wj + np.uint64(5)]
                w1_6 = wf[wj + np.uint64(6)]
                w1_7 = wf[wj + np.uint64(7)]
                wj = wb + (np.uint64(2) * cu + c) * v_u
                w2_0 = wf[wj + np.uint64(0)]
                w2_1 = wf[wj + np.uint64(1)]
                w2_2 = wf[wj + np.uint64(2)]
                w2_3 = wf[wj + np.uint64(3)]
                w2_4 = wf[wj + np.uint64(4)]
                w2_5 = wf[wj + np.uint64(5)]
                w2_6 = wf[wj + np.uint64(6)]
                w2_7 = wf[wj + np.uint64(7)]
                x = xf[x0 + c]
                a0_0 += x * w0_0
                a0_1 += x * w0_1
                a0_2 += x * w0_2
                a0_3 += x * w0_3
                a0_4 += x * w0_4
                a0_5 += x * w0_5
                a0_6 += x * w0_6
                a0_7 += x * w0_7
                x = xf[x1 + c]
                a1_0 += x * w0_0
                a1_1 += x * w0_1
                a1_2 += x * w0_2
                a1_3 += x * w0_3
                a1_4 += x * w0_4
                a1_5 += x * w0_5
                a1_6 += x * w0_6
                a1_7 += x * w0_7
                a0_0 += x * w1_0
                a0_1 += x * w1_1
                a0_2 += x * w1_2
                a0_3 += x * w1_3
                a0_4 += x * w1_4
                a0_5 += x * w1_5
                a0_6 += x * w1_6
                a0_7 += x * w1_7
                x = xf[x2 + c]
                a2_0 += x * w0_0
                a2_1 += x * w0_1
                a2_2 += x * w0_2
                a2_3 += x * w0_3
                a2_4 += x * w0_4
                a2_5 += x * w0_5
                a2_6 += x * w0_6
                a2_7 += x * w0_7
                a1_0 += x * w1_0
                a1_1 += x * w1_1
                a1_2 += x * w1_2
                a1_3 += x * w1_3
                a1_4 += x * w1_4
                a1_5 += x * w1_5
                a1_6 += x * w1_6
                a1_7 += x * w1_7
                a0_0 += x * w2_0
                a0_1 += x * w2_1
                a0_2 += x * w2_2
                a0_3 += x * w2_3
                a0_4 += x * w2_4
                a0_5 += x * w2_5
                a0_6 += x * w2_6
                a0_7 += x * w2_7
                x = xf[x3 + c]
                a3_0 += x * w0_0
                a3_1 += x * w0_1
                a3_2 += x * w0_2
                a3_3 += x * w0_3
                a3_4 += x * w0_4
                a3_5 += x * w0_5
                a3_6 += x * w0_6
                a3_7 += x * w0_7
                a2_0 += x * w1_0
                a2_1 += x * w1_1
                a2_2 += x * w1_2
                a2_3 += x * w1_3
                a2_4 += x * w1_4
                a2_5 += x * w1_5
                a2_6 += x * w1_6
                a2_7 += x * w1_7
                a1_0 += x * w2_0
                a1_1 += x * w2_1
                a1_2 += x * w2_2
                a1_3 += x * w2_3
                a1_4 += x * w2_4
                a1_5 += x * w2_5
                a1_6 += x * w2_6
                a1_7 += x * w2_7
                x = xf[x4 + c]
                a4_0 += x * w0_0
                a4_1 += x * w0_1
                a4_2 += x * w0_2
                a4_3 += x * w0_3
                a4_4 += x * w0_4
                a4_5 += x * w0_5
                a4_6 += x * w0_6
                a4_7 += x * w0_7
                a3_0 += x * w1_0
                a3_1 += x * w1_1
                a3_2 += x * w1_2
                a3_3 += x * w1_3
                a3_4 += x * w1_4
                a3_5 += x * w1_5
                a3_6 += x * w1_6
                a3_7 += x * w1_7
                a2_0 += x * w2_0
                a2_1 += x * w2_1
                a2_2 += x * w2_2
                a2_3 += x * w2_3
                a2_4 += x * w2_4
                a2_5 += x * w2_5
                a2_6 += x * w2_6
                a2_7 += x * w2_7
                x = xf[x5 + c]
                a5_0 += x * w0_0
                a5_1 += x * w0_1
                a5_2 += x * w0_2
                a5_3 += x * w0_3
                a5_4 += x * w0_4
                a5_5 += x * w0_5
                a5_6 += x * w0_6
                a5_7 += x * w0_7
                a4_0 += x * w1_0
                a4_1 += x * w1_1
                a4_2 += x * w1_2
                a4_3 += x * w1_3
                a4_4 += x * w1_4
                a4_5 += x * w1_5
                a4_6 += x * w1_6
                a4_7 += x * w1_7
                a3_0 += x * w2_0
                a3_1 += x * w2_1
                a3_2 += x * w2_2
                a3_3 += x * w2_3
                a3_4 += x * w2_4
                a3_5 += x * w2_5
                a3_6 += x * w2_6
                a3_7 += x * w2_7
                x = xf[x6 + c]
                a6_0 += x * w0_0
                a6_1 += x * w0_1
                a6_2 += x * w0_2
                a6_3 += x * w0_3
                a6_4 += x * w0_4
                a6_5 += x * w0_5
                a6_6 += x * w0_6
                a6_7 += x * w0_7
                a5_0 += x * w1_0
                a5_1 += x * w1_1
                a5_2 += x * w1_2
                a5_3 += x * w1_3
                a5_4 += x * w1_4
                a5_5 += x * w1_5
                a5_6 += x * w1_6
                a5_7 += x * w1_7
                a4_0 += x * w2_0
                a4_1 += x * w2_1
                a4_2 += x * w2_2
                a4_3 += x * w2_3
                a4_4 += x * w2_4
                a4_5 += x * w2_5
                a4_6 += x * w2_6
                a4_7 += x * w2_7
                x = xf[x7 + c]
                a7_0 += x * w0_0
                a7_1 += x * w0_1
                a7_2 += x * w0_2
                a7_3 += x * w0_3
                a7_4 += x * w0_4
                a7_5 += x * w0_5
                a7_6 += x * w0_6
                a7_7 += x * w0_7
                a6_0 += x * w1_0
                a6_1 += x * w1_1
                a6_2 += x * w1_2
                a6_3 += x * w1_3
                a6_4 += x * w1_4
                a6_5 += x * w1_5
                a6_6 += x * w1_6
                a6_7 += x * w1_7
                a5_0 += x * w2_0
                a5_1 += x * w2_1
                a5_2 += x * w2_2
                a5_3 += x * w2_3
                a5_4 += x * w2_4
                a5_5 += x * w2_5
                a5_6 += x * w2_6
                a5_7 += x * w2_7
                x = xf[x8 + c]
                a7_0 += x * w1_0
                a7_1 += x * w1_1
                a7_2 += x * w1_2
                a7_3 += x * w1_3
                a7_4 += x * w1_4
                a7_5 += x * w1_5
                a7_6 += x * w1_6
                a7_7 += x * w1_7
                a6_0 += x * w2_0
                a6_1 += x * w2_1
                a6_2 += x * w2_2
                a6_3 += x * w2_3
                a6_4 += x * w2_4
                a6_5 += x * w2_5
                a6_6 += x * w2_6
                a6_7 += x * w2_7
                x = xf[x9 + c]
                a7_0 += x * w2_0
                a7_1 += x * w2_1
                a7_2 += x * w2_2
                a7_3 += x * w2_3
                a7_4 += x * w2_4
                a7_5 += x * w2_5
                a7_6 += x * w2_6
                a7_7 += x * w2_7
        tile[0, 0] = a0_0
        tile[0, 1] = a0_1
        tile[0, 2] = a0_2
        tile[0, 3] = a0_3
        tile[0, 4] = a0_4
        tile[0, 5] = a0_5
        tile[0, 6] = a0_6
        tile[0, 7] = a0_7
        tile[1, 0] = a1_0
        tile[1, 1] = a1_1
        tile[1, 2] = a1_2
        tile[1, 3] = a1_3
        tile[1, 4] = a1_4
        tile[1, 5] = a1_5
        tile[1, 6] = a1_6
        tile[1, 7] = a1_7
        tile[2, 0] = a2_0
        tile[2, 1] = a2_1
        tile[2, 2] = a2_2
        tile[2, 3] = a2_3
        tile[2, 4] = a2_4
        tile[2, 5] = a2_5
        tile[2, 6] = a2_6
        tile[2, 7] = a2_7
        tile[3, 0] = a3_0
        tile[3, 1] = a3_1
        tile[3, 2] = a3_2
        tile[3, 3] = a3_3
        tile[3, 4] = a3_4
        tile[3, 5] = a3_5
        tile[3, 6] = a3_6
        tile[3, 7] = a3_7
        tile[4, 0] = a4_0
        tile[4, 1] = a4_1
        tile[4, 2] = a4_2
        tile[4, 3] = a4_3
        tile[4, 4] = a4_4
        tile[4, 5] = a4_5
        tile[4, 6] = a4_6
        tile[4, 7] = a4_7
        tile[5, 0] = a5_0
        tile[5, 1] = a5_1
        tile[5, 2] = a5_2
        tile[5, 3] = a5_3
        tile[5, 4] = a5_4
        tile[5, 5] = a5_5
        tile[5, 6] = a5_6
        tile[5, 7] = a5_7
        tile[6, 0] = a6_0
        tile[6, 1] = a6_1
        tile[6, 2] = a6_2
        tile[6, 3] = a6_3
        tile[6, 4] = a6_4
        tile[6, 5] = a6_5
        tile[6, 6] = a6_6
        tile[6, 7] = a6_7
        tile[7, 0] = a7_0
        tile[7, 1] = a7_1
        tile[7, 2] = a7_2
        tile[7, 3] = a7_3
        tile[7, 4] = a7_4
        tile[7, 5] = a7_5
        tile[7, 6] = a7_6
        tile[7, 7] = a7_7
        store_columns8x8(tile, np.uint64(0), v_u, of, np.uint64(o_0 + c0 * o_c + oh * o_h + ow0),
                         np.uint64(o_c), np.uint64(n_v))


@njit(parallel=True, cache=True)
def conv2d_row(xp, w, bias, out, cout, cin, kh, sh, dh, threads):
    """out (N x Cout x Ho x Wo) = the conv of the padded NHWC rows xp (N x Hp x (Wp*Cin))
    with w (`_tiled.pack_tiles`, V channels a block) + bias (a block's worth per block,
    zero-padded): kh kernel rows `dh` apart, stride `sh` down and 1 across. A job is one
    sample's output rows of one channel block; `threads` share them."""
    n_batch, ho, wo = out.shape[0], out.shape[2], out.shape[3]
    n_cb = w.shape[0]
    xf, wf, of = xp.reshape(xp.size), w.reshape(w.size), out.reshape(out.size)
    for job in prange(n_batch * n_cb):
        n, cb = job // n_cb, job % n_cb
        _rows(xf, n * xp.shape[1] * xp.shape[2], xp.shape[2], wf, bias, cb, ho, wo, cout,
              cin, kh, sh, dh, of, (n * out.shape[1]) * ho * wo, ho * wo, wo)


@njit(cache=True)
def conv2d_row_1(xp, w, bias, out, cout, cin, kh, sh, dh, threads):
    """`conv2d_row` on the calling thread alone (no parallel region)."""
    n_batch, ho, wo = out.shape[0], out.shape[2], out.shape[3]
    n_cb = w.shape[0]
    xf, wf, of = xp.reshape(xp.size), w.reshape(w.size), out.reshape(out.size)
    for n in range(n_batch):
        for cb in range(n_cb):
            _rows(xf, n * xp.shape[1] * xp.shape[2], xp.shape[2], wf, bias, cb, ho, wo,
                  cout, cin, kh, sh, dh, of, (n * out.shape[1]) * ho * wo, ho * wo, wo)


def pack_bias(bias: np.ndarray | None, cout: int) -> np.ndarray:
    """The bias (or zeros), zero-padded to whole blocks of V channels."""
    padded = np.zeros(-(-cout // V) * V, np.float32)
    if bias is not None:
        padded[:cout] = bias
    return padded
