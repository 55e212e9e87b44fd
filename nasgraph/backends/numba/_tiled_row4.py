"""Direct convolution on tiles of R=4 pixels of an output row x V=16
channels, each input value loaded once for the 3 kernel columns that read it (generated
by _tiled_row_gen.py, which explains the tile). Input: zero-padded NHWC rows, N x Hp x
(Wp*Cin), as `_tiled` reads them; weights packed by `_tiled.pack_tiles` with V=16; output
N x C x Ho x Wo. Stride 1 along rows, kernels 3 columns wide, rows at least R pixels.
The weight gradient's tiles of a row are `_wgrad_row`'s.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._transpose import store_columns4

R = 4
V = 16
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
    # there into the output's planes transposed in registers (`store_columns4`).
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
    b8 = bias[c0 + 8]
    b9 = bias[c0 + 9]
    b10 = bias[c0 + 10]
    b11 = bias[c0 + 11]
    b12 = bias[c0 + 12]
    b13 = bias[c0 + 13]
    b14 = bias[c0 + 14]
    b15 = bias[c0 + 15]
    for job in range(ho * ((wo + R - 1) // R)):
        oh, t = job // ((wo + R - 1) // R), job % ((wo + R - 1) // R)
        ow0 = min(t * R, wo - R)
        a0_0, a0_1, a0_2, a0_3, a0_4, a0_5, a0_6, a0_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a0_8, a0_9, a0_10, a0_11, a0_12, a0_13, a0_14, a0_15 = (
            b8, b9, b10, b11, b12, b13, b14, b15)
        a1_0, a1_1, a1_2, a1_3, a1_4, a1_5, a1_6, a1_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a1_8, a1_9, a1_10, a1_11, a1_12, a1_13, a1_14, a1_15 = (
            b8, b9, b10, b11, b12, b13, b14, b15)
        a2_0, a2_1, a2_2, a2_3, a2_4, a2_5, a2_6, a2_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a2_8, a2_9, a2_10, a2_11, a2_12, a2_13, a2_14, a2_15 = (
            b8, b9, b10, b11, b12, b13, b14, b15)
        a3_0, a3_1, a3_2, a3_3, a3_4, a3_5, a3_6, a3_7 = (
            b0, b1, b2, b3, b4, b5, b6, b7)
        a3_8, a3_9, a3_10, a3_11, a3_12, a3_13, a3_14, a3_15 = (
            b8, b9, b10, b11, b12, b13, b14, b15)
        for i in range(kh):
            xb = np.uint64(x_0 + (oh * sh + i * dh) * row + ow0 * cin)
            wb = np.uint64((cb * kh + i) * 3) * cu * v_u  # w[cb, i]: (3*Cin) x V
            x0 = xb + np.uint64(0) * cu
            x1 = xb + np.uint64(1) * cu
            x2 = xb + np.uint64(2) * cu
            x3 = xb + np.uint64(3) * cu
            x4 = xb + np.uint64(4) * cu
            x5 = xb + np.uint64(5) * cu
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
                w0_8 = wf[wj + np.uint64(8)]
                w0_9 = wf[wj + np.uint64(9)]
                w0_10 = wf[wj + np.uint64(10)]
                w0_11 = wf[wj + np.uint64(11)]
                w0_12 = wf[wj + np.uint64(12)]
                w0_13 = wf[wj + np.uint64(13)]
                w0_14 = wf[wj + np.uint64(14)]
                w0_15 = wf[wj + np.uint64(15)]
                wj = wb + (np.uint64(1) * cu + c) * v_u
                w1_0 = wf[wj + np.uint64(0)]
                w1_1 = wf[wj + np.uint64(1)]
                w1_2 = wf[wj + np.uint64(2)]
                w1_3 = wf[wj + np.uint64(3)]
                w1_4 = wf[wj + np.uint64(4)]
                w1_5 = wf[wj + np.uint64(5)]
                w1_6 = wf[wj + np.uint64(6)]
                w1_7 = wf[wj + np.uint64(7)]
                w1_8 = wf[wj + np.uint64(8)]
                w1_9 = wf[wj + np.uint64(9)]
                w1_10 = wf[wj + np.uint64(10)]
                w1_11 = wf[wj + np.uint64(11)]
                w1_12 = wf[wj + np.uint64(12)]
                w1_13 = wf[wj + np.uint64(13)]
                w1_14 = wf[wj + np.uint64(14)]
                w1_15 = wf[wj + np.uint64(15)]
                wj = wb + (np.uint64(2) * cu + c) * v_u
                w2_0 = wf[wj + np.uint64(0)]
                w2_1 = wf[wj + np.uint64(1)]
                w2_2 = wf[wj + np.uint64(2)]
                w2_3 = wf[wj + np.uint64(3)]
                w2_4 = wf[wj + np.uint64(4)]
                w2_5 = wf[wj + np.uint64(5)]
                w2_6 = wf[wj + np.uint64(6)]
                w2_7 = wf[wj + np.uint64(7)]
                w2_8 = wf[wj + np.uint64(8)]
                w2_9 = wf[wj + np.uint64(9)]
                w2_10 = wf[wj + np.uint64(10)]
                w2_11 = wf[wj + np.uint64(11)]
                w2_12 = wf[wj + np.uint64(12)]
                w2_13 = wf[wj + np.uint64(13)]
                w2_14 = wf[wj + np.uint64(14)]
                w2_15 = wf[wj + np.uint64(15)]
                x = xf[x0 + c]
                a0_0 += x * w0_0
                a0_1 += x * w0_1
                a0_2 += x * w0_2
                a0_3 += x * w0_3
                a0_4 += x * w0_4
                a0_5 += x * w0_5
                a0_6 += x * w0_6
                a0_7 += x * w0_7
                a0_8 += x * w0_8
                a0_9 += x * w0_9
                a0_10 += x * w0_10
                a0_11 += x * w0_11
                a0_12 += x * w0_12
                a0_13 += x * w0_13
                a0_14 += x * w0_14
                a0_15 += x * w0_15
                x = xf[x1 + c]
                a1_0 += x * w0_0
                a1_1 += x * w0_1
                a1_2 += x * w0_2
                a1_3 += x * w0_3
                a1_4 += x * w0_4
                a1_5 += x * w0_5
                a1_6 += x * w0_6
                a1_7 += x * w0_7
                a1_8 += x * w0_8
                a1_9 += x * w0_9
                a1_10 += x * w0_10
                a1_11 += x * w0_11
                a1_12 += x * w0_12
                a1_13 += x * w0_13
                a1_14 += x * w0_14
                a1_15 += x * w0_15
                a0_0 += x * w1_0
                a0_1 += x * w1_1
                a0_2 += x * w1_2
                a0_3 += x * w1_3
                a0_4 += x * w1_4
                a0_5 += x * w1_5
                a0_6 += x * w1_6
                a0_7 += x * w1_7
                a0_8 += x * w1_8
                a0_9 += x * w1_9
                a0_10 += x * w1_10
                a0_11 += x * w1_11
                a0_12 += x * w1_12
                a0_13 += x * w1_13
                a0_14 += x * w1_14
                a0_15 += x * w1_15
                x = xf[x2 + c]
                a2_0 += x * w0_0
                a2_1 += x * w0_1
                a2_2 += x * w0_2
                a2_3 += x * w0_3
                a2_4 += x * w0_4
                a2_5 += x * w0_5
                a2_6 += x * w0_6
                a2_7 += x * w0_7
                a2_8 += x * w0_8
                a2_9 += x * w0_9
                a2_10 += x * w0_10
                a2_11 += x * w0_11
                a2_12 += x * w0_12
                a2_13 += x * w0_13
                a2_14 += x * w0_14
                a2_15 += x * w0_15
                a1_0 += x * w1_0
                a1_1 += x * w1_1
                a1_2 += x * w1_2
                a1_3 += x * w1_3
                a1_4 += x * w1_4
                a1_5 += x * w1_5
                a1_6 += x * w1_6
                a1_7 += x * w1_7
                a1_8 += x * w1_8
                a1_9 += x * w1_9
                a1_10 += x * w1_10
                a1_11 += x * w1_11
                a1_12 += x * w1_12
                a1_13 += x * w1_13
                a1_14 += x * w1_14
                a1_15 += x * w1_15
                a0_0 += x * w2_0
                a0_1 += x * w2_1
                a0_2 += x * w2_2
                a0_3 += x * w2_3
                a0_4 += x * w2_4
                a0_5 += x * w2_5
                a0_6 += x * w2_6
                a0_7 += x * w2_7
                a0_8 += x * w2_8
                a0_9 += x * w2_9
                a0_10 += x * w2_10
                a0_11 += x * w2_11
                a0_12 += x * w2_12
                a0_13 += x * w2_13
                a0_14 += x * w2_14
                a0_15 += x * w2_15
                x = xf[x3 + c]
                a3_0 += x * w0_0
                a3_1 += x * w0_1
                a3_2 += x * w0_2
                a3_3 += x * w0_3
                a3_4 += x * w0_4
                a3_5 += x * w0_5
                a3_6 += x * w0_6
                a3_7 += x * w0_7
                a3_8 += x * w0_8
                a3_9 += x * w0_9
                a3_10 += x * w0_10
                a3_11 += x * w0_11
                a3_12 += x * w0_12
                a3_13 += x * w0_13
                a3_14 += x * w0_14
                a3_15 += x * w0_15
                a2_0 += x * w1_0
                a2_1 += x * w1_1
                a2_2 += x * w1_2
                a2_3 += x * w1_3
                a2_4 += x * w1_4
                a2_5 += x * w1_5
                a2_6 += x * w1_6
                a2_7 += x * w1_7
                a2_8 += x * w1_8
                a2_9 += x * w1_9
                a2_10 += x * w1_10
                a2_11 += x * w1_11
                a2_12 += x * w1_12
                a2_13 += x * w1_13
                a2_14 += x * w1_14
                a2_15 += x * w1_15
                a1_0 += x * w2_0
                a1_1 += x * w2_1
                a1_2 += x * w2_2
                a1_3 += x * w2_3
                a1_4 += x * w2_4
                a1_5 += x * w2_5
                a1_6 += x * w2_6
                a1_7 += x * w2_7
                a1_8 += x * w2_8
                a1_9 += x * w2_9
                a1_10 += x * w2_10
                a1_11 += x * w2_11
                a1_12 += x * w2_12
                a1_13 += x * w2_13
                a1_14 += x * w2_14
                a1_15 += x * w2_15
                x = xf[x4 + c]
                a3_0 += x * w1_0
                a3_1 += x * w1_1
                a3_2 += x * w1_2
                a3_3 += x * w1_3
                a3_4 += x * w1_4
                a3_5 += x * w1_5
                a3_6 += x * w1_6
                a3_7 += x * w1_7
                a3_8 += x * w1_8
                a3_9 += x * w1_9
                a3_10 += x * w1_10
                a3_11 += x * w1_11
                a3_12 += x * w1_12
                a3_13 += x * w1_13
                a3_14 += x * w1_14
                a3_15 += x * w1_15
                a2_0 += x * w2_0
                a2_1 += x * w2_1
                a2_2 += x * w2_2
                a2_3 += x * w2_3
                a2_4 += x * w2_4
                a2_5 += x * w2_5
                a2_6 += x * w2_6
                a2_7 += x * w2_7
                a2_8 += x * w2_8
                a2_9 += x * w2_9
                a2_10 += x * w2_10
                a2_11 += x * w2_11
                a2_12 += x * w2_12
                a2_13 += x * w2_13
                a2_14 += x * w2_14
                a2_15 += x * w2_15
                x = xf[x5 + c]
                a3_0 += x * w2_0
                a3_1 += x * w2_1
                a3_2 += x * w2_2
                a3_3 += x * w2_3
                a3_4 += x * w2_4
                a3_5 += x * w2_5
                a3_6 += x * w2_6
                a3_7 += x * w2_7
                a3_8 += x * w2_8
                a3_9 += x * w2_9
                a3_10 += x * w2_10
                a3_11 += x * w2_11
                a3_12 += x * w2_12
                a3_13 += x * w2_13
                a3_14 += x * w2_14
                a3_15 += x * w2_15
        tile[0, 0] = a0_0
        tile[0, 1] = a0_1
        tile[0, 2] = a0_2
        tile[0, 3] = a0_3
        tile[0, 4] = a0_4
        tile[0, 5] = a0_5
        tile[0, 6] = a0_6
        tile[0, 7] = a0_7
        tile[0, 8] = a0_8
        tile[0, 9] = a0_9
        tile[0, 10] = a0_10
        tile[0, 11] = a0_11
        tile[0, 12] = a0_12
        tile[0, 13] = a0_13
        tile[0, 14] = a0_14
        tile[0, 15] = a0_15
        tile[1, 0] = a1_0
        tile[1, 1] = a1_1
        tile[1, 2] = a1_2
        tile[1, 3] = a1_3
        tile[1, 4] = a1_4
        tile[1, 5] = a1_5
        tile[1, 6] = a1_6
        tile[1, 7] = a1_7
        tile[1, 8] = a1_8
        tile[1, 9] = a1_9
        tile[1, 10] = a1_10
        tile[1, 11] = a1_11
        tile[1, 12] = a1_12
        tile[1, 13] = a1_13
        tile[1, 14] = a1_14
        tile[1, 15] = a1_15
        tile[2, 0] = a2_0
        tile[2, 1] = a2_1
        tile[2, 2] = a2_2
        tile[2, 3] = a2_3
        tile[2, 4] = a2_4
        tile[2, 5] = a2_5
        tile[2, 6] = a2_6
        tile[2, 7] = a2_7
        tile[2, 8] = a2_8
        tile[2, 9] = a2_9
        tile[2, 10] = a2_10
        tile[2, 11] = a2_11
        tile[2, 12] = a2_12
        tile[2, 13] = a2_13
        tile[2, 14] = a2_14
        tile[2, 15] = a2_15
        tile[3, 0] = a3_0
        tile[3, 1] = a3_1
        tile[3, 2] = a3_2
        tile[3, 3] = a3_3
        tile[3, 4] = a3_4
        tile[3, 5] = a3_5
        tile[3, 6] = a3_6
        tile[3, 7] = a3_7
        tile[3, 8] = a3_8
        tile[3, 9] = a3_9
        tile[3, 10] = a3_10
        tile[3, 11] = a3_11
        tile[3, 12] = a3_12
        tile[3, 13] = a3_13
        tile[3, 14] = a3_14
        tile[3, 15] = a3_15
        store_columns4(tile, np.uint64(0), v_u, of, np.uint64(o_0 + c0 * o_c + oh * o_h + ow0),
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
