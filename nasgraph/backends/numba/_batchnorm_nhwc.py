"""BatchNorm's passes that write the layout a tiled conv reads: its output
(`batchnorm_out_padded_nhwc`) or its input gradient (`batchnorm_dx_padded_nhwc`) zero-padded
in NHWC (`_backward_conv.PaddedNHWC`), so that the conv beside it copies nothing
(docs/numba.md, "BatchNorm writes what the conv reads"). Each computes a row of 16
channels as `_batchnorm`'s NCHW passes do and moves it out 16 pixels at a time
in registers (`_transpose.transpose16`). Flat arrays, unsigned offsets, as there.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._batchnorm import (
    _MASKED,
    _dx_coefficients,
    _normalize_run,
)
from nasgraph.backends.numba._transpose import BLOCK as SIDE
from nasgraph.backends.numba._transpose import transpose16


def batchnorm_out_padded_nhwc(x, scale, shift, act, xp, threads):
    """BatchNorm's output act(x * scale + shift) (`_normalize_run`'s, per channel, `act`
    as `batchnorm_train` applies it) written zero-padded in NHWC into xp (N x (H+2ph) x
    (W+2pw) x C): the layout in which the conv after it reads its input
    (`_backward_conv.PaddedNHWC`), so that the conv does not copy it there. Where
    `padded_fits`, as `batchnorm_dx_padded_nhwc`."""
    if threads == 1:
        _padded_nhwc_1(x, x, _NO_COEFFICIENTS, scale, shift, act, xp, False)
    else:
        _padded_nhwc(x, x, _NO_COEFFICIENTS, scale, shift, act, xp, False)


def batchnorm_dx_padded_nhwc(x, gy, gamma, mean, invstd, ggamma, gbeta, training, scale,
                             shift, act, gp, threads):
    """BatchNorm's input gradient (`batchnorm_backward`'s dx, gy masked by `act` as there)
    written zero-padded in NHWC into gp (N x (H+2ph) x (W+2pw) x C): the layout in which a
    conv's tiles read dy (`_backward_conv.PaddedNHWC`), so that the conv that produced x
    does not copy it there. From the sums `batchnorm_backward` left in ggamma and gbeta
    (run with need_dx False), where `padded_fits`: a job per sample and block of 16
    channels, a row of them computed as the NCHW pass computes it, then transposed in
    registers 16 pixels at a time (`_transpose.transpose16`)."""
    count = x.shape[0] * x.shape[2] * x.shape[3]
    k = _coefficients(gamma, mean, invstd, ggamma, gbeta, count, training)
    if threads == 1:
        _padded_nhwc_1(x, gy, k, scale, shift, act, gp, True)
    else:
        _padded_nhwc(x, gy, k, scale, shift, act, gp, True)


def padded_fits(shape: tuple[int, ...]) -> bool:
    """Whether `batchnorm_dx_padded_nhwc` and `batchnorm_out_padded_nhwc` take an N x C x H
    x W tensor: whole blocks of 16 channels, rows of two or more whole blocks of 16
    pixels. Measured on an AVX-512 Xeon, one thread, caches flushed before each call (as
    a training step leaves them), against BatchNorm's NCHW pass and the conv's copy:
    forward 0.69-0.85x and backward 0.87-1.02x on maps 32 to 64 wide (16-64 channels);
    on 16 x 16 maps 0.93-1.26x and 1.0-1.36x, on 8 x 8 maps (two rows a block) 1.06-1.15x
    and 1.17-1.24x, which keep the copy."""
    _, c, _, w = shape
    return c % SIDE == 0 and w % SIDE == 0 and w >= 2 * SIDE


_NO_COEFFICIENTS = np.zeros((4, 1), np.float32)  # what the output pass does not read


@njit(cache=True)
def _coefficients(gamma, mean, invstd, ggamma, gbeta, count, training):
    # rows mu, k_g, k0, k1 (float32, per channel) of dx = k_g * (g - k0 - (x - mu) * k1),
    # from the float32 sums: gbeta = sum(g), ggamma = sum(g * (x - mu)) * invstd
    k = np.empty((4, mean.size), np.float32)
    for c in range(mean.size):
        k[0, c] = np.float32(mean[c])
        k[1, c], k[2, c], k[3, c] = _dx_coefficients(gamma[c], invstd[c], gbeta[c],
                                                     ggamma[c] / invstd[c], count, training)
    return k


# The rows of the padded passes are loops of a runtime length m: of a constant 16 they
# were unrolled into scalar code (the loads could alias buf, which the loop vectorizer
# checks at run time and the SLP vectorizer cannot)


@njit(inline="always", cache=True, fastmath=_MASKED)
def _dx_rows(x1, g1, at, hw, c0, m, k, scale, shift, act, buf):
    # dx of channels c0..c0+15 at m consecutive values of their planes from `at` (channel
    # c0's), into buf channel by channel (16 x m), as `_dx_run` computes it
    zero, six = np.float32(0.0), np.float32(6.0)
    mu = np.uint64(m)
    for i in range(np.uint64(SIDE)):
        c = c0 + i
        s, b = at + i * hw, i * mu
        sc, sh, km, kk, ka, kb = scale[c], shift[c], k[0, c], k[1, c], k[2, c], k[3, c]
        if act == 1:
            for q in range(mu):
                v, g = x1[s + q], g1[s + q]
                g = g if v * sc + sh > zero else zero
                buf[b + q] = kk * (g - ka - (v - km) * kb)
        elif act == 2:
            for q in range(mu):
                v, g = x1[s + q], g1[s + q]
                pre = v * sc + sh
                g = g if zero < pre < six else zero
                buf[b + q] = kk * (g - ka - (v - km) * kb)
        else:
            for q in range(mu):
                buf[b + q] = kk * (g1[s + q] - ka - (x1[s + q] - km) * kb)


@njit(inline="always", cache=True)
def _out_rows(x1, at, hw, c0, m, scale, shift, act, buf):
    # act(x * scale + shift) of channels c0..c0+15 at m consecutive values of their
    # planes from `at`, into buf channel by channel, as `_normalize_run` computes it
    mu = np.uint64(m)
    for i in range(np.uint64(SIDE)):
        _normalize_run(x1, buf, at + i * hw, mu, scale[c0 + i], shift[c0 + i], act, i * mu)


@njit(inline="always", cache=True)
def _padded_job(x1, g1, p1, job, shape, hp, wp, k, scale, shift, act, buf, dx):
    # sample job // blocks, channels (job % blocks) * 16 .. + 15, a row at a time, dx
    # or the output; the first block's job also zeroes the sample's border
    n_batch, c_in, h, w = shape
    blocks = c_in // SIDE
    n, c0 = job // blocks, job % blocks * SIDE
    ph, pw = (hp - h) // 2, (wp - w) // 2
    cu, hw, wcu = np.uint64(c_in), np.uint64(h * w), np.uint64(wp * c_in)
    base = np.uint64(n * hp) * wcu
    if c0 == 0:
        for i in range(np.uint64(ph) * wcu):
            p1[base + i] = 0.0
        for i in range(np.uint64(ph + h) * wcu, np.uint64(hp) * wcu):
            p1[base + i] = 0.0
        for r in range(h):
            o = base + np.uint64(ph + r) * wcu
            for i in range(np.uint64(pw * c_in)):
                p1[o + i] = 0.0
            for i in range(np.uint64((pw + w) * c_in), wcu):
                p1[o + i] = 0.0
    src = np.uint64((n * c_in + c0) * h * w)
    dst = base + np.uint64(ph) * wcu + np.uint64(pw * c_in + c0)
    for r in range(h):
        at = src + np.uint64(r * w)
        if dx:
            _dx_rows(x1, g1, at, hw, c0, w, k, scale, shift, act, buf)
        else:
            _out_rows(x1, at, hw, c0, w, scale, shift, act, buf)
        for q0 in range(0, w, SIDE):
            transpose16(buf, np.uint64(q0), np.uint64(w), p1,
                        dst + np.uint64(r) * wcu + np.uint64(q0) * cu, cu)


@njit(parallel=True, cache=True)
def _padded_nhwc(x, gy, k, scale, shift, act, xp, dx):
    x1, g1, p1 = x.reshape(x.size), gy.reshape(gy.size), xp.reshape(xp.size)
    for job in prange(x.shape[0] * (x.shape[1] // SIDE)):
        buf = np.empty(SIDE * x.shape[3], np.float32)
        _padded_job(x1, g1, p1, job, x.shape, xp.shape[1], xp.shape[2], k, scale, shift,
                    act, buf, dx)


@njit(cache=True)
def _padded_nhwc_1(x, gy, k, scale, shift, act, xp, dx):
    # `_padded_nhwc` on the calling thread alone
    x1, g1, p1 = x.reshape(x.size), gy.reshape(gy.size), xp.reshape(xp.size)
    buf = np.empty(SIDE * x.shape[3], np.float32)
    for job in range(x.shape[0] * (x.shape[1] // SIDE)):
        _padded_job(x1, g1, p1, job, x.shape, xp.shape[1], xp.shape[2], k, scale, shift,
                    act, buf, dx)
