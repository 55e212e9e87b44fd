"""Training kernels of the per-channel and elementwise ops: BatchNorm on batch statistics
(forward and backward), the activations' derivatives, and the broadcast product's.

Arrays are C-contiguous float32 N x C x H x W. Sums over a channel run per plane in
float32 (reassociated, so that they vectorize) and across planes in float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate
from nasgraph.backends.numba._masked import into_plane

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


def fusable(code: int) -> bool:
    """Whether BatchNorm's forward can apply activation `code` (`ACT_CODES`) in its own
    output pass (`batchnorm_train`): ReLU and ReLU6, whose derivative is 1 or 0 by where
    their input lies, which BatchNorm's backward recomputes from its own input
    (`batchnorm_backward`) and an add's reads from the output (y > 0, 0 < y < 6)."""
    return code in (1, 2)


# BatchNorm on planes of at most SMALL_PLANE values, in tensors of at least
# SAMPLE_WALK_VALUES, walks the tensor a sample at a time (`batchnorm_train`,
# `batchnorm_backward`): channel by channel, each 4x4 to 8x8 plane is a few vectors a
# sample's stride apart, which the prefetcher does not follow; sample by sample the
# passes stream. On an AVX-512 Xeon, one thread, warm: 0.60-0.86x the time forward and
# backward on 4x4 to 8x8 maps of 128 samples x 16-128 channels; 1.0-1.33x on tensors of
# 32k-88k values, where the extra passes' set-up does not pay (docs/numba.md, "BatchNorm
# on small maps")
SMALL_PLANE = 64
SAMPLE_WALK_VALUES = 1 << 17


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
                       threads, scale, shift, act, planes=None):
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
    sample by sample (`_by_sample`, never with planes)."""
    if _by_sample(x) and planes is None:
        _batchnorm_backward_by_sample(x, gy, gamma, mean, invstd, gx, ggamma, gbeta,
                                      training, need_dx, scale, shift, act, threads)
    else:
        _batchnorm_backward_by_channel(x, gy, gamma, mean, invstd, gx, ggamma, gbeta,
                                       training, need_dx, scale, shift, act,
                                       *(planes or _NO_PLANES))


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
                                   need_dx, scale, shift, act, gq, wq, ph, pw):
    # with wq (> 0), each channel's dx into gq's planes instead of gx
    n_batch, c_in, h, w = x.shape
    hw = h * w
    count = n_batch * hw
    x1, g1, o1, q1 = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size), \
        gq.reshape(gq.size)
    plane = gq.shape[2]
    for c in prange(c_in):
        mu, sc, sh = np.float32(mean[c]), scale[c], shift[c]
        sum_g, sum_gx = 0.0, 0.0
        for n in range(n_batch):
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
                at = np.uint64((n * c_in + c) * hw)
                _dx_run(g1, x1, o1, at, hw, mu, k_g, k0, k1, sc, sh, act, at)


@njit(parallel=True, cache=True)
def _batchnorm_backward_by_sample(x, gy, gamma, mean, invstd, gx, ggamma, gbeta, training,
                                  need_dx, scale, shift, act, threads):
    n_batch, c_in, h, w = x.shape
    hw = h * w
    count = n_batch * hw
    x1, g1, o1 = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size)
    mu = np.empty(c_in, np.float32)
    for c in range(c_in):
        mu[c] = np.float32(mean[c])
    sums = np.zeros((threads, 2, c_in))
    for t in prange(threads):
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


@njit(inline="always", cache=True)
def derivative(v, code):
    """d act(v) / dv (float32) for the activation codes of `_activations.ACT_CODES`, as
    torch's backward kernels compute them (ReLU's and ReLU6's is 0 at the kinks)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    if code == 0:
        return one
    if code == 1:
        return one if v > zero else zero
    if code == 2:
        return one if zero < v < np.float32(6.0) else zero
    if code == 3:
        s = one / (one + math.exp(-v))
        return s * (one - s)
    if code == 4:  # tanh(v) through exp: libm's tanhf is 4x slower, and 1 - t^2 does not
        t = one - np.float32(2.0) / (math.exp(np.float32(2.0) * v) + one)  # mind its error
        return one - t * t
    if code == 5:
        s = one / (one + math.exp(-v))
        return s * (one + v * (one - s))
    if code == 6:
        if v < np.float32(-3.0):
            return zero
        return v / np.float32(3.0) + np.float32(0.5) if v <= np.float32(3.0) else one
    # gelu, exact: Phi(v) + v * phi(v)
    return np.float32(0.5) * (one + math.erf(v * np.float32(0.7071067811865476))) \
        + v * np.float32(0.3989422804014327) * math.exp(np.float32(-0.5) * v * v)


BLOCK = 4096  # elements per parallel job of the elementwise kernels


@njit(cache=True)
def _derivative_times(xf, gf, of, lo, hi, code):
    # of[k] = gf[k] * act'(xf[k]) for lo <= k < hi, a loop per code with the code a
    # constant in it: a switch inside one loop keeps LLVM from vectorizing it (ReLU6's
    # backward in such a loop took 2x its forward's time)
    if code == 2:
        for k in range(lo, hi):
            of[k] = gf[k] * derivative(xf[k], 2)
    elif code == 3:
        for k in range(lo, hi):
            of[k] = gf[k] * derivative(xf[k], 3)
    elif code == 4:
        for k in range(lo, hi):
            of[k] = gf[k] * derivative(xf[k], 4)
    elif code == 5:
        for k in range(lo, hi):
            of[k] = gf[k] * derivative(xf[k], 5)
    elif code == 6:
        for k in range(lo, hi):
            of[k] = gf[k] * derivative(xf[k], 6)
    elif code == 7:
        for k in range(lo, hi):
            of[k] = gf[k] * derivative(xf[k], 7)
    else:
        for k in range(lo, hi):
            of[k] = gf[k] * derivative(xf[k], code)


@njit(cache=True)
def _activate_run(xf, of, lo, hi, code):
    # of[k] = act(xf[k]) for lo <= k < hi, a loop per common code (see _derivative_times)
    zero, six = np.float32(0.0), np.float32(6.0)
    if code == 1:
        for k in range(lo, hi):
            of[k] = max(xf[k], zero)
    elif code == 2:
        for k in range(lo, hi):
            of[k] = min(max(xf[k], zero), six)
    else:
        for k in range(lo, hi):
            of[k] = activate(xf[k], code)


@njit(parallel=True, cache=True)
def activation_forward(x, out, code):
    """out = act(x), elementwise over arrays of any one shape (flat views)."""
    xf, of = x.reshape(x.size), out.reshape(out.size)
    size = xf.shape[0]
    for b in prange((size + BLOCK - 1) // BLOCK):
        _activate_run(xf, of, np.uint64(b * BLOCK), np.uint64(min(size, (b + 1) * BLOCK)),
                      code)


@njit(parallel=True, cache=True)
def add_pair(a, wa, b, wb, out, act):
    """out = act(wa * a + wb * b), elementwise over arrays of one shape (flat views), in
    one pass; `act` as `batchnorm_train`'s (1 ReLU, 2 ReLU6, else none). Weights of 1
    multiply nothing."""
    af, bf, of = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    size = af.shape[0]
    ones = wa == 1.0 and wb == 1.0
    fa, fb = np.float32(wa), np.float32(wb)
    zero, six = np.float32(0.0), np.float32(6.0)
    for blk in prange((size + BLOCK - 1) // BLOCK):
        lo, hi = np.uint64(blk * BLOCK), np.uint64(min(size, (blk + 1) * BLOCK))
        if ones and act == 1:
            for k in range(lo, hi):
                of[k] = max(af[k] + bf[k], zero)
        elif ones and act == 0:
            for k in range(lo, hi):
                of[k] = af[k] + bf[k]
        else:
            for k in range(lo, hi):
                v = af[k] + bf[k] if ones else fa * af[k] + fb * bf[k]
                if act == 1:
                    v = max(v, zero)
                elif act == 2:
                    v = min(max(v, zero), six)
                of[k] = v


@njit(parallel=True, cache=True)
def add_normalized(a, sa, ta, wa, b, sb, tb, wb, both, out, act):
    """`add_pair` of a BatchNorm's output not yet written, a' = a * sa + ta per channel
    (float32: a product, then a sum, as BatchNorm's own output pass rounds it), and b, or
    with `both` b' = b * sb + tb: out = act(wa * a' + wb * b') in one pass over a and b,
    the same values bit for bit as BatchNorm's pass and then `add_pair`'s."""
    n_batch, c_in, h, w = a.shape
    hw = h * w
    af, bf, of = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    ones = wa == 1.0 and wb == 1.0
    fa, fb = np.float32(wa), np.float32(wb)
    zero, six = np.float32(0.0), np.float32(6.0)
    for job in prange(n_batch * c_in):
        c = job % c_in
        s, t = sa[c], ta[c]
        lo, hi = np.uint64(job * hw), np.uint64((job + 1) * hw)
        if ones and act == 1 and not both:
            for k in range(lo, hi):
                of[k] = max((af[k] * s + t) + bf[k], zero)
        elif ones and act == 0 and not both:
            for k in range(lo, hi):
                of[k] = (af[k] * s + t) + bf[k]
        else:
            s2, t2 = sb[c], tb[c]
            for k in range(lo, hi):
                u = bf[k] * s2 + t2 if both else bf[k]
                v = (af[k] * s + t) + u if ones else fa * (af[k] * s + t) + fb * u
                if act == 1:
                    v = max(v, zero)
                elif act == 2:
                    v = min(max(v, zero), six)
                of[k] = v


@njit(parallel=True, cache=True)
def activation_backward(x, gy, gx, code):
    """gx = gy * act'(x), elementwise over arrays of any one shape (flat views)."""
    xf, gf, of = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size)
    size = xf.shape[0]
    for b in prange((size + BLOCK - 1) // BLOCK):
        # unsigned indices: no negative-index fix-ups, so the loops vectorize
        _derivative_times(xf, gf, of, np.uint64(b * BLOCK),
                          np.uint64(min(size, (b + 1) * BLOCK)), code)


@njit(parallel=True, cache=True)
def relu_backward(x, gy, gx):
    """gx = gy where x > 0, else 0: ReLU's backward, vectorized."""
    xf, gf, of = x.reshape(x.size), gy.reshape(gy.size), gx.reshape(gx.size)
    size = xf.shape[0]
    zero = np.float32(0.0)
    for b in prange((size + BLOCK - 1) // BLOCK):
        for k in range(np.uint64(b * BLOCK), np.uint64(min(size, (b + 1) * BLOCK))):
            of[k] = gf[k] if xf[k] > zero else zero


@njit(parallel=True, cache=True)
def relu_backward_sum(x, g1, g2, gx):
    """gx = g1 + g2 where x > 0, else 0: ReLU's backward of a gradient in two terms (a
    residual block's output, read by the next block's conv and its shortcut), in one
    pass where the sum and the mask took two."""
    xf, af, bf, of = x.reshape(x.size), g1.reshape(g1.size), g2.reshape(g2.size), \
        gx.reshape(gx.size)
    size = xf.shape[0]
    zero = np.float32(0.0)
    for b in prange((size + BLOCK - 1) // BLOCK):
        for k in range(np.uint64(b * BLOCK), np.uint64(min(size, (b + 1) * BLOCK))):
            g = af[k] + bf[k]
            of[k] = g if xf[k] > zero else zero


@njit(parallel=True, cache=True)
def broadcast_product_backward(full, gy, out):
    """The gradient of the C x 1 x 1 factor s of y = full * s: out[n, c] = sum over H x W
    of gy[n, c] * full[n, c] (out N x C x 1 x 1)."""
    n_batch, c_in, h, w = full.shape
    hw = h * w
    a1, g1, o1 = full.reshape(full.size), gy.reshape(gy.size), out.reshape(out.size)
    for job in prange(n_batch * c_in):
        o1[job] = _run_dot_centered(g1, a1, np.uint64(job * hw), hw, np.float32(0.0))
