"""Stride-1 3x3 depthwise convs on small maps, one channel plane at a time, flat.

A 7x7 plane is 49 values: three vectors and a bit. In NCHW each tap of a stride-1 conv
reads the same plane shifted by a constant, s = (i - 1) * W + (j - 1), so an output
plane is, over the nine taps, w[t] * mask[t] * x[q + s[t]] for the pixels q of the plane
laid out flat: `mask[t]` zeroes the pixels whose tap falls off the map (a column that
wraps into the next row, a row above or below). The plane is copied into scratch with
zeros around it, so that the shifted reads stay inside; everything else is whole vectors
along the plane, nine loads and multiply-adds a vector in registers, with no per-row
loops. The NHWC kernels (`_depthwise`) transpose the tensor in and out, which took
longer than the arithmetic; the phase planes (`_planes_depthwise`) copy and crop rows.

The planes go in memory order. Gradients, for the output gradient g:

    dx[q] = sum over t of w[t] * mask[t][q - s[t]] * g[q - s[t]]
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
    """A 3x3 stride-1 depthwise conv, padding 1, on H x W maps, laid out flat: each tap's
    shift, its masks over the plane padded to `length` values (9 x length, float32),
    the input gradient's masks (`back`: mask[t] shifted by s[t]), and the scratch: its
    zeros before the plane (`lead`) and its length."""

    shifts: np.ndarray  # int64, 9
    masks: np.ndarray
    back: np.ndarray
    length: int
    lead: int
    scratch: int


@functools.lru_cache(maxsize=64)
def flat_geometry(h: int, w: int) -> FlatGeometry:
    """The layout for H x W maps (once per geometry, shared, never written)."""
    hw = h * w
    length = -(-hw // LANES) * LANES
    q = np.arange(length)
    rows, cols = np.divmod(q, w)
    inside = q < hw
    shifts, masks, back = [], [], []
    for i in range(3):
        for j in range(3):
            r, c = rows + i - 1, cols + j - 1
            mask = inside & (r >= 0) & (r < h) & (c >= 0) & (c < w)
            s = (i - 1) * w + (j - 1)
            src = q - s  # the output pixel whose tap reads pixel q
            ok = (src >= 0) & (src < length)
            shifted = np.zeros(length, bool)
            shifted[ok] = mask[src[ok]]
            shifts.append(s)
            masks.append(mask)
            back.append(shifted & inside)
    lead = w + 1  # the farthest shift, either way
    return FlatGeometry(np.array(shifts, np.int64), np.array(masks, np.float32),
                        np.array(back, np.float32), length, lead, lead + length + lead)


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _nine(wc, m, s, at, b, acc, length):
    # acc[q] = b + the sum over the nine taps of wc[t] * m[t, q] * s[at[t] + q]
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wc[0], wc[1], wc[2], wc[3], wc[4], wc[5], wc[6], \
        wc[7], wc[8]
    a0, a1, a2, a3, a4 = at[0], at[1], at[2], at[3], at[4]
    a5, a6, a7, a8 = at[5], at[6], at[7], at[8]
    for q in range(np.uint64(length)):
        acc[q] = (b + w0 * (m[0, q] * s[a0 + q]) + w1 * (m[1, q] * s[a1 + q])
                  + w2 * (m[2, q] * s[a2 + q]) + w3 * (m[3, q] * s[a3 + q])
                  + w4 * (m[4, q] * s[a4 + q]) + w5 * (m[5, q] * s[a5 + q])
                  + w6 * (m[6, q] * s[a6 + q]) + w7 * (m[7, q] * s[a7 + q])
                  + w8 * (m[8, q] * s[a8 + q]))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def depthwise_forward(x, w, bias, out, shifts, masks, lead, scratch, threads):
    """out (N x C x H x W) = the 3x3 conv of x with w (C x 9) plus bias (C): each thread
    a run of the N x C planes in memory order, each copied into zeroed scratch, then
    out[q] = bias + the sum over taps of w[t] * masks[t, q] * plane[q + shifts[t]]."""
    n_batch, c, h, wd = x.shape
    hw, length = h * wd, masks.shape[1]
    planes = n_batch * c
    x1, o1 = x.reshape(x.size), out.reshape(out.size)
    hwu, lead_u = np.uint64(hw), np.uint64(lead)
    at = np.empty(9, np.uint64)
    for t in range(9):
        at[t] = np.uint64(lead + shifts[t])
    for th in prange(threads):
        scr = np.zeros(scratch, np.float32)
        acc = np.empty(length, np.float32)
        for plane in range(th * planes // threads, (th + 1) * planes // threads):
            ch = plane % c
            src = np.uint64(plane * hw)
            for q in range(hwu):
                scr[lead_u + q] = x1[src + q]
            _nine(w[ch], masks, scr, at, bias[ch], acc, length)
            for q in range(hwu):
                o1[src + q] = acc[q]


@njit(cache=True, fastmath=SUMS)
def _tap_sums(g, x, at, masks, lead, sums):
    # sums[t] += the sum over q of g[lead + q] * masks[t, q] * x[at[t] + q], each in
    # float32 over the plane
    length = masks.shape[1]
    lead_u = np.uint64(lead)
    a0, a1, a2, a3, a4 = at[0], at[1], at[2], at[3], at[4]
    a5, a6, a7, a8 = at[5], at[6], at[7], at[8]
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


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def depthwise_backward(x, gy, w, gx, parts, shifts, masks, back, lead, scratch, need_dx,
                       threads):
    """The gradients of `depthwise_forward`'s conv: parts[t] (threads x C x 9, float64)
    += thread t's share of the weight gradient, and where `need_dx`, gx (N x C x H x W).
    Each thread a run of the N x C planes in memory order."""
    n_batch, c, h, wd = x.shape
    hw, length = h * wd, masks.shape[1]
    planes = n_batch * c
    x1, g1, o1 = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size)
    hwu, lead_u = np.uint64(hw), np.uint64(lead)
    at, back_at = np.empty(9, np.uint64), np.empty(9, np.uint64)
    for t in range(9):
        at[t], back_at[t] = np.uint64(lead + shifts[t]), np.uint64(lead - shifts[t])
    for th in prange(threads):
        sx = np.zeros(scratch, np.float32)
        sg = np.zeros(scratch, np.float32)
        dxq = np.empty(length, np.float32)
        for plane in range(th * planes // threads, (th + 1) * planes // threads):
            ch = plane % c
            src = np.uint64(plane * hw)
            for q in range(hwu):
                sx[lead_u + q] = x1[src + q]
                sg[lead_u + q] = g1[src + q]
            _tap_sums(sg, sx, at, masks, lead, parts[th, ch])
            if need_dx:
                _nine(w[ch], back, sg, back_at, np.float32(0.0), dxq, length)
                for q in range(hwu):
                    o1[src + q] = dxq[q]
