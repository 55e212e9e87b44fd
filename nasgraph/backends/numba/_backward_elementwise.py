"""Training kernels of the elementwise ops: the activations' derivatives and outputs, the
adds (with the ReLU they apply, and a BatchNorm's output they compute: `add_normalized`),
and the broadcast product's gradient. BatchNorm's kernels are `_batchnorm`'s.

Arrays are C-contiguous float32, read as flat runs at unsigned offsets.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate
from nasgraph.backends.numba._batchnorm import _run_dot_centered


def fusable(code: int) -> bool:
    """Whether BatchNorm's forward can apply activation `code` (`ACT_CODES`) in its own
    output pass (`_batchnorm.batchnorm_train`): ReLU and ReLU6, whose derivative is 1 or 0 by where
    their input lies, which BatchNorm's backward recomputes from its own input
    (`_batchnorm.batchnorm_backward`) and an add's reads from the output (y > 0, 0 < y < 6)."""
    return code in (1, 2)


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
def relu_backward_spread(x, g1, s, sh, sw, gx):
    """gx = g1 + s spread where x > 0, else 0: ReLU's backward of a gradient in two terms,
    the second a strided 1x1 conv's (`_rule.Spread`): s (N x C x Ho x Wo) belongs at
    every sh-th row and sw-th column of x's maps. A map at a time: the mask of g1, then
    the sum at s's pixels, as `relu_backward_sum` rounds it."""
    n_batch, c_in, h, w = x.shape
    ho, wo = s.shape[2], s.shape[3]
    hw, how = h * w, ho * wo
    xf, af, sf, of = x.reshape(x.size), g1.reshape(g1.size), s.reshape(s.size), \
        gx.reshape(gx.size)
    zero = np.float32(0.0)
    for job in prange(n_batch * c_in):
        lo = np.uint64(job * hw)
        for k in range(lo, lo + np.uint64(hw)):
            of[k] = af[k] if xf[k] > zero else zero
        for i in range(ho):
            row, src = lo + np.uint64(i * sh * w), np.uint64(job * how + i * wo)
            for j in range(wo):  # a select, not a branch: x's sign is a coin toss
                k = row + np.uint64(j * sw)
                g = af[k] + sf[src + np.uint64(j)]
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
