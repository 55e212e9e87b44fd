"""BatchNorm's training kernels on NCHW tensors: the batch statistics and the output
(`batchnorm_train`), the running statistics (`running_statistics`) and the gradients
(`batchnorm_backward`), channel by channel or sample by sample. Their passes may write a
stride-1 conv's phase planes instead of NCHW (`_masked.into_plane`); the padded-NHWC
passes are `_batchnorm_nhwc`'s, on the sums and coefficients computed here.

Arrays are C-contiguous float32 N x C x H x W. Sums over a channel run per plane in
float32 (reassociated, so that they vectorize) and across planes in float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._masked import into_plane
from nasgraph.backends.numba._prefetch import prefetch_run

_FAST = {"reassoc", "contract", "nsz", "arcp"}


# Per-channel kernels read planes at flat unsigned offsets, not as views: a view per plane
# updates a reference count the threads share, and signed indices need fix-ups that keep
# loops from vectorizing


@njit(cache=True, fastmath=_FAST)
def _run_sum(a1, at, n):
    s = np.float32(0.0)
    for k in range(np.uint64(n)):
        s += a1[at + k]
    return s


@njit(cache=True, fastmath=_FAST)
def _run_shifted_sum(a1, at, n, shift):
    s = np.float32(0.0)
    for k in range(np.uint64(n)):
        s += a1[at + k] - shift
    return s


@njit(cache=True, fastmath=_FAST)
def _run_square_deviation(a1, at, n, mu):
    s = np.float32(0.0)
    for k in range(np.uint64(n)):
        d = a1[at + k] - mu
        s += d * d
    return s


@njit(cache=True, fastmath=_FAST)
def _run_dot_centered(a1, b1, at, n, mu):
    # sum(a * (b - mu)) over n values from offset at
    s = np.float32(0.0)
    for k in range(np.uint64(n)):
        s += a1[at + k] * (b1[at + k] - mu)
    return s


# BatchNorm on planes of at most SMALL_PLANE values, in tensors of at least
# SAMPLE_WALK_VALUES, walks the tensor a sample at a time (`batchnorm_train`,
# `batchnorm_backward`): channel by channel, each 4x4 to 8x8 plane is a few vectors a
# sample's stride apart, which the prefetcher does not follow; sample by sample the
# passes stream. On an AVX-512 Xeon, one thread, forward and backward: 0.60-0.86x the
# time on 4x4 to 8x8 maps of 128 samples x 16-128 channels (warm); on 64k-100k values
# 0.60-0.95x as a step meets them (from memory: six copies in turn), 0.80-0.97x warm;
# on 32k values 0.87-1.14x. 14x14 planes: 0.88-1.23x, left to the channel walk
# (docs/numba.md, "BatchNorm on small maps")
SMALL_PLANE = 64
SAMPLE_WALK_VALUES = 1 << 16


def _by_sample(x) -> bool:
    return x.shape[2] * x.shape[3] <= SMALL_PLANE and x.size >= SAMPLE_WALK_VALUES


def batchnorm_train(x, gamma, beta, eps, out, mean, var, scale, shift, act, threads,
                    normalize=True, planes=None):
    """BatchNorm on the batch's statistics: per channel c, mean[c] and the biased var[c]
    over N x H x W, then out = gamma * (x - mean) / sqrt(var + eps) + beta.

    Two passes (mean, then squared deviations from it): one pass of sums of squares
    loses the variance of large-mean channels to cancellation. The mean sums x - x0 (x0:
    the channel's first value), so that a constant channel's mean is x0 exactly and its
    normalized values 0: float32 sums of x itself leave the mean a rounding off, which
    1 / sqrt(var + eps) then scales up to 300x (a channel padded with zeros, normalized
    twice, gave its second BatchNorm's weight a gradient 1% off torch's).

    `act` (`fusable`: 1 ReLU, 2 ReLU6, else 0) is applied to out in the same pass.
    scale and shift (float32, per channel) get what out = x * scale + shift used, from
    which the backward recomputes the activation's derivative (`batchnorm_backward`).
    Without `normalize`, the statistics alone: out is not written (the output pass is
    `_batchnorm_nhwc.batchnorm_out_padded_nhwc`'s). With `planes` (xq, Wq, ph, pw), out
    is not written either: the output goes into a stride-1 conv's phase planes instead
    (`_masked.into_plane`), from the channel's pass. Channel by channel, or sample by
    sample (`_by_sample`, never with planes); the sums are the same either way (a
    plane's in float32, in sample order in float64)."""
    if _by_sample(x) and planes is None:
        _batchnorm_train_by_sample(x, gamma, beta, eps, out, mean, var, scale, shift, act,
                                   threads, normalize)
    else:
        _batchnorm_train_by_channel(x, gamma, beta, eps, out, mean, var, scale, shift, act,
                                    normalize, *(planes or _NO_PLANES))


@njit(cache=True)
def _scale_shift(gamma, beta, mu, v, eps):
    # out = x * scale + shift, in float32
    k = gamma / math.sqrt(v + eps)
    return np.float32(k), np.float32(beta - mu * k)


@njit(inline="always", cache=True)
def _normalize_run(x1, out1, at, n, scale, shift, act, to):
    # out1[to:to+n] = act(x1[at:at+n] * scale + shift): a product, then a sum (no fused
    # multiply-add), as the backward recomputes it for the activation's mask
    if act == 1:
        for k in range(np.uint64(n)):
            out1[to + k] = max(x1[at + k] * scale + shift, np.float32(0.0))
    elif act == 2:
        for k in range(np.uint64(n)):
            out1[to + k] = min(max(x1[at + k] * scale + shift, np.float32(0.0)),
                               np.float32(6.0))
    else:
        for k in range(np.uint64(n)):
            out1[to + k] = x1[at + k] * scale + shift


# The channel walk's first pass over a channel reads a plane a sample, C planes apart,
# which the hardware's prefetcher does not follow; it asks for the plane SAMPLES_AHEAD
# samples on (`_prefetch`). Its later passes find the channel in cache, and the last one
# asks for the plane it will write 4 samples on (`prefetch_run`'s `write`). On an AMD EPYC
# (AVX2), one thread, 128 samples of 8-96 channels on 14x14: 0.77-0.96x the time of the
# backward, 0.71-0.96x of the statistics; on 28x28, 1.02-1.08x and 0.86-0.94x
# (docs/numba.md, "BatchNorm's channel walk prefetches")
SAMPLES_AHEAD = 4


@njit(inline="always", cache=True)
def _ask_ahead(a1, n, n_batch, c_in, c, hw, write=False):
    # prefetch channel c's plane of sample n + SAMPLES_AHEAD, if there is one; to write
    # it, with `write`
    if n + SAMPLES_AHEAD < n_batch:
        prefetch_run(a1, np.uint64(((n + SAMPLES_AHEAD) * c_in + c) * hw), np.uint64(hw),
                     write)


# the by-channel passes' planes arguments (xq, Wq, ph, pw) where they write none
_NO_PLANES = (np.zeros((1, 1, 1), np.float32), 0, 0, 0)


@njit(parallel=True, cache=True)
def _batchnorm_train_by_channel(x, gamma, beta, eps, out, mean, var, scale, shift, act,
                                normalize, xq, wq, ph, pw):
    # with wq (> 0), each channel's output into xq's planes instead of out
    n_batch, c_in, h, w = x.shape
    hw = h * w
    count = n_batch * hw
    x1, out1, q1 = x.reshape(x.size), out.reshape(out.size), xq.reshape(xq.size)
    plane = xq.shape[2]
    for c in prange(c_in):
        x0 = x1[np.uint64(c * hw)]
        total = 0.0
        for n in range(n_batch):
            _ask_ahead(x1, n, n_batch, c_in, c, hw)
            total += _run_shifted_sum(x1, np.uint64((n * c_in + c) * hw), hw, x0)
        mu = x0 + total / count
        mu32 = np.float32(mu)
        total = 0.0
        for n in range(n_batch):
            total += _run_square_deviation(x1, np.uint64((n * c_in + c) * hw), hw, mu32)
        v = total / count
        mean[c], var[c] = mu, v
        k, k0 = _scale_shift(gamma[c], beta[c], mu, v, eps)
        scale[c], shift[c] = k, k0
        if wq:
            buf = np.empty(hw, np.float32)
            for n in range(n_batch):
                _normalize_run(x1, buf, np.uint64((n * c_in + c) * hw), hw, k, k0, act,
                               np.uint64(0))
                into_plane(buf, np.uint64(0), q1, np.uint64((n * c_in + c) * plane), h, w, wq,
                           ph, pw, plane)
        elif normalize:
            for n in range(n_batch):
                _ask_ahead(out1, n, n_batch, c_in, c, hw, True)
                at = np.uint64((n * c_in + c) * hw)
                _normalize_run(x1, out1, at, hw, k, k0, act, at)


@njit(inline="always", cache=True)
def _column_sum(parts, c):
    # the threads' sums of channel c (a slice's .sum() allocated: up to 5x a small pass)
    total = 0.0
    for t in range(parts.shape[0]):
        total += parts[t, c]
    return total


@njit(parallel=True, cache=True)
def _batchnorm_train_by_sample(x, gamma, beta, eps, out, mean, var, scale, shift, act,
                               threads, normalize):
    # each thread its share of the samples, its sums per channel in parts[t]
    n_batch, c_in, h, w = x.shape
    hw = h * w
    count = n_batch * hw
    x1, out1 = x.reshape(x.size), out.reshape(out.size)
    x0 = np.empty(c_in, np.float32)
    for c in range(c_in):
        x0[c] = x1[np.uint64(c * hw)]
    parts = np.zeros((threads, c_in))
    for t in prange(threads):
        for n in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            for c in range(c_in):
                parts[t, c] += _run_shifted_sum(x1, np.uint64((n * c_in + c) * hw), hw, x0[c])
    mu32 = np.empty(c_in, np.float32)
    for c in range(c_in):
        mean[c] = x0[c] + _column_sum(parts, c) / count
        mu32[c] = np.float32(mean[c])
    parts[:] = 0.0
    for t in prange(threads):
        for n in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            for c in range(c_in):
                parts[t, c] += _run_square_deviation(x1, np.uint64((n * c_in + c) * hw), hw,
                                                     mu32[c])
    for c in range(c_in):
        var[c] = _column_sum(parts, c) / count
        scale[c], shift[c] = _scale_shift(gamma[c], beta[c], mean[c], var[c], eps)
    if not normalize:
        return
    for t in prange(threads):
        for n in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            for c in range(c_in):
                at = np.uint64((n * c_in + c) * hw)
                _normalize_run(x1, out1, at, hw, scale[c], shift[c], act, at)


@njit(cache=True)
def running_statistics(mean, var, running_mean, running_var, momentum, count, eps):
    """torch's update of BatchNorm's running statistics from a batch's (float64 mean and
    biased var over `count` values a channel): each moves by `momentum` towards the
    batch's, the variance unbiased; returned as float32, with the batch's 1 / sqrt(var +
    eps) (float64) the backward needs. One call: as numpy operations, 7 us a BatchNorm."""
    c = mean.size
    new_mean, new_var = np.empty(c, np.float32), np.empty(c, np.float32)
    invstd = np.empty(c)
    for k in range(c):
        new_mean[k] = (1 - momentum) * np.float64(running_mean[k]) + momentum * mean[k]
        new_var[k] = ((1 - momentum) * np.float64(running_var[k])
                      + momentum * var[k] * (count / (count - 1)))
        invstd[k] = 1.0 / math.sqrt(var[k] + eps)
    return new_mean, new_var, invstd


def batchnorm_backward(x, gy, gamma, mean, invstd, gx, ggamma, gbeta, training, need_dx,
                       threads, scale, shift, act, planes=None, sums=None):
    """Gradients of BatchNorm, y = gamma * (x - mean) * invstd + beta per channel:
    gbeta = sum(gy), ggamma = sum(gy * xhat); and with `need_dx`, gx = dx:

        training (batch statistics, which depend on x; M = N * H * W values a channel):
            dx = gamma * invstd * (gy - gbeta / M - xhat * ggamma / M)
        eval (running statistics, constants):
            dx = gamma * invstd * gy

    Where the forward applied activation `act` (1 ReLU, 2 ReLU6; 0 none), gy is its
    output's gradient, and each value of it is taken through the activation first: kept
    where x * scale + shift (the forward's `scale` and `shift`, float32 per channel)
    lies where the activation's slope is 1, else 0. That mask is recomputed from x, which
    both passes read anyway, as the forward rounded it, so that it is the output's
    (y > 0 for ReLU, 0 < y < 6 for ReLU6); no pass of its own over the tensor.

    With `planes` (gq, Wq, ph, pw), dx goes into a stride-1 conv's phase planes instead
    of gx (`_masked.into_plane`): dy as the conv before reads it. Channel by channel, or
    sample by sample (`_by_sample`, never with planes). Given `sums` (2 x C, float64: the
    sums of the masked gy and of it times x - mean, as the conv after the BatchNorm took
    them, `_rule.Summed`), the first pass is not made."""
    given = _NO_SUMS if sums is None else sums
    if _by_sample(x) and planes is None:
        _batchnorm_backward_by_sample(x, gy, gamma, mean, invstd, gx, ggamma, gbeta,
                                      training, need_dx, scale, shift, act, threads, given)
    else:
        _batchnorm_backward_by_channel(x, gy, gamma, mean, invstd, gx, ggamma, gbeta,
                                       training, need_dx, scale, shift, act,
                                       *(planes or _NO_PLANES), given)


# `batchnorm_backward`'s kernels' sums where none are given
_NO_SUMS = np.zeros((2, 0))


@njit(cache=True)
def _dx_coefficients(gamma, inv, sum_g, sum_gx, count, training):
    # dx = k_g * (gy - k0 - (x - mu) * k1), as float32
    k_g = np.float32(gamma * inv)
    if not training:
        return k_g, np.float32(0.0), np.float32(0.0)
    # dx = k_g * (gy - sum_g / M - (x - mu) * inv^2 * sum_gx / M)
    return k_g, np.float32(sum_g / count), np.float32(inv * inv * sum_gx / count)


# the masked sums round x * scale + shift as the forward's output pass did: a product,
# then a sum, never fused into one multiply-add ("contract"), so that each mask is the
# forward's output's
_MASKED = {"reassoc", "nsz", "arcp"}


@njit(cache=True, fastmath=_MASKED)
def _run_relu_sums(g1, x1, at, n, mu, scale, shift):
    # sum(g') and sum(g' * (x - mu)) over n values from `at`, g' = g where x * scale +
    # shift > 0, else 0. One loop of its own, g loaded whatever the mask: a loop per
    # activation and a load under the mask left runs of 16-64 values scalar (3-8x the
    # time of the unmasked sums on 4x4 to 8x8 planes)
    zero = np.float32(0.0)
    s, sx = np.float32(0.0), np.float32(0.0)
    for k in range(np.uint64(n)):
        v, g = x1[at + k], g1[at + k]
        g = g if v * scale + shift > zero else zero
        s += g
        sx += g * (v - mu)
    return s, sx


@njit(cache=True, fastmath=_MASKED)
def _run_relu6_sums(g1, x1, at, n, mu, scale, shift):
    # `_run_relu_sums` for ReLU6: g' = g where 0 < x * scale + shift < 6
    zero, six = np.float32(0.0), np.float32(6.0)
    s, sx = np.float32(0.0), np.float32(0.0)
    for k in range(np.uint64(n)):
        v, g = x1[at + k], g1[at + k]
        pre = v * scale + shift
        g = g if zero < pre < six else zero
        s += g
        sx += g * (v - mu)
    return s, sx


@njit(inline="always", cache=True)
def _run_sums(g1, x1, at, n, mu, scale, shift, act):
    # sum(g) and sum(g * (x - mu)) over a run, g masked by the activation `act` (if any)
    if act == 1:
        return _run_relu_sums(g1, x1, at, n, mu, scale, shift)
    if act == 2:
        return _run_relu6_sums(g1, x1, at, n, mu, scale, shift)
    return _run_sum(g1, at, n), _run_dot_centered(g1, x1, at, n, mu)


@njit(inline="always", cache=True)
def _dx_run(g1, x1, o1, at, n, mu, k_g, k0, k1, scale, shift, act, to):
    # dx over a run from `at`, into o1 from `to`, g masked by the activation `act` as
    # `_run_sums` masks it
    zero, six = np.float32(0.0), np.float32(6.0)
    if act == 1:
        for k in range(np.uint64(n)):
            v, g = x1[at + k], g1[at + k]
            g = g if v * scale + shift > zero else zero
            o1[to + k] = k_g * (g - k0 - (v - mu) * k1)
    elif act == 2:
        for k in range(np.uint64(n)):
            v, g = x1[at + k], g1[at + k]
            pre = v * scale + shift
            g = g if zero < pre < six else zero
            o1[to + k] = k_g * (g - k0 - (v - mu) * k1)
    else:
        for k in range(np.uint64(n)):
            o1[to + k] = k_g * (g1[at + k] - k0 - (x1[at + k] - mu) * k1)


@njit(parallel=True, cache=True)
def _batchnorm_backward_by_channel(x, gy, gamma, mean, invstd, gx, ggamma, gbeta, training,
                                   need_dx, scale, shift, act, gq, wq, ph, pw, given):
    # with wq (> 0), each channel's dx into gq's planes instead of gx; the sums given
    # where `given` has a column a channel
    n_batch, c_in, h, w = x.shape
    hw = h * w
    count = n_batch * hw
    x1, g1, o1, q1 = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size), \
        gq.reshape(gq.size)
    plane = gq.shape[2]
    have = given.shape[1] == c_in
    for c in prange(c_in):
        mu, sc, sh = np.float32(mean[c]), scale[c], shift[c]
        sum_g, sum_gx = 0.0, 0.0
        if have:
            sum_g, sum_gx = given[0, c], given[1, c]
        for n in range(0 if have else n_batch):
            _ask_ahead(g1, n, n_batch, c_in, c, hw)
            _ask_ahead(x1, n, n_batch, c_in, c, hw)
            s, sx = _run_sums(g1, x1, np.uint64((n * c_in + c) * hw), hw, mu, sc, sh, act)
            sum_g += s
            sum_gx += sx
        inv = invstd[c]
        gbeta[c] = sum_g
        ggamma[c] = sum_gx * inv
        if not need_dx:
            continue
        k_g, k0, k1 = _dx_coefficients(gamma[c], inv, sum_g, sum_gx, count, training)
        if wq:
            buf = np.empty(hw, np.float32)
            for n in range(n_batch):
                _dx_run(g1, x1, buf, np.uint64((n * c_in + c) * hw), hw, mu, k_g, k0, k1, sc,
                        sh, act, np.uint64(0))
                into_plane(buf, np.uint64(0), q1, np.uint64((n * c_in + c) * plane), h, w,
                           wq, ph, pw, plane)
        else:
            for n in range(n_batch):
                _ask_ahead(o1, n, n_batch, c_in, c, hw, True)
                at = np.uint64((n * c_in + c) * hw)
                _dx_run(g1, x1, o1, at, hw, mu, k_g, k0, k1, sc, sh, act, at)


@njit(parallel=True, cache=True)
def _batchnorm_backward_by_sample(x, gy, gamma, mean, invstd, gx, ggamma, gbeta, training,
                                  need_dx, scale, shift, act, threads, given):
    n_batch, c_in, h, w = x.shape
    hw = h * w
    count = n_batch * hw
    x1, g1, o1 = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size)
    mu = np.empty(c_in, np.float32)
    for c in range(c_in):
        mu[c] = np.float32(mean[c])
    have = given.shape[1] == c_in
    sums = np.zeros((1 if have else threads, 2, c_in))
    if have:
        sums[0] = given
    for t in prange(0 if have else threads):
        for n in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            for c in range(c_in):
                s, sx = _run_sums(g1, x1, np.uint64((n * c_in + c) * hw), hw, mu[c],
                                  scale[c], shift[c], act)
                sums[t, 0, c] += s
                sums[t, 1, c] += sx
    k = np.empty((3, c_in), np.float32)
    for c in range(c_in):
        sum_g, sum_gx = _column_sum(sums[:, 0], c), _column_sum(sums[:, 1], c)
        gbeta[c] = sum_g
        ggamma[c] = sum_gx * invstd[c]
        k[0, c], k[1, c], k[2, c] = _dx_coefficients(gamma[c], invstd[c], sum_g, sum_gx,
                                                     count, training)
    if not need_dx:
        return
    for t in prange(threads):
        for n in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            for c in range(c_in):
                at = np.uint64((n * c_in + c) * hw)
                _dx_run(g1, x1, o1, at, hw, mu[c], k[0, c], k[1, c], k[2, c], scale[c],
                        shift[c], act, at)
