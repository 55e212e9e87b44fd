"""The weight gradient of a conv on stride-phase planes (`_planes`), by `_wgrad`'s
register-tiled kernels.

Seed 003: the weight gradient is the correlation of the input with dy,

    dw[co, ci, i, j] = sum over n, oh, ow of
                       dy[n, co, oh, ow] * xpad[n, ci, oh*sh + i*dh, ow*sw + j*dw]

On the input's phase planes, with dy's rows padded from Wo to Wq with zeros (`to_rows`,
or dy's own planes where they hold those rows: `_rows_in_planes`), each tap's sum is a
dot product of two contiguous runs: dy's row, and the plane at the tap's offset.
`_wgrad.weight_grad` runs its tiles over chunks of samples, group by group, 8 pixels a
vector; `weight_grad_wide` its tiles of 16 (`_lanes`).

Copies index flat arrays with unsigned offsets, as `_planes` does.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba import _wgrad as wgrad_k
from nasgraph.backends.numba._planes import LANES, PhasePlanes


@njit(parallel=True, cache=True)
def to_rows(gy, gp, wq, groups):
    """gy (N x Cout x Ho x Wo) -> gp (N x G*Cp x L): each plane's rows padded from Wo to
    Wq with zeros, zeros past Ho rows; group g's Cout/G channels at rows g*Cp.., zero
    rows after them (Cp >= Cout/G: whole tiles)."""
    n_batch, cout, ho, wo = gy.shape
    rows, length, cog = gp.shape[1], gp.shape[2], cout // groups
    cp = rows // groups
    g1, p1 = gy.reshape(gy.size), gp.reshape(gp.size)  # flat: views cost reference counting
    for job in prange(n_batch * rows):
        n, d = job // rows, job % rows
        g, r = d // cp, d % cp
        dst = np.uint64(job * length)
        for k in range(np.uint64(length)):
            p1[dst + k] = 0.0
        if r < cog:
            src = np.uint64((n * cout + g * cog + r) * ho * wo)
            for row in range(ho):
                d_row, s_row = dst + np.uint64(row * wq), src + np.uint64(row * wo)
                for k in range(np.uint64(wo)):
                    p1[d_row + k] = g1[s_row + k]


# a chunk of samples' dy rows and input planes of one group, in float32 values, that
# every tap tile of `_wgrad.weight_grad` reads in turn: 32 KB, within a 48 KB L1
CHUNK_VALUES = 8192


def _rows(planes: PhasePlanes, gy: np.ndarray, groups: int, rows: int) -> np.ndarray:
    # gy as `_wgrad.to_rows` lays it out: each group's channels padded to `rows` rows
    gp = np.empty((gy.shape[0], groups * rows, planes.length), np.float32)
    to_rows(gy, gp, planes.wq, groups)
    return gp


# where vectors are 512 bits, convs of these many output channels a group (but depthwise
# ones) take a tile of as many rows (`_tile`); 8 as well on tiles of 16 pixels
FITTED_ROWS = (3, 5, 6, 7)


def _tile(groups: int, out_per_group: int, wide: bool = False, in_per_group: int = 1,
          lanes: int = LANES) -> tuple[int, int]:
    """`_wgrad`'s tile (rows, taps) for a conv's weight gradient: where `wide` (vectors of
    512 bits, 32 registers) R x 3 for a conv of R output channels a group in
    `FITTED_ROWS` (or 8, on tiles of 16 `lanes`), ungrouped or of several input channels
    a group, which leaves no rows of zeros; else 4 x 3 for ungrouped convs and groups of
    4+ outputs, else 1 x 9. Measured on an AVX-512 Xeon, one thread, 3x3 convs at batch
    128 (docs/numba.md, "Tiles of as many rows as output channels" and "The weight
    gradient on 16 pixels a vector"): R x 3 takes 0.64-0.90x the time of 4 x 3 for 3 and
    5-7 channels; for 8, 8 x 3 0.97x on 8 lanes (not taken), 0.87-0.91x on 16. AVX2
    keeps the 4 x 3 it was tuned with. Whole blocks of rows fit the same output channel
    counts on either lane width (8 x 3 for 8, where 4 x 3 fits twice), so
    `_conv_layouts.planes_dy`, which asks before the planes exist, gets the answer that
    holds for both."""
    fitted = FITTED_ROWS + ((8,) if lanes == wgrad_k.WIDE_LANES else ())
    if wide and out_per_group in fitted and (groups == 1 or in_per_group > 1):
        return out_per_group, 3
    return wgrad_k.TILES[0] if groups == 1 or out_per_group >= 4 else wgrad_k.TILES[1]


def _lanes(planes: PhasePlanes, wide: bool, depthwise: bool = False) -> int:
    """The pixels a vector of the weight gradient's tiles holds: where `wide` (vectors
    of 512 bits), 16 (`_wgrad.WIDE_TILES`) on planes whose rows are whole vectors of them
    (as `conv2d_forward`'s tiles lay them out, `PIXELS`), but for `depthwise` convs (one
    input channel a group); else 8 (`_wgrad.TILES`). On an AVX-512 Xeon, one thread, 3x3
    convs at batch 128: 0.64-0.99x the time of the 8-pixel tiles for 3-8 output
    channels over five runs, 0.97-1.05x for depthwise ones (docs/numba.md, "The weight
    gradient on 16 pixels a vector")."""
    wide_lanes = wgrad_k.WIDE_LANES
    if wide and not depthwise and planes.length % wide_lanes == 0:
        return wide_lanes
    return wgrad_k.LANES


def conv2d_weight_grad(planes: PhasePlanes, gy: np.ndarray, groups: int,
                       kernel: tuple[int, int], threads: int,
                       gp: np.ndarray | None = None, wide: bool = False,
                       dy_planes: PhasePlanes | None = None) -> np.ndarray:
    """The weight gradient of a conv, Cout x Cin/G x kh x kw, by `_wgrad`'s register-
    tiled kernels: each tap's sum over the batch is a dot product of dy's padded rows with
    one offset into the input's `planes`; no im2col columns are copied. gy: N x Cout x Ho
    x Wo; `gp`: gy already laid out as `_planes_depthwise.depthwise_rows` gives it;
    `dy_planes`: gy's planes for the input gradient (`conv2d_input_grad`), whose rows are
    read in place where they hold `to_rows`' (`_rows_in_planes`); `wide`: vectors of 512
    bits, which allow tiles of more rows (`_tile`) and of more pixels (`_lanes`)."""
    n = gy.shape[0]
    cout, cin = gy.shape[1], planes.shape[1]
    cig, cog = cin // groups, cout // groups
    lanes = _lanes(planes, wide, depthwise=groups > 1 and cig == 1)
    r, s = _tile(groups, cog, wide, cig, lanes)
    wide_tiles = lanes == wgrad_k.WIDE_LANES
    assert (r, s) in (wgrad_k.WIDE_TILES if wide_tiles else wgrad_k.TILES), (r, s, lanes)
    blocks = -(-cog // r)
    at = None  # the rows' offset into dy's planes, where it holds them as they are
    if dy_planes is not None and groups == 1 and blocks * r == cout:
        at = _rows_in_planes(dy_planes, planes)
    if at is not None:  # dy's rows, within its planes
        g, g_c = dy_planes.xq, dy_planes.plane
    else:
        assert not isinstance(gy, PhasePlanes), "dy's rows must lie within its planes"
        g = _rows(planes, gy, groups, blocks * r) if gp is None else gp
        at, g_c = 0, planes.length
    ntaps = cig * len(planes.taps)
    tiles = -(-ntaps // s)
    offs = _tap_offsets(groups, cig, tuple(planes.taps),
                        planes.stride[0] * planes.stride[1] * planes.plane, tiles * s)
    parts = np.zeros((threads, groups, blocks, tiles, r * s * lanes))
    # a sample's rows and planes, a tile's group (the rows as `to_rows` lays them out,
    # wherever they are read: the same chunks, the same sums)
    per_group = (groups * blocks * r * planes.length + planes.xq[0].size) // groups
    kernel_sums = wgrad_k.weight_grad_wide if wide_tiles else wgrad_k.weight_grad
    kernel_sums(g.reshape(g.size), at, g_c, g[0].size, planes.xq.reshape(planes.xq.size),
                planes.xq[0].size, offs.reshape(groups, tiles, s), parts, n, blocks,
                planes.length // lanes, max(1, CHUNK_VALUES // per_group), threads)
    dw = np.empty((cout, cig, *kernel), np.float32)
    unpack_tiles(parts, dw.reshape(cout, ntaps), r, s)
    return dw


def _rows_in_planes(dy: PhasePlanes, planes: PhasePlanes) -> int | None:
    """Where the rows `to_rows` lays dy out in for a weight gradient on `planes` lie
    within dy's own planes for the input gradient (`conv2d_input_grad`, stride 1), as an
    offset into a channel's plane; None where they do not. Both are dy's rows Wq wide:
    dy padded by (fh, fw) in its planes, so row oh, column ow at (oh + fh)*Wq + ow + fw,
    the columns past Wo its right padding and the next row's left, zeros. Where the
    planes are as wide (a padding of half the kernel's reach) and long enough, `to_rows`'
    copy is that run of them from fh*Wq + fw: 0.2 ms of a 13 ms step of the Fashion
    ResNet (docs/numba.md, "BatchNorm left to the add, and written as the phase
    planes")."""
    fh, fw = dy.pad
    at = fh * dy.wq + fw
    if dy.wq != planes.wq or at + planes.length > dy.plane:
        return None
    return at


@functools.lru_cache(maxsize=256)
def _tap_offsets(groups: int, cig: int, taps: tuple[int, ...], channel: int,
                 width: int) -> np.ndarray:
    # each (input channel, tap) column's offset into a sample's planes, a group's to a
    # row, `width` long: the last tile padded with repeats. One array per conv geometry,
    # shared (never written)
    ntaps = cig * len(taps)
    offs = np.empty((groups, width), np.int64)
    channels = np.arange(groups * cig).reshape(groups, cig, 1) * channel
    offs[:, :ntaps] = (channels + np.array(taps)).reshape(groups, ntaps)
    offs[:, ntaps:] = offs[:, ntaps - 1:ntaps]
    return offs


@njit(cache=True)
def unpack_tiles(parts, dw, r, s):
    """dw (Cout x Cin/G*kh*kw, float32) = `_wgrad.weight_grad`'s parts (threads x groups x
    blocks x tiles x r*s*lanes, float64) summed over the threads and the lanes: tile
    (block b, tile t) holds output channels b*r.. of its group, columns t*s.. (numpy's
    sums and transposing copies of the small parts: 2-3x the time)."""
    threads, groups, blocks, tiles = parts.shape[:4]
    lanes = parts.shape[4] // (r * s)
    cout, ntaps = dw.shape
    cog = cout // groups
    for g in range(groups):
        for o in range(cog):
            b, ro = o // r, o % r
            for k in range(ntaps):
                t, so = k // s, k % s
                base = (ro * s + so) * lanes
                total = 0.0
                for th in range(threads):
                    for lane in range(lanes):
                        total += parts[th, g, b, t, base + lane]
                dw[g * cog + o, k] = total
