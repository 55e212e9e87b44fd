"""The input gradient of a strided conv of few input channels, summed in registers.

Seed 003's input gradient of a strided conv adds each output pixel's dy, through the
kernel, back into the window the forward read:

    dx[window(p) + (i, j), c] += sum over output channels o of w[o, c, i, j] * dy[o, p]

`_backward_conv.conv2d_nhwc_backward` computes the products for all pixels as one GEMM
(back = dyᵀ · W, pixels x kh·kw·Cin) and then adds them window by window. With a few
output channels that GEMM's inner dimension is Cout, 6-16: OpenBLAS ran it at 40-50
GFLOP/s on an AMD EPYC, and the product matrix went through memory twice more, written
and read back. Here a tile of P output pixels x one kernel row keeps its sums in vector
registers (`_outer`'s tiles, which `_pointwise` shares): for each output channel, the
row's weights (kw·Cin values, a run of V vectors of 8, zero past the run) times dy at
each of the P pixels, then each pixel's V vectors added into its window's row of dx,
zero-padded in NHWC, where that row is kw·Cin consecutive values. The zeros past the run
add nothing; the arrays are laid out with room for them (`SLACK`).

A tile is 4 pixels x up to 3 vectors of a kernel row's run, 12 of AVX2's 16 vector
registers of sums; longer runs (up to 12 vectors: kw·Cin <= 96, 3x3 kernels of at most
32 input channels) go in parts of 3 vectors, each pixel's dy loaded again for each part.
Tiles of 2 pixels x 6 vectors, for 16 input channels, took 1.4-1.7x the GEMM's time,
their weights not held in registers. `_conv_paths.strided_dx_pays` says which convs take
it.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._backward_conv import from_padded_nhwc
from nasgraph.backends.numba._outer import WIDTH, add1x1, add1x2, add1x3, add4x1, add4x2, add4x3

PIXELS = 4  # output pixels a tile: 4 x 3 vectors of sums, 12 of AVX2's 16 registers
TILE_VECTORS = 3  # vectors of a kernel row's run a tile takes, the run in such parts
MAX_VECTORS = 12  # vectors of a kernel row's run: kw·Cin <= 96
SLACK = WIDTH - 1  # values past a sample's padded dx that the last run's zeros reach


def vectors(run: int) -> int:
    """The vectors of 8 that a kernel row's run of kw·Cin values takes."""
    return -(-run // WIDTH)


def packed_rows(w: np.ndarray) -> np.ndarray:
    """w (Cout x Cin x kh x kw) as kh x Cout x 8V: kernel row i of output channel o its
    run of kw·Cin values, tap by tap, each tap's input channels, zero past the run."""
    cout, cin, kh, kw = w.shape
    run = kw * cin
    rows = np.zeros((kh, cout, vectors(run) * WIDTH), np.float32)
    rows[:, :, :run] = w.transpose(2, 0, 3, 1).reshape(kh, cout, run)
    return rows


@njit(inline="always", cache=True)
def _tile(n_vectors, pixels, g1, g_ats, g_step, cout, w1, w_at, w_row, d1, d_ats, shift):
    # the tile of `pixels` (PIXELS or 1) for n_vectors (<= 3) vectors of a kernel row's
    # run from its value `shift` on: dy at the pixels broadcast, the weights' runs from
    # w_at, added into dx from each window's d_ats + shift
    c, u = np.uint64(cout), np.uint64(shift)
    if pixels == 1:
        g, d = (g_ats[0],), (d_ats[0] + u,)
        if n_vectors == 1:
            add1x1(g1, g, g_step, c, w1, w_at, w_row, d1, d)
        elif n_vectors == 2:
            add1x2(g1, g, g_step, c, w1, w_at, w_row, d1, d)
        else:
            add1x3(g1, g, g_step, c, w1, w_at, w_row, d1, d)
    else:
        g4 = (g_ats[0], g_ats[1], g_ats[2], g_ats[3])
        d4 = (d_ats[0] + u, d_ats[1] + u, d_ats[2] + u, d_ats[3] + u)
        if n_vectors == 1:
            add4x1(g1, g4, g_step, c, w1, w_at, w_row, d1, d4)
        elif n_vectors == 2:
            add4x2(g1, g4, g_step, c, w1, w_at, w_row, d1, d4)
        else:
            add4x3(g1, g4, g_step, c, w1, w_at, w_row, d1, d4)


@functools.lru_cache(maxsize=64)
def pixel_order(ho: int, wo: int, kw: int, stride: tuple[int, int], wp: int, cin: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The output pixels in the order the tiles take them, and the offset of each one's
    window in a padded NHWC sample Wp wide (once per geometry, shared, never written).
    Each row's columns go by their remainder modulo ceil(kw / sw), so that the windows
    of a tile's pixels in one row do not overlap and no tile reads back a vector it has
    just written (which the CPU cannot forward from its store): 0.71-0.75x the time of
    row order for 3x3 convs onto 7x7 at stride 2, one thread (docs/numba.md)."""
    sh, sw = stride
    apart = -(-kw // sw)
    cols = np.concatenate([np.arange(r, wo, apart) for r in range(min(apart, wo))])
    oh, ow = np.repeat(np.arange(ho), len(cols)), np.tile(cols, ho)
    return ((oh * wo + ow).astype(np.int64),
            ((oh * sh * wp + ow * sw) * cin).astype(np.int64))


@njit(parallel=True, cache=True)
def input_grad(gy, rows, gxp, order, windows, row, threads):
    """gxp (N x values a sample, zero on entry) += the input gradient of a conv (no
    groups, no dilation across) with `rows` (`packed_rows`) at dy, gy (N x Cout x Ho x
    Wo): sample n's zero-padded Hp x Wp x Cin dx in gxp[n, :Hp·Wp·Cin], the values after
    it (at least SLACK) room for the zeros past each run. The output pixels go in
    `order`, `windows` their windows' offsets (`pixel_order`); kernel row i is i·`row`
    values below (dilation down times Wp·Cin). Each thread its share of the samples."""
    n_batch, cout, ho, wo = gy.shape
    kh = rows.shape[0]
    hw = ho * wo
    n_vectors = rows.shape[2] // WIDTH
    g1, w1, d1 = gy.reshape(gy.size), rows.reshape(rows.size), gxp.reshape(gxp.size)
    g_step, w_row = np.uint64(hw), np.uint64(rows.shape[2])
    w_step = cout * rows.shape[2]
    for t in prange(threads):
        g_ats = np.empty(PIXELS, np.uint64)
        d_ats = np.empty(PIXELS, np.uint64)
        for n in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            g_n, d_n = n * cout * hw, n * gxp.shape[1]
            for i in range(kh):
                d_i = d_n + i * row
                q = 0
                while q < hw:
                    width = PIXELS if q + PIXELS <= hw else 1
                    for k in range(width):
                        g_ats[k] = g_n + order[q + k]
                        d_ats[k] = d_i + windows[q + k]
                    for v0 in range(0, n_vectors, TILE_VECTORS):
                        _tile(min(TILE_VECTORS, n_vectors - v0), width, g1, g_ats, g_step,
                              cout, w1, np.uint64(i * w_step + v0 * WIDTH), w_row, d1, d_ats,
                              v0 * WIDTH)
                    q += width


def input_gradient(gy: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...],
                   stride: tuple[int, int], pad: tuple[int, int], dilation: int,
                   threads: int) -> np.ndarray:
    """dx (N x Cin x H x W) of a conv with w (Cout x Cin x kh x kw; kw·Cin <= 96), the
    given stride and padding and `dilation` down (none across), at gy (N x Cout x Ho x
    Wo): summed by `input_grad` into a zero-padded NHWC dx (with rows of room below
    each sample for the zeros past the runs), whose interior is then copied out."""
    n, cin, h, wd = x_shape
    kh, kw = w.shape[2:]
    if vectors(kw * cin) > MAX_VECTORS:
        raise ValueError(f"a kernel row of {kw} x {cin} input channels is more than "
                         f"{MAX_VECTORS * WIDTH} values")
    hp, wp = h + 2 * pad[0], wd + 2 * pad[1]
    below = -(-SLACK // (wp * cin))  # rows of room for the zeros past the last run
    gxp = np.zeros((n, hp + below, wp, cin), np.float32)
    order, windows = pixel_order(*gy.shape[2:], kw, stride, wp, cin)
    input_grad(gy, packed_rows(w), gxp.reshape(n, -1), order, windows, dilation * wp * cin,
               threads)
    gx = np.empty(x_shape, np.float32)
    from_padded_nhwc(gxp, gx, *pad)
    return gx
