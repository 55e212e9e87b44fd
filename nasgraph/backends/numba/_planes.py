"""Convolutions on stride-phase planes: the layout of `_wgrad`'s register-tiled weight
gradient, and the convs of few channels that train on it.

Seed 003: the weight gradient is the correlation of the input with dy,

    dw[co, ci, i, j] = sum over n, oh, ow of
                       dy[n, co, oh, ow] * xpad[n, ci, oh*sh + i*dh, ow*sw + j*dw]

Laid out right, each tap's sum is a dot product of two contiguous runs. The input is split
into its sh x sw stride phases, each zero-padded into planes Wq = Wo + (kw-1)*dw // sw wide
(`phase_planes`); dy's rows are padded from Wo to Wq with zeros (`to_rows`). Output pixel
(oh, ow) is then at p = oh*Wq + ow in dy's row, and tap (i, j) reads the plane of phase
(i*dh % sh, j*dw % sw) at p + (i*dh // sh)*Wq + j*dw // sw: one offset per tap, the same
for every pixel. The padded columns cost (Wq - Wo)/Wo more work; a 14x14 output of a 3x3
conv, 14%. `weight_grad` runs `_wgrad`'s tiles over chunks of samples, group by group.

Depthwise convs (one input channel per group) run on the same planes
(`_planes_depthwise`). So do the forward of ungrouped convs of few output channels, and
the input gradient of such stride-1 convs (a conv of dy's planes): `conv2d_forward`, on
`_planes_conv`'s tiles of output channels x 32 pixels of a row.

Copies and gathers index flat arrays with unsigned offsets: views cost reference counting,
and signed offsets negative-index fix-ups (2-3x, measured).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba import _planes_conv as conv_k
from nasgraph.backends.numba import _wgrad as wgrad_k
from nasgraph.backends.numba._masked import LANES as LANES16
from nasgraph.backends.numba._masked import add16, into_plane, move

LANES = wgrad_k.LANES  # pixels a vector of the tile kernels holds


@njit(parallel=True, cache=True)
def weight_grad(g1, g_at, g_c, g_n, x1, x_n, offs, parts, n_batch, blocks, steps, chunk,
                threads):
    """parts[t] += thread t's share of the tap sums: its samples, in chunks of `chunk`
    whose rows and planes stay in L1 while every tile reads them, summed in float32 over
    SUM_SAMPLES samples at a time, then added into parts in float64.

    g1: dy as rows of steps*LANES values, G*blocks*R of them a sample, flat: from g_at,
    g_c values a row apart, g_n a sample (`to_rows` lays them out so, from 0, g_c the
    rows' length; dy's own planes hold them too, `_rows_in_planes`); x1: the input as
    phase planes (`to_phase_planes`, flat; x_n values a sample); offs: each group's taps
    in tiles of S, as offsets into a sample's planes (G x n_tiles x S); parts: threads x
    G x blocks x n_tiles x R*S*LANES, float64. The tile R x S is `_wgrad`'s of those
    sizes (`_tile`)."""
    groups, n_tiles, s = offs.shape
    r = parts.shape[4] // (s * LANES)
    for t in prange(threads):
        lo, hi = t * n_batch // threads, (t + 1) * n_batch // threads
        total = parts[t].reshape(parts[t].size)
        acc = np.zeros(total.size, np.float32)
        summed = 0
        for n0 in range(lo, hi, chunk):
            m = min(chunk, hi - n0)
            for g in range(groups):
                for b in range(blocks):
                    g_0 = g_at + n0 * g_n + (g * blocks + b) * r * g_c
                    x_0 = n0 * x_n
                    for k in range(n_tiles):
                        at = ((g * blocks + b) * n_tiles + k) * r * s * LANES
                        if r == 4:
                            wgrad_k.tile_4x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs[g], k, m,
                                             steps, acc, at)
                        elif r == 1:
                            wgrad_k.tile_1x9(g1, g_0, g_c, g_n, x1, x_0, x_n, offs[g], k, m,
                                             steps, acc, at)
                        elif r == 3:
                            wgrad_k.tile_3x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs[g], k, m,
                                             steps, acc, at)
                        elif r == 5:
                            wgrad_k.tile_5x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs[g], k, m,
                                             steps, acc, at)
                        elif r == 6:
                            wgrad_k.tile_6x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs[g], k, m,
                                             steps, acc, at)
                        else:
                            wgrad_k.tile_7x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs[g], k, m,
                                             steps, acc, at)
            summed += m
            if summed >= SUM_SAMPLES or n0 + m >= hi:
                for q in range(total.size):
                    total[q] += acc[q]
                    acc[q] = 0.0
                summed = 0


@njit(inline="always", cache=True)
def phase_span(a, s, p, n, width):
    """The plane columns (or rows) c with 0 <= c*s + a - p < n, as lo <= c < hi, hi at
    most `width`: where phase a of a stride-s axis padded by p holds values of x."""
    lo = max(0, -((a - p) // s))
    return lo, max(lo, min(width, (n - 1 + p - a) // s + 1))


@njit(parallel=True, cache=True)
def to_phase_planes(x, xq, sh, sw, ph, pw, wq):
    """x (N x C x H x W) zero-padded by (ph, pw) and split into its sh x sw stride phases:
    xq[n, (c*sh + a)*sw + b, r*Wq + q] = xpad[n, c, r*sh + a, q*sw + b], zero past x and
    past the plane's rows of Wq (xq: N x C*sh*sw x plane length)."""
    n_batch, c_in, h, w = x.shape
    length = xq.shape[2]
    x1, q1 = x.reshape(x.size), xq.reshape(xq.size)  # flat: views cost reference counting
    # one plane, all of x: rows moved in spans of Wq (`into_plane`)
    whole = sh == 1 and sw == 1 and wq == w + 2 * pw and (ph + h) * wq + pw <= length
    for job in prange(n_batch * c_in):
        if whole:
            into_plane(x1, np.uint64(job * h * w), q1, np.uint64(job * length), h, w, wq, ph,
                       pw, length)
            continue
        for a in range(sh):
            r_lo, r_hi = phase_span(a, sh, ph, h, length // wq)
            for b in range(sw):
                q_lo, q_hi = phase_span(b, sw, pw, w, wq)
                # plane (a, b) of channel `job`; unsigned offsets: no negative-index fix-ups
                d0 = np.uint64(((job * sh + a) * sw + b) * length)
                for k in range(np.uint64(length)):
                    q1[d0 + k] = 0.0
                for r in range(r_lo, r_hi):
                    src = np.uint64((job * h + r * sh + a - ph) * w + b - pw + q_lo * sw)
                    dst = d0 + np.uint64(r * wq + q_lo)
                    if sw == 1:  # a masked vector a 16 values: a loop would stay scalar
                        count = np.uint64(q_hi - q_lo)
                        move(x1, src, count, q1, dst, count)
                    else:
                        for q in range(np.uint64(q_hi - q_lo)):
                            q1[dst + q] = x1[src + q * np.uint64(sw)]


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
# every tap tile of `weight_grad` reads in turn: 32 KB, within a 48 KB L1
CHUNK_VALUES = 8192
# samples whose tap sums `weight_grad` adds in float32 before it adds them into float64
SUM_SAMPLES = 16


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


class PlanesFor(NamedTuple):
    """Where a stride-1 conv reads a tensor as phase planes of rows of whole tiles
    (`conv2d_forward`'s, `multiple=PIXELS`): its input for the forward, or dy for the
    input gradient (`conv2d_input_grad`). The conv's output size (for dy's planes, the
    input gradient's), its kernel and dilation, and the tensor's padding. The op that
    produces the tensor may write it so (`empty_planes`; BatchNorm's by-channel passes)."""

    out_hw: tuple[int, int]
    kernel: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]


def empty_planes(shape: tuple[int, ...], spec: PlanesFor) -> PhasePlanes:
    """`PhasePlanes` of an N x C x H x W tensor as `spec` lays them out, not yet
    written: what `phase_planes(x, *spec, stride (1, 1), multiple=PIXELS)` would fill."""
    wq, length, plane, taps = _plane_geometry(spec.out_hw, spec.kernel, (1, 1),
                                              spec.dilation, PIXELS)
    xq = np.empty((shape[0], shape[1], plane), np.float32)
    return PhasePlanes(xq, shape, spec.out_hw, wq, length, plane, taps, (1, 1), spec.pad)


def row_length(ho: int, wq: int, multiple: int) -> int:
    """The length of a conv's output row on its phase planes: Ho rows Wq wide, padded to
    a multiple of `multiple` pixels (whole vectors or tiles)."""
    return -(-ho * wq // multiple) * multiple


def phase_planes(x: np.ndarray, out_hw: tuple[int, int], kernel: tuple[int, int],
                 stride: tuple[int, int], pad: tuple[int, int], dilation: tuple[int, int],
                 multiple: int = LANES) -> PhasePlanes:
    """x (N x C x H x W) as `PhasePlanes` for a conv of this geometry: planes Wq = Wo +
    (kw-1)*dw // sw wide, so that every tap's window of a row fits in a row, and long
    enough for the farthest tap to read a whole padded row of dy, its length a multiple
    of `multiple` pixels (LANES: `_wgrad`'s vectors; PIXELS: `conv2d_forward`'s tiles,
    which `_wgrad` reads as well)."""
    wq, length, plane, taps = _plane_geometry(out_hw, kernel, stride, dilation, multiple)
    sh, sw = stride
    xq = np.empty((x.shape[0], x.shape[1] * sh * sw, plane), np.float32)
    to_phase_planes(x, xq, sh, sw, *pad, wq)
    return PhasePlanes(xq, x.shape, out_hw, wq, length, plane, taps, stride, pad)


@functools.lru_cache(maxsize=256)
def _plane_geometry(out_hw: tuple[int, int], kernel: tuple[int, int],
                    stride: tuple[int, int], dilation: tuple[int, int], multiple: int
                    ) -> tuple[int, int, int, np.ndarray]:
    # `phase_planes`' Wq, row length, plane length and tap offsets (shared, never
    # written): once per geometry
    (ho, wo), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, stride, dilation
    wq = wo + (kw - 1) * dw // sw
    length = row_length(ho, wq, multiple)
    plane = (kh - 1) * dh // sh * wq + (kw - 1) * dw // sw + length
    taps = np.array([(i * dh % sh * sw + j * dw % sw) * plane + i * dh // sh * wq
                     + j * dw // sw for i in range(kh) for j in range(kw)], np.int64)
    return wq, length, plane, taps


def _rows(planes: PhasePlanes, gy: np.ndarray, groups: int, rows: int) -> np.ndarray:
    # gy as `_wgrad.to_rows` lays it out: each group's channels padded to `rows` rows
    gp = np.empty((gy.shape[0], groups * rows, planes.length), np.float32)
    to_rows(gy, gp, planes.wq, groups)
    return gp


# where vectors are 512 bits, convs of these many output channels a group (but depthwise
# ones) take a tile of as many rows (`_tile`)
FITTED_ROWS = (3, 5, 6, 7)


def _tile(groups: int, out_per_group: int, wide: bool = False, in_per_group: int = 1
          ) -> tuple[int, int]:
    """`_wgrad`'s tile (rows, taps) for a conv's weight gradient: where `wide` (vectors of
    512 bits, 32 registers) R x 3 for a conv of R output channels a group in
    `FITTED_ROWS`, ungrouped or of several input channels a group, which leaves no rows
    of zeros; else 4 x 3 for ungrouped convs and groups of 4+ outputs, else 1 x 9.
    Measured on an AVX-512 Xeon, one thread, 3x3 convs at batch 128 (docs/numba.md,
    "Tiles of as many rows as output channels"): R x 3 takes 0.64-0.90x the time of 4 x 3
    for 3 and 5-7 channels, 8 x 3 0.97x for 8. AVX2 keeps the 4 x 3 it was tuned with."""
    if wide and out_per_group in FITTED_ROWS and (groups == 1 or in_per_group > 1):
        return out_per_group, 3
    return wgrad_k.TILES[0] if groups == 1 or out_per_group >= 4 else wgrad_k.TILES[1]


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
    bits, which allow tiles of more rows (`_tile`)."""
    n = gy.shape[0]
    cout, cin = gy.shape[1], planes.shape[1]
    cig, cog = cin // groups, cout // groups
    r, s = _tile(groups, cog, wide, cig)
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
    parts = np.zeros((threads, groups, blocks, tiles, r * s * LANES))
    # a sample's rows and planes, a tile's group (the rows as `to_rows` lays them out,
    # wherever they are read: the same chunks, the same sums)
    per_group = (groups * blocks * r * planes.length + planes.xq[0].size) // groups
    weight_grad(g.reshape(g.size), at, g_c, g[0].size, planes.xq.reshape(planes.xq.size),
                planes.xq[0].size, offs.reshape(groups, tiles, s), parts, n, blocks,
                planes.length // LANES, max(1, CHUNK_VALUES // per_group), threads)
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
    """dw (Cout x Cin/G*kh*kw, float32) = `weight_grad`'s parts (threads x groups x
    blocks x tiles x r*s*LANES, float64) summed over the threads and the lanes: tile
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


PIXELS = conv_k.PIXELS  # pixels of a row of the planes that `conv2d_forward`'s tiles hold


@functools.cache
def conv_rows(cout: int) -> int:
    """The output channels of `conv2d_forward`'s tile for a conv of `cout`: the tile that
    pads them least, the larger of two that pad them as much (looked up once a count: a
    step asks for every conv, forward and back)."""
    return min((r for r, _ in conv_k.TILES), key=lambda r: (-(-cout // r) * r, -r))


@njit(parallel=True, cache=True)
def _planes_conv(x1, x_n, ci_n, taps, wp, rows, groups, bias, out, wq, length, threads):
    # out[n, co] = bias[co] + the conv of sample n's planes (x_n values a sample, ci_n a
    # channel) with wp (G x blocks x Cin/G x taps x rows): a block of `rows` output
    # channels of a group at a time, from its group's input channels, into rows `length`
    # long, which stay in L1, cropped from wq wide to wo
    n_batch, cout, ho, wo = out.shape
    cig = x_n // ci_n // groups
    cog = cout // groups
    blocks = -(-cog // rows)  # a group's
    block_w = cig * taps.size * rows
    jobs = n_batch * groups * blocks
    out1 = out.reshape(out.size)
    for t in prange(threads):
        acc = np.empty(rows * length, np.float32)
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            n, gb = job // (groups * blocks), job % (groups * blocks)
            g, b = gb // blocks, gb % blocks
            x_0, w_0 = n * x_n + g * cig * ci_n, gb * block_w
            for p0 in range(0, length, PIXELS):
                if rows == 8:
                    conv_k.tile_8x32(x1, x_0, ci_n, taps, wp, w_0, cig, p0, acc, length)
                elif rows == 7:
                    conv_k.tile_7x32(x1, x_0, ci_n, taps, wp, w_0, cig, p0, acc, length)
                elif rows == 6:
                    conv_k.tile_6x32(x1, x_0, ci_n, taps, wp, w_0, cig, p0, acc, length)
                elif rows == 5:
                    conv_k.tile_5x32(x1, x_0, ci_n, taps, wp, w_0, cig, p0, acc, length)
                elif rows == 4:
                    conv_k.tile_4x32(x1, x_0, ci_n, taps, wp, w_0, cig, p0, acc, length)
                else:
                    conv_k.tile_3x32(x1, x_0, ci_n, taps, wp, w_0, cig, p0, acc, length)
            for r in range(min(rows, cog - b * rows)):
                co = g * cog + b * rows + r
                bias_co = bias[co]
                dst, src = np.uint64((n * cout + co) * ho * wo), np.uint64(r * length)
                for oh in range(ho):  # a masked vector a 16 values (a loop: scalar)
                    d, a = dst + np.uint64(oh * wo), src + np.uint64(oh * wq)
                    for c in range(np.uint64(0), np.uint64(wo), np.uint64(LANES16)):
                        add16(acc, a + c, min(np.uint64(LANES16), np.uint64(wo) - c), out1,
                              d + c, bias_co)


@njit(cache=True)
def pack_rows(w, groups, rows, flip):
    """The weights of a conv of `groups` groups as `_planes_conv`'s tiles read them:
    groups x blocks x Cin/G x kh*kw x `rows` (each group's output channels padded to whole
    blocks of rows with zeros). w is Cout x Cin/G x kh x kw; with `flip`, w is a forward
    conv's and the conv packed its input gradient's (seed 003): each group's kernel
    rotated by 180 degrees, its channel axes swapped, in the same pass."""
    co, ci, kh, kw = w.shape
    taps = kh * kw
    cog, cig = (ci, co // groups) if flip else (co // groups, ci)
    blocks = (cog + rows - 1) // rows
    wp = np.zeros((groups, blocks, cig, taps, rows), np.float32)
    for g in range(groups):
        for o in range(cog):
            b, ro = o // rows, o % rows
            for c in range(cig):
                for t in range(taps):
                    if flip:  # output channel o reads forward input o, from output c
                        wp[g, b, c, t, ro] = w[g * cig + c, o, kh - 1 - t // kw,
                                               kw - 1 - t % kw]
                    else:
                        wp[g, b, c, t, ro] = w[g * cog + o, c, t // kw, t % kw]
    return wp


def conv2d_forward(planes: PhasePlanes, w: np.ndarray, bias: np.ndarray | None,
                   out: np.ndarray, threads: int, groups: int = 1, flip: bool = False
                   ) -> None:
    """out = conv(x, w) + bias for a conv of `groups` groups (w: Cout x Cin/G x kh x
    kw; with `flip`, a forward conv's weight whose input gradient this conv is:
    `pack_rows`), from x's `planes` with rows of whole tiles (`phase_planes(...,
    multiple=PIXELS)`):
    each output pixel's sum over its group's input channels and the taps,
    `_planes_conv`'s tiles of a group's output channels x PIXELS pixels of a padded row,
    the taps read in place."""
    cout, cig = out.shape[1], planes.shape[1] // groups
    assert planes.length % PIXELS == 0, "planes' rows must be whole tiles"
    rows = conv_rows(cout // groups)
    wp = pack_rows(w, groups, rows, flip)
    xq = planes.xq
    _planes_conv(xq.reshape(xq.size), xq[0].size, xq[0].size // (cig * groups),
                 planes.taps, wp.reshape(wp.size), rows, groups,
                 np.zeros(cout, np.float32) if bias is None else bias, out, planes.wq,
                 planes.length, threads)


def conv2d_input_grad(gy: np.ndarray | PhasePlanes, w: np.ndarray,
                      x_shape: tuple[int, ...], pad: tuple[int, int],
                      dilation: tuple[int, int], threads: int, groups: int = 1
                      ) -> tuple[np.ndarray, PhasePlanes]:
    """dx (`x_shape`) of a stride-1 conv of `groups` groups: seed 003's full convolution
    of gy with the kernel rotated by 180 degrees and each group's channel axes swapped,
    that is `conv2d_forward` on gy's planes padded by (k - 1) * d - p (not negative),
    with the same groups; gy may come as those planes (`PlanesFor`). Returns dx and the
    planes, from which the weight gradient
    may read dy's rows (`conv2d_weight_grad`'s `dy_planes`)."""
    kh, kw = w.shape[2:]
    full = ((kh - 1) * dilation[0] - pad[0], (kw - 1) * dilation[1] - pad[1])
    planes = gy if isinstance(gy, PhasePlanes) else phase_planes(
        gy, x_shape[2:], (kh, kw), (1, 1), full, dilation, multiple=PIXELS)
    gx = np.empty(x_shape, np.float32)
    conv2d_forward(planes, w, None, gx, threads, groups, flip=True)
    return gx, planes
