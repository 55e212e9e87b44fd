"""Stride-phase planes: the layout of `_wgrad`'s register-tiled weight gradient
(`_planes_wgrad`), and the convs of few channels that train on it.

The input is split into its sh x sw stride phases, each zero-padded into planes Wq = Wo +
(kw-1)*dw // sw wide (`phase_planes`), rows of `length` values (whole vectors or tiles).
Output pixel (oh, ow) is at p = oh*Wq + ow of a row, and tap (i, j) reads the plane of
phase (i*dh % sh, j*dw % sw) at p + (i*dh // sh)*Wq + j*dw // sw: one offset per tap, the
same for every pixel (`PhasePlanes.taps`). The padded columns cost (Wq - Wo)/Wo more
work; a 14x14 output of a 3x3 conv, 14%.

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

LANES = wgrad_k.LANES  # pixels a vector of `_wgrad`'s 8-pixel tiles: rows' default multiple


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
