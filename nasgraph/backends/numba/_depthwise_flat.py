"""3x3 depthwise convs of stride 1 or 2 on small maps, one channel plane at a time, flat.

A 7x7 plane is 49 values: three vectors and a bit. In NCHW each tap of a stride-1 conv
reads the same plane shifted by a constant, s = (i - 1) * W + (j - 1), so an output
plane is, over the nine taps, w[t] * x[q + s[t]] for the pixels q of the plane laid out
flat. The plane is copied into scratch with W + 1 zeros on either side, so that a tap
that falls off the top or bottom of the map reads zeros; only the column shifts wrap
(the left taps of the first column read the row above's last value, the right taps of
the last column the next row's first), and two masks on the output's grid zero those,
once for each column's three-tap sum. Everything else is whole vectors along the plane,
nine loads and multiply-adds a vector in registers, with no per-row loops. The NHWC
kernels (`_depthwise`) transpose the tensor in and out, which took longer than the
arithmetic; the phase planes (`_planes_depthwise`) copy and crop rows.

A stride-2 conv reads its input's four stride phases (even and odd rows and columns),
each laid out on the output's grid: a tap reads one phase, shifted by a constant on that
grid, so the same sums hold (only the left taps wrap), the copy in being a gather and
the input gradient's way out a scatter.

The planes go in memory order. Gradients, for the output gradient g, masked as its
tap's column (g_t):

    dx[q] = sum over t of w[t] * g_t[q - s[t]]   (phase by phase for stride 2)
    dw[t] = sum over samples and q of g_t[q] * x[q + s[t]]

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
    holds the input's stride phases (one for stride 1), each between `lead` zeros, so
    that a tap that leaves the map through the top or bottom reads zeros; an input pixel
    k goes to scratch[place[k]], and its input gradient comes from phase-major
    dphases[gather[k]]. Tap t reads scratch from reads[t]; those of the left column
    (j = 0) are zeroed by `left` on the output grid's first column, where they wrap
    into the row above, and those of the right column (stride 1) by `right` on its last.
    The input gradient reads dy (between `lead` zeros) from back_reads[t]."""

    stride: int
    out_hw: tuple[int, int]
    length: int
    lead: int
    scratch: int
    reads: np.ndarray  # int64, 9
    back_reads: np.ndarray  # int64, 9
    left: np.ndarray  # float32, length
    right: np.ndarray
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
    cols = np.arange(length) % wo
    reads, back_reads = [], []
    for i in range(3):
        a, di = (i - 1) % s, (i - 1) // s  # the phase's row parity, its row offset
        for j in range(3):
            b, dj = (j - 1) % s, (j - 1) // s
            shift = di * wo + dj
            reads.append((a * s + b) * region + lead + shift)
            back_reads.append(lead - shift)
    # stride 2: tap j = 2 reads the odd columns' phase at the same column, which does not
    # wrap (a phase narrower than the grid has zeros past its columns)
    right = cols != wo - 1 if s == 1 else np.ones(length, bool)
    y, x = np.divmod(np.arange(h * w), w)
    p = (y % s) * s + x % s
    at = (y // s) * wo + x // s
    return FlatGeometry(s, (ho, wo), length, lead, s * s * region, np.array(reads, np.int64),
                        np.array(back_reads, np.int64), (cols != 0).astype(np.float32),
                        right.astype(np.float32), (p * region + lead + at).astype(np.int64),
                        (p * length + at).astype(np.int64))


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _nine(wf, ch, left, right, sl, sm, sr, at, b, acc, to, length):
    # acc[to + q] = b + left[q] * (the left taps' w * sl[at + q]) + (the middle taps' w *
    # sm[at + q]) + right[q] * (the right taps' w * sr[at + q]) for q < length, w the
    # nine weights of channel ch in the flat wf: the forward with sl, sm and sr all the
    # input; the stride-1 input gradient with them dy masked by left, dy and dy masked by
    # right, and no masks of its own (ones). Flat offsets, no views: a view per plane
    # costs reference counting, as long as a 4x4 plane's arithmetic
    w = np.uint64(ch * 9)
    w0, w1, w2, w3, w4 = wf[w], wf[w + 1], wf[w + 2], wf[w + 3], wf[w + 4]
    w5, w6, w7, w8 = wf[w + 5], wf[w + 6], wf[w + 7], wf[w + 8]
    a0, a1, a2, a3, a4 = (np.uint64(at[0]), np.uint64(at[1]), np.uint64(at[2]),
                          np.uint64(at[3]), np.uint64(at[4]))
    a5, a6, a7, a8 = np.uint64(at[5]), np.uint64(at[6]), np.uint64(at[7]), np.uint64(at[8])
    for q in range(np.uint64(length)):
        acc[to + q] = (b + left[q] * (w0 * sl[a0 + q] + w3 * sl[a3 + q] + w6 * sl[a6 + q])
                       + (w1 * sm[a1 + q] + w4 * sm[a4 + q] + w7 * sm[a7 + q])
                       + right[q] * (w2 * sr[a2 + q] + w5 * sr[a5 + q] + w8 * sr[a8 + q]))


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
    """out (N x C*M x Ho x Wo) = the 3x3 conv of x (N x C x H x W), one input channel a
    group, with w (C*M x 9) plus bias (C*M), `geometry` its `FlatGeometry`: output
    channels c*M .. c*M + M-1 read input channel c (M = 1: depthwise; C = 1: a stem).
    Each thread a run of the N x C input planes in memory order, each copied into zeroed
    scratch, then for each of its outputs out[q] = bias + the sum over taps of w[t] *
    scratch[reads[t] + q], the left and right taps masked."""
    stride, _, length, lead, scratch, reads, _, left, right, place, _ = geometry
    n_batch, c, h, wd = x.shape
    m = out.shape[1] // c
    hw, howo = h * wd, out.shape[2] * out.shape[3]
    planes = n_batch * c
    x1, w1, o1 = x.reshape(x.size), w.reshape(w.size), out.reshape(out.size)
    for th in prange(threads):
        scr = np.zeros(scratch, np.float32)
        for plane in range(th * planes // threads, (th + 1) * planes // threads):
            _copy_in(x1, np.uint64(plane * hw), hw, place, lead, stride, scr)
            for k in range(m):  # output plane (n, c*M + k), its channel c*M + k, straight
                o = plane * m + k  # into out: its Ho x Wo values, not the whole vectors
                ch = o % (c * m)
                _nine(w1, ch, left, right, scr, scr, scr, reads, bias[ch], o1,
                      np.uint64(o * howo), howo)


@njit(cache=True, fastmath=SUMS)
def _tap_sums(gl, gm, gr, x, at, lead, length, sums, to):
    # sums[to + t] += the sum over q of g[lead + q] * x[at[t] + q], g being dy masked by
    # left (gl) for the left taps, dy (gm) for the middle ones, masked by right (gr) for
    # the right ones; each in float32 over the plane
    lead_u = np.uint64(lead)
    a0, a1, a2, a3, a4 = (np.uint64(at[0]), np.uint64(at[1]), np.uint64(at[2]),
                          np.uint64(at[3]), np.uint64(at[4]))
    a5, a6, a7, a8 = np.uint64(at[5]), np.uint64(at[6]), np.uint64(at[7]), np.uint64(at[8])
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = np.float32(0.0)
    for q in range(np.uint64(length)):
        lq, mq, rq = gl[lead_u + q], gm[lead_u + q], gr[lead_u + q]
        s0 += lq * x[a0 + q]
        s1 += mq * x[a1 + q]
        s2 += rq * x[a2 + q]
        s3 += lq * x[a3 + q]
        s4 += mq * x[a4 + q]
        s5 += rq * x[a5 + q]
        s6 += lq * x[a6 + q]
        s7 += mq * x[a7 + q]
        s8 += rq * x[a8 + q]
    sums[to] += s0
    sums[to + 1] += s1
    sums[to + 2] += s2
    sums[to + 3] += s3
    sums[to + 4] += s4
    sums[to + 5] += s5
    sums[to + 6] += s6
    sums[to + 7] += s7
    sums[to + 8] += s8


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _phase_input_grads(wf, ch, gl, gm, gr, back_reads, dph, length):
    # the input gradient of a stride-2 conv, phase by phase: dph[p * L + u] = the sum over
    # the taps t that read phase p of w[t] * g[back_reads[t] + u] (g: dy masked as for
    # `_tap_sums`). Tap (i, j) reads phase ((i - 1) % 2, (j - 1) % 2): the centre tap
    # phase 0, the taps left and right of it phase 1, above and below it phase 2, the
    # corners phase 3; w: channel ch's nine in the flat wf
    w = np.uint64(ch * 9)
    w0, w1, w2, w3, w4 = wf[w], wf[w + 1], wf[w + 2], wf[w + 3], wf[w + 4]
    w5, w6, w7, w8 = wf[w + 5], wf[w + 6], wf[w + 7], wf[w + 8]
    r0, r1, r2, r3, r4 = (np.uint64(back_reads[0]), np.uint64(back_reads[1]),
                          np.uint64(back_reads[2]), np.uint64(back_reads[3]),
                          np.uint64(back_reads[4]))
    r5, r6, r7, r8 = (np.uint64(back_reads[5]), np.uint64(back_reads[6]),
                      np.uint64(back_reads[7]), np.uint64(back_reads[8]))
    lu = np.uint64(length)
    p1, p2, p3 = lu, lu + lu, lu + lu + lu
    for u in range(lu):
        dph[u] = w4 * gm[r4 + u]
        dph[p1 + u] = w3 * gl[r3 + u] + w5 * gr[r5 + u]
        dph[p2 + u] = w1 * gm[r1 + u] + w7 * gm[r7 + u]
        dph[p3 + u] = w0 * gl[r0 + u] + w2 * gr[r2 + u] + w6 * gl[r6 + u] + w8 * gr[r8 + u]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def depthwise_backward(x, gy, w, gx, parts, geometry, need_dx, threads):
    """The gradients of `depthwise_forward`'s conv (`geometry`: its `FlatGeometry`):
    parts[t] (threads x C*M x 9, float64) += thread t's share of the weight gradient,
    and where `need_dx`, gx (N x C x H x W), the sum over an input channel's M outputs.
    Each thread a run of the N x C input planes in memory order; each output's dy plane
    is masked once for the left taps and once for the right ones."""
    (stride, _, length, lead, scratch, reads, back_reads, left, right, place,
     gather) = geometry
    n_batch, c, h, wd = x.shape
    m = gy.shape[1] // c
    hw, howo = h * wd, gy.shape[2] * gy.shape[3]
    planes = n_batch * c
    x1, g1, o1 = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size)
    w1, p1 = w.reshape(w.size), parts.reshape(parts.size)
    lead_u, lu = np.uint64(lead), np.uint64(length)
    phased = np.uint64(stride * stride * length)
    for th in prange(threads):
        sx = np.zeros(scratch, np.float32)
        gm = np.zeros(lead + length + lead, np.float32)
        gl, gr = np.zeros_like(gm), np.zeros_like(gm)
        dph = np.empty(phased, np.float32)
        total = np.empty(phased, np.float32)  # over the M outputs
        ones = np.ones(length, np.float32)  # dy comes masked: none on the input's side
        for plane in range(th * planes // threads, (th + 1) * planes // threads):
            src = np.uint64(plane * hw)
            _copy_in(x1, src, hw, place, lead, stride, sx)
            for k in range(m):
                o = plane * m + k
                ch = o % (c * m)
                g_src = np.uint64(o * howo)
                for q in range(np.uint64(howo)):
                    gm[lead_u + q] = g1[g_src + q]
                for q in range(lu):
                    gl[lead_u + q] = gm[lead_u + q] * left[q]
                    gr[lead_u + q] = gm[lead_u + q] * right[q]
                _tap_sums(gl, gm, gr, sx, reads, lead, length, p1,
                          np.uint64((th * c * m + ch) * 9))
                if not need_dx:
                    continue
                if stride == 1 and m == 1:  # one output: its sum straight into gx
                    _nine(w1, ch, ones, ones, gl, gm, gr, back_reads, np.float32(0.0), o1,
                          src, hw)
                    continue
                if stride == 1:
                    _nine(w1, ch, ones, ones, gl, gm, gr, back_reads, np.float32(0.0), dph,
                          np.uint64(0), length)
                else:
                    _phase_input_grads(w1, ch, gl, gm, gr, back_reads, dph, length)
                if k == 0:
                    for u in range(phased):
                        total[u] = dph[u]
                else:
                    for u in range(phased):
                        total[u] += dph[u]
            if not need_dx or (stride == 1 and m == 1):
                continue
            if stride == 1:
                for j in range(np.uint64(hw)):
                    o1[src + j] = total[j]
            else:
                for j in range(np.uint64(hw)):
                    o1[src + j] = total[gather[j]]
