"""3x3 depthwise convs of stride 1 or 2 on small maps, one channel plane at a time, flat.

A 7x7 plane is 49 values: three vectors and a bit. In NCHW each tap of a stride-1 conv
reads the same plane shifted by a constant, s = (i - 1) * W + (j - 1), so an output
plane is, over the nine taps, w[t] * mask[t] * x[q + s[t]] for the pixels q of the plane
laid out flat: `mask[t]` zeroes the pixels whose tap falls off the map (a column that
wraps into the next row, a row above or below). The plane is copied into scratch with
zeros around it, so that the shifted reads stay inside; everything else is whole vectors
along the plane, nine loads and multiply-adds a vector in registers, with no per-row
loops. The NHWC kernels (`_depthwise`) transpose the tensor in and out, which took
longer than the arithmetic; the phase planes (`_planes_depthwise`) copy and crop rows.

A stride-2 conv reads its input's four stride phases (even and odd rows and columns),
each laid out on the output's grid: a tap reads one phase, shifted by a constant on that
grid, so the same sums hold, the copy in being a gather and the input gradient's way out
a scatter.

The planes go in memory order. Gradients, for the output gradient g:

    dx[q] = sum over t of w[t] * mask[t][q - s[t]] * g[q - s[t]]   (per phase)
    dw[t] = sum over samples and q of g[q] * mask[t][q] * x[q + s[t]]

dw's sums: float32 over a plane, float64 across.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

FASTMATH = {"contract", "nsz", "arcp"}
SUMS = {"reassoc", "contract", "nsz", "arcp"}  # dw's plane sums: reassociated, vectorized
LANES = 16  # a plane is padded to whole vectors of this many values


class FlatGeometry(NamedTuple):
    """A 3x3 depthwise conv with padding 1 and stride 1 or 2 on H x W maps, laid out flat
    on its Ho x Wo output grid, `length` values a plane (whole vectors). The scratch
    holds the input's stride phases (one for stride 1), each between `lead` zeros; an
    input pixel k goes to scratch[place[k]], and its input gradient comes from
    phase-major dphases[gather[k]]. Tap t reads scratch from reads[t], masked by
    masks[t] (9 x length, float32); its input gradient reads dy from
    back_reads[t] in dy's scratch (dy between `lead` zeros), masked by back[t], into the
    phase `phase[t]`."""

    stride: int
    out_hw: tuple[int, int]
    length: int
    lead: int
    scratch: int
    reads: np.ndarray  # int64, 9
    back_reads: np.ndarray  # int64, 9
    phase: np.ndarray  # int64, 9
    masks: np.ndarray
    back: np.ndarray
    place: np.ndarray  # int64, H*W
    gather: np.ndarray  # int64, H*W


@functools.lru_cache(maxsize=64)
def flat_geometry(h: int, w: int, stride: int) -> FlatGeometry:
    """The layout for H x W maps (once per geometry, shared, never written)."""
    s = stride
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    length = -(-(ho * wo) // LANES) * LANES
    lead = wo + 1  # the farthest shift on the output grid, either way
    region = lead + length + lead  # a phase's share of the scratch
    q = np.arange(length)
    rows, cols = np.divmod(q, wo)
    inside = q < ho * wo
    reads, back_reads, phase, masks, back = [], [], [], [], []
    for i in range(3):
        a, di = (i - 1) % s, (i - 1) // s  # the phase's row parity, its row offset
        for j in range(3):
            b, dj = (j - 1) % s, (j - 1) // s
            rows_in, cols_in = (h - a + s - 1) // s, (w - b + s - 1) // s  # the phase's
            mask = (inside & (rows + di >= 0) & (rows + di < rows_in) & (cols + dj >= 0)
                    & (cols + dj < cols_in))
            shift = di * wo + dj
            src = q - shift  # the output pixel whose tap reads phase pixel q
            ok = (src >= 0) & (src < length)
            shifted = np.zeros(length, bool)
            shifted[ok] = mask[src[ok]]
            p = a * s + b
            reads.append(p * region + lead + shift)
            back_reads.append(lead - shift)
            phase.append(p)
            masks.append(mask)
            back.append(shifted)
    y, x = np.divmod(np.arange(h * w), w)
    p = (y % s) * s + x % s
    at = (y // s) * wo + x // s
    return FlatGeometry(s, (ho, wo), length, lead, s * s * region, np.array(reads, np.int64),
                        np.array(back_reads, np.int64), np.array(phase, np.int64),
                        np.array(masks, np.float32), np.array(back, np.float32),
                        (p * region + lead + at).astype(np.int64),
                        (p * length + at).astype(np.int64))


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _nine(wc, m, s, at, b, acc, length):
    # acc[q] = b + the sum over the nine taps of wc[t] * m[t, q] * s[at[t] + q]
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wc[0], wc[1], wc[2], wc[3], wc[4], wc[5], wc[6], \
        wc[7], wc[8]
    a0, a1, a2, a3, a4 = (np.uint64(at[0]), np.uint64(at[1]), np.uint64(at[2]),
                          np.uint64(at[3]), np.uint64(at[4]))
    a5, a6, a7, a8 = np.uint64(at[5]), np.uint64(at[6]), np.uint64(at[7]), np.uint64(at[8])
    for q in range(np.uint64(length)):
        acc[q] = (b + w0 * (m[0, q] * s[a0 + q]) + w1 * (m[1, q] * s[a1 + q])
                  + w2 * (m[2, q] * s[a2 + q]) + w3 * (m[3, q] * s[a3 + q])
                  + w4 * (m[4, q] * s[a4 + q]) + w5 * (m[5, q] * s[a5 + q])
                  + w6 * (m[6, q] * s[a6 + q]) + w7 * (m[7, q] * s[a7 + q])
                  + w8 * (m[8, q] * s[a8 + q]))


@njit(inline="always", cache=True)
def _copy_in(x1, src, hw, place, lead, stride, scr):
    # the input plane at x1[src:] into the scratch: as it lies for stride 1, else each
    # pixel into its phase
    if stride == 1:
        at = np.uint64(lead)
        for k in range(np.uint64(hw)):
            scr[at + k] = x1[src + k]
    else:
        for k in range(np.uint64(hw)):
            scr[place[k]] = x1[src + k]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def depthwise_forward(x, w, bias, out, geometry, threads):
    """out (N x C x Ho x Wo) = the 3x3 conv of x (N x C x H x W) with w (C x 9) plus bias
    (C), `geometry` its `FlatGeometry`: each thread a run of the N x C planes in memory
    order, each copied into zeroed scratch, then out[q] = bias + the sum over taps of
    w[t] * masks[t, q] * scratch[reads[t] + q]."""
    stride, _, length, lead, scratch, reads, _, _, masks, _, place, _ = geometry
    n_batch, c, h, wd = x.shape
    hw, howo = h * wd, out.shape[2] * out.shape[3]
    planes = n_batch * c
    x1, o1 = x.reshape(x.size), out.reshape(out.size)
    for th in prange(threads):
        scr = np.zeros(scratch, np.float32)
        acc = np.empty(length, np.float32)
        for plane in range(th * planes // threads, (th + 1) * planes // threads):
            ch = plane % c
            _copy_in(x1, np.uint64(plane * hw), hw, place, lead, stride, scr)
            _nine(w[ch], masks, scr, reads, bias[ch], acc, length)
            dst = np.uint64(plane * howo)
            for q in range(np.uint64(howo)):
                o1[dst + q] = acc[q]


@njit(cache=True, fastmath=SUMS)
def _tap_sums(g, x, at, masks, lead, sums):
    # sums[t] += the sum over q of g[lead + q] * masks[t, q] * x[at[t] + q], each in
    # float32 over the plane
    length = masks.shape[1]
    lead_u = np.uint64(lead)
    a0, a1, a2, a3, a4 = (np.uint64(at[0]), np.uint64(at[1]), np.uint64(at[2]),
                          np.uint64(at[3]), np.uint64(at[4]))
    a5, a6, a7, a8 = np.uint64(at[5]), np.uint64(at[6]), np.uint64(at[7]), np.uint64(at[8])
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = np.float32(0.0)
    for q in range(np.uint64(length)):
        gq = g[lead_u + q]
        s0 += gq * masks[0, q] * x[a0 + q]
        s1 += gq * masks[1, q] * x[a1 + q]
        s2 += gq * masks[2, q] * x[a2 + q]
        s3 += gq * masks[3, q] * x[a3 + q]
        s4 += gq * masks[4, q] * x[a4 + q]
        s5 += gq * masks[5, q] * x[a5 + q]
        s6 += gq * masks[6, q] * x[a6 + q]
        s7 += gq * masks[7, q] * x[a7 + q]
        s8 += gq * masks[8, q] * x[a8 + q]
    sums[0] += s0
    sums[1] += s1
    sums[2] += s2
    sums[3] += s3
    sums[4] += s4
    sums[5] += s5
    sums[6] += s6
    sums[7] += s7
    sums[8] += s8


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _phase_input_grads(wc, back, g, back_reads, dph, length):
    # the input gradient of a stride-2 conv, phase by phase: dph[p * L + u] = the sum over
    # the taps t that read phase p of wc[t] * back[t, u] * g[back_reads[t] + u]. Tap
    # (i, j) reads phase ((i - 1) % 2, (j - 1) % 2): the centre tap phase 0, the taps
    # left and right of it phase 1, above and below it phase 2, the corners phase 3
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wc[0], wc[1], wc[2], wc[3], wc[4], wc[5], wc[6], \
        wc[7], wc[8]
    r0, r1, r2, r3, r4 = (np.uint64(back_reads[0]), np.uint64(back_reads[1]),
                          np.uint64(back_reads[2]), np.uint64(back_reads[3]),
                          np.uint64(back_reads[4]))
    r5, r6, r7, r8 = (np.uint64(back_reads[5]), np.uint64(back_reads[6]),
                      np.uint64(back_reads[7]), np.uint64(back_reads[8]))
    lu = np.uint64(length)
    p1, p2, p3 = lu, lu + lu, lu + lu + lu
    for u in range(lu):
        dph[u] = w4 * (back[4, u] * g[r4 + u])
        dph[p1 + u] = w3 * (back[3, u] * g[r3 + u]) + w5 * (back[5, u] * g[r5 + u])
        dph[p2 + u] = w1 * (back[1, u] * g[r1 + u]) + w7 * (back[7, u] * g[r7 + u])
        dph[p3 + u] = (w0 * (back[0, u] * g[r0 + u]) + w2 * (back[2, u] * g[r2 + u])
                       + w6 * (back[6, u] * g[r6 + u]) + w8 * (back[8, u] * g[r8 + u]))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def depthwise_backward(x, gy, w, gx, parts, geometry, need_dx, threads):
    """The gradients of `depthwise_forward`'s conv (`geometry`: its `FlatGeometry`):
    parts[t] (threads x C x 9, float64) += thread t's share of the weight gradient, and
    where `need_dx`, gx (N x C x H x W). Each thread a run of the N x C planes in memory
    order."""
    (stride, _, length, lead, scratch, reads, back_reads, phase, masks, back, place,
     gather) = geometry
    n_batch, c, h, wd = x.shape
    hw, howo = h * wd, gy.shape[2] * gy.shape[3]
    planes = n_batch * c
    x1, g1, o1 = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size)
    lead_u = np.uint64(lead)
    for th in prange(threads):
        sx = np.zeros(scratch, np.float32)
        sg = np.zeros(lead + length + lead, np.float32)
        dph = np.empty(stride * stride * length, np.float32)
        for plane in range(th * planes // threads, (th + 1) * planes // threads):
            ch = plane % c
            src = np.uint64(plane * hw)
            _copy_in(x1, src, hw, place, lead, stride, sx)
            g_src = np.uint64(plane * howo)
            for q in range(np.uint64(howo)):
                sg[lead_u + q] = g1[g_src + q]
            _tap_sums(sg, sx, reads, masks, lead, parts[th, ch])
            if not need_dx:
                continue
            if stride == 1:
                _nine(w[ch], back, sg, back_reads, np.float32(0.0), dph, length)
                for k in range(np.uint64(hw)):
                    o1[src + k] = dph[k]
            else:
                _phase_input_grads(w[ch], back, sg, back_reads, dph, length)
                for k in range(np.uint64(hw)):
                    o1[src + k] = dph[gather[k]]
