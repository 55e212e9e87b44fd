"""Depthwise convolution (one input and one output channel per group) in NHWC.

The input is the tiled conv's: a zero-padded N x Hp x (Wp*C) buffer, so that the C
channels of a pixel are one contiguous run. An output pixel is then, per tap, one
multiply-add over a run of channels, 32 at a time in scalar accumulators that SLP packs
into vector registers, for any kernel, stride and dilation, with no bounds test. Nothing
is done per channel plane, which is what the NCHW kernel (`_conv.conv2d_depthwise`) pays
for on small maps: mobilenet_v2's 960 channels at 7x7 cost it 0.27 us each, the
arithmetic of a 3x3 plane a fifth of that.

A job is one output row of one block of channels; the epilogue act(acc + residual)
writes NCHW at channel offset `co` or zero-padded NHWC for the next NHWC conv, as the
tiled conv writes.

Training runs small depthwise convs on the same layout (`_conv_rules`), but for the
stride-1 3x3 ones, which take flat planes (`_depthwise_flat`): the forward on
`conv2d_depthwise_nhwc`, the weight and input gradients on `depthwise_nhwc_backward`,
each tap a multiply-add over a run of channels; of stride 1 with an input gradient, the
weight gradient on `depthwise_nhwc_weight_grad` and the input gradient on
`conv2d_depthwise_nhwc` again, the taps flipped, from dy zero-padded in NHWC.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nasgraph.backends.numba._activations import activate_inline
from nasgraph.backends.numba._tiled import _strides, zero_border

FASTMATH = {"contract", "nsz", "arcp"}
BLOCK = 64  # channels of a job; their sums at a pixel wait in a buffer for the epilogue


def pack_weights(w: np.ndarray) -> np.ndarray:
    """C x 1 x kh x kw -> kh*kw x C: a tap's weights over the channels, contiguous."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c, kh * kw).T, np.float32)


# unsigned constants: an offset plus an int literal is signed, and a signed index gets a
# negative-index fix-up per load that blocks vectorization
U = tuple(np.uint64(i) for i in range(32))


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _lanes32(xf, wf, bias, src, at, cu, wpc, kh, kw, dh, dw, acc, k):
    """acc[k:k+32] = the sums of 32 channels at one output pixel: bias[at:at+32] plus,
    over the taps, the 32 input values from `src` times the tap's weights. Scalar
    accumulators, which SLP vectorization packs into four registers
    (NUMBA_SLP_VECTORIZE): four independent chains of multiply-adds, where one
    would wait out each FMA's latency (a third of the speed)."""
    a0, a1, a2, a3 = bias[at], bias[at + U[1]], bias[at + U[2]], bias[at + U[3]]
    a4, a5, a6, a7 = bias[at + U[4]], bias[at + U[5]], bias[at + U[6]], bias[at + U[7]]
    a8, a9, a10, a11 = bias[at + U[8]], bias[at + U[9]], bias[at + U[10]], bias[at + U[11]]
    a12, a13, a14, a15 = bias[at + U[12]], bias[at + U[13]], bias[at + U[14]], bias[at + U[15]]
    a16, a17, a18, a19 = bias[at + U[16]], bias[at + U[17]], bias[at + U[18]], bias[at + U[19]]
    a20, a21, a22, a23 = bias[at + U[20]], bias[at + U[21]], bias[at + U[22]], bias[at + U[23]]
    a24, a25, a26, a27 = bias[at + U[24]], bias[at + U[25]], bias[at + U[26]], bias[at + U[27]]
    a28, a29, a30, a31 = bias[at + U[28]], bias[at + U[29]], bias[at + U[30]], bias[at + U[31]]
    for i in range(kh):
        row = src + np.uint64(i * dh * wpc)
        for j in range(kw):
            x = row + np.uint64(j * dw) * cu
            w = np.uint64(i * kw + j) * cu + at
            a0 += xf[x] * wf[w]
            a1 += xf[x + U[1]] * wf[w + U[1]]
            a2 += xf[x + U[2]] * wf[w + U[2]]
            a3 += xf[x + U[3]] * wf[w + U[3]]
            a4 += xf[x + U[4]] * wf[w + U[4]]
            a5 += xf[x + U[5]] * wf[w + U[5]]
            a6 += xf[x + U[6]] * wf[w + U[6]]
            a7 += xf[x + U[7]] * wf[w + U[7]]
            a8 += xf[x + U[8]] * wf[w + U[8]]
            a9 += xf[x + U[9]] * wf[w + U[9]]
            a10 += xf[x + U[10]] * wf[w + U[10]]
            a11 += xf[x + U[11]] * wf[w + U[11]]
            a12 += xf[x + U[12]] * wf[w + U[12]]
            a13 += xf[x + U[13]] * wf[w + U[13]]
            a14 += xf[x + U[14]] * wf[w + U[14]]
            a15 += xf[x + U[15]] * wf[w + U[15]]
            a16 += xf[x + U[16]] * wf[w + U[16]]
            a17 += xf[x + U[17]] * wf[w + U[17]]
            a18 += xf[x + U[18]] * wf[w + U[18]]
            a19 += xf[x + U[19]] * wf[w + U[19]]
            a20 += xf[x + U[20]] * wf[w + U[20]]
            a21 += xf[x + U[21]] * wf[w + U[21]]
            a22 += xf[x + U[22]] * wf[w + U[22]]
            a23 += xf[x + U[23]] * wf[w + U[23]]
            a24 += xf[x + U[24]] * wf[w + U[24]]
            a25 += xf[x + U[25]] * wf[w + U[25]]
            a26 += xf[x + U[26]] * wf[w + U[26]]
            a27 += xf[x + U[27]] * wf[w + U[27]]
            a28 += xf[x + U[28]] * wf[w + U[28]]
            a29 += xf[x + U[29]] * wf[w + U[29]]
            a30 += xf[x + U[30]] * wf[w + U[30]]
            a31 += xf[x + U[31]] * wf[w + U[31]]
    acc[k], acc[k + U[1]], acc[k + U[2]], acc[k + U[3]] = a0, a1, a2, a3
    acc[k + U[4]], acc[k + U[5]], acc[k + U[6]], acc[k + U[7]] = a4, a5, a6, a7
    acc[k + U[8]], acc[k + U[9]], acc[k + U[10]], acc[k + U[11]] = a8, a9, a10, a11
    acc[k + U[12]], acc[k + U[13]], acc[k + U[14]], acc[k + U[15]] = a12, a13, a14, a15
    acc[k + U[16]], acc[k + U[17]], acc[k + U[18]], acc[k + U[19]] = a16, a17, a18, a19
    acc[k + U[20]], acc[k + U[21]], acc[k + U[22]], acc[k + U[23]] = a20, a21, a22, a23
    acc[k + U[24]], acc[k + U[25]], acc[k + U[26]], acc[k + U[27]] = a24, a25, a26, a27
    acc[k + U[28]], acc[k + U[29]], acc[k + U[30]], acc[k + U[31]] = a28, a29, a30, a31


@njit(inline="always", cache=True, fastmath=FASTMATH)
def _lanes8(xf, wf, bias, src, at, cu, wpc, kh, kw, dh, dw, acc, k):
    """`_lanes32` for 8 channels: one register, one chain of multiply-adds."""
    a0, a1, a2, a3 = bias[at], bias[at + U[1]], bias[at + U[2]], bias[at + U[3]]
    a4, a5, a6, a7 = bias[at + U[4]], bias[at + U[5]], bias[at + U[6]], bias[at + U[7]]
    for i in range(kh):
        row = src + np.uint64(i * dh * wpc)
        for j in range(kw):
            x = row + np.uint64(j * dw) * cu
            w = np.uint64(i * kw + j) * cu + at
            a0 += xf[x] * wf[w]
            a1 += xf[x + U[1]] * wf[w + U[1]]
            a2 += xf[x + U[2]] * wf[w + U[2]]
            a3 += xf[x + U[3]] * wf[w + U[3]]
            a4 += xf[x + U[4]] * wf[w + U[4]]
            a5 += xf[x + U[5]] * wf[w + U[5]]
            a6 += xf[x + U[6]] * wf[w + U[6]]
            a7 += xf[x + U[7]] * wf[w + U[7]]
    acc[k], acc[k + U[1]], acc[k + U[2]], acc[k + U[3]] = a0, a1, a2, a3
    acc[k + U[4]], acc[k + U[5]], acc[k + U[6]], acc[k + U[7]] = a4, a5, a6, a7


@njit(cache=True, fastmath=FASTMATH)
def _job(job, xf, x_off, wf, bias, res1, out1, out, c, hp, wpc, kh, kw, sh, sw, dh, dw,
         act, has_res, ho, wo, out_pad, o, r, acc):
    """One output row of one block of channels. Flat unsigned offsets throughout: a signed
    one gets a negative-index fix-up that blocks vectorization. A function of its own,
    not inlined: numba compiles the body of a parallel loop less well."""
    n_cb = (c + BLOCK - 1) // BLOCK
    n, oh, cb = job // (ho * n_cb), job // n_cb % ho, job % n_cb
    if out_pad > 0 and oh == 0 and cb == 0:  # a sample's first job
        zero_border(out[n], out_pad)
    c0 = np.uint64(cb * BLOCK)
    nc = np.uint64(min(BLOCK, c - cb * BLOCK))
    cu = np.uint64(c)
    for ow in range(wo):
        corner = np.uint64(n * hp * wpc + x_off + oh * sh * wpc + ow * sw * c + c0)
        k = np.uint64(0)
        while k + U[31] < nc:  # 32 channels at a time, then 8, then one
            _lanes32(xf, wf, bias, corner + k, c0 + k, cu, wpc, kh, kw, dh, dw, acc, k)
            k += U[31] + U[1]
        while k + U[7] < nc:
            _lanes8(xf, wf, bias, corner + k, c0 + k, cu, wpc, kh, kw, dh, dw, acc, k)
            k += U[8]
        if k < nc and nc > U[7]:
            # the channels past the last whole vector: the block's last 8, some of them
            # again (the same sums); one at a time they took as long as 32 in vectors
            # (36 channels, 5x5: 0.6x the time)
            last = nc - U[8]
            _lanes8(xf, wf, bias, corner + last, c0 + last, cu, wpc, kh, kw, dh, dw, acc, last)
            k = nc
        for u in range(k, nc):  # fewer than 8 channels
            s = bias[c0 + u]
            for i in range(kh):
                for j in range(kw):
                    s += (xf[corner + u + np.uint64(i * dh * wpc + j * dw * c)]
                          * wf[np.uint64((i * kw + j) * c) + c0 + u])
            acc[u] = s
        o_at = np.uint64(n * o[0] + c0 * o[1] + oh * o[2] + ow * o[3] + o[4])
        oc = np.uint64(o[1])
        if has_res:
            r_at = np.uint64(n * r[0] + c0 * r[1] + oh * r[2] + ow * r[3] + r[4])
            rc = np.uint64(r[1])
            for k in range(nc):
                out1[o_at + k * oc] = activate_inline(acc[k] + res1[r_at + k * rc], act)
        elif act == 2:  # ReLU6 (mobilenets), and none: loops of their own, vectorized
            for k in range(nc):
                out1[o_at + k * oc] = min(max(acc[k], np.float32(0.0)), np.float32(6.0))
        elif act == 0:
            for k in range(nc):
                out1[o_at + k * oc] = acc[k]
        else:
            for k in range(nc):
                out1[o_at + k * oc] = activate_inline(acc[k], act)


@njit(inline="always", cache=True)
def _geometry(xp, w, out, res, co, ho, wo, out_pad, res_pad):
    n_batch, hp, wpc = xp.shape
    c = w.shape[1]
    o = _strides(out, out_pad, ho, wo, co)
    r = _strides(res, res_pad, ho, wo, 0)
    jobs = n_batch * ho * ((c + BLOCK - 1) // BLOCK)
    return hp, wpc, c, o, r, jobs


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def conv2d_depthwise_nhwc(xp, x_off, w, bias, res, out, co, kh, kw, sh, sw, dh, dw, act,
                          has_res, ho, wo, out_pad, res_pad, threads):
    """Padded N x Hp x (Wp*C), kh*kw x C weights (`pack_weights`), C biases -> the
    Ho x Wo output of channels co..co+C of `out`.

    The conv's padded input starts `x_off` values into each sample of `xp`, as for
    `_tiled.conv2d_tiled`; `out` is N x C x Ho x Wo (`out_pad` < 0) or zero-padded NHWC
    by `out_pad` (its border zeroed here); `res` likewise, by `res_pad`. Each of
    `threads` threads takes an equal run of jobs."""
    hp, wpc, c, o, r, jobs = _geometry(xp, w, out, res, co, ho, wo, out_pad, res_pad)
    xf, wf = xp.reshape(xp.size), w.reshape(w.size)
    out1, res1 = out.reshape(out.size), res.reshape(res.size)
    for t in prange(threads):
        acc = np.empty(BLOCK, np.float32)
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            _job(job, xf, x_off, wf, bias, res1, out1, out, c, hp, wpc, kh, kw, sh, sw, dh,
                 dw, act, has_res, ho, wo, out_pad, o, r, acc)


@njit(cache=True, fastmath=FASTMATH)
def conv2d_depthwise_nhwc_1(xp, x_off, w, bias, res, out, co, kh, kw, sh, sw, dh, dw, act,
                            has_res, ho, wo, out_pad, res_pad, threads):
    """`conv2d_depthwise_nhwc` on the calling thread alone (no parallel region)."""
    hp, wpc, c, o, r, jobs = _geometry(xp, w, out, res, co, ho, wo, out_pad, res_pad)
    xf, wf = xp.reshape(xp.size), w.reshape(w.size)
    out1, res1 = out.reshape(out.size), res.reshape(res.size)
    acc = np.empty(BLOCK, np.float32)
    for job in range(jobs):
        _job(job, xf, x_off, wf, bias, res1, out1, out, c, hp, wpc, kh, kw, sh, sw, dh, dw,
             act, has_res, ho, wo, out_pad, o, r, acc)


# ------------------------------------------------------------------ training: gradients


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def depthwise_nhwc_backward(xp, gy, w, gx, parts, kh, kw, sh, sw, dh, dw, ph, pw,
                            need_dx, threads):
    """The gradients of a depthwise conv from its input zero-padded in NHWC (xp, N x Hp x
    Wp x C, what the training forward read) and dy (gy, N x C x Ho x Wo), with w its
    kh*kw x C weights (`pack_weights`); over the taps (i, j) and output pixels (oh, ow),
    with (r, q) = (oh*sh + i*dh, ow*sw + j*dw):

        dw[tap, c] = sum of dy[n, c, oh, ow] * xp[n, r, q, c]
        dxp[n, r, q, c] += dy[n, c, oh, ow] * w[tap, c]

    each a run over the channels, vectorized, where the NCHW kernels pay per channel
    plane. parts[t] += thread t's samples' weight gradient (threads x kh*kw x C, float64;
    summed per sample in float32); where `need_dx`, gx (N x C x H x W) = the interior of
    dxp, xp being padded by (ph, pw). Each thread takes a run of samples and keeps one
    sample's dy, in NHWC, and dxp in scratch. Flat unsigned offsets: no views, no
    negative-index fix-ups."""
    n_batch, hp, wp, c = xp.shape
    ho, wo = gy.shape[2], gy.shape[3]
    h, wi = hp - 2 * ph, wp - 2 * pw
    hw, taps, cu = ho * wo, kh * kw, np.uint64(c)
    xf, wf = xp.reshape(xp.size), w.reshape(w.size)
    gy1, gx1 = gy.reshape(gy.size), gx.reshape(gx.size)
    for t in prange(threads):
        g = np.empty(hw * c, np.float32)  # one sample's dy, pixels x channels
        gp = np.empty(hp * wp * c, np.float32)  # its dxp
        acc = np.empty(taps * c, np.float32)
        for n in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            for k in range(cu):
                src = np.uint64((n * c + k) * hw)
                for p in range(np.uint64(hw)):
                    g[p * cu + k] = gy1[src + p]
            acc[:] = 0.0
            if need_dx:
                gp[:] = 0.0
            _tap_sums(g, xf, np.uint64(n * hp * wp * c), wf, acc, gp, need_dx, ho, wo, wp, c,
                      kh, kw, sh, sw, dh, dw)
            for q in range(taps * c):
                parts[t, q // c, q % c] += acc[q]
            if not need_dx:
                continue
            for k in range(cu):
                dst = np.uint64((n * c + k) * h * wi)
                for r in range(h):
                    src = np.uint64(((r + ph) * wp + pw) * c) + k
                    d = dst + np.uint64(r * wi)
                    for q in range(np.uint64(wi)):
                        gx1[d + q] = gp[src + q * cu]


@njit(cache=True, fastmath=FASTMATH)
def _tap_sums(g, xf, base, wf, acc, gp, need_dx, ho, wo, wp, c, kh, kw, sh, sw, dh, dw):
    # for each output pixel and tap, over the channels k: acc[tap*C + k] += g[pixel*C + k]
    # * xf[base + the tap's input pixel*C + k] (dW), and where `need_dx`, gp[the tap's
    # input pixel*C + k] += g[pixel*C + k] * wf[tap*C + k] (dX)
    cu = np.uint64(c)
    for oh in range(ho):
        for ow in range(wo):
            at = np.uint64((oh * wo + ow) * c)
            for i in range(kh):
                for j in range(kw):
                    tap = np.uint64((i * kw + j) * c)
                    px = np.uint64(((oh * sh + i * dh) * wp + ow * sw + j * dw) * c)
                    for k in range(cu):
                        acc[tap + k] += g[at + k] * xf[base + px + k]
                    if need_dx:
                        for k in range(cu):
                            gp[px + k] += g[at + k] * wf[tap + k]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def depthwise_nhwc_weight_grad(xp, gp, gh, gw, parts, kh, kw, dh, dw, threads):
    """The weight gradient of a stride-1 depthwise conv from its input zero-padded in NHWC
    (xp, N x Hp x Wp x C, what the training forward read) and dy in NHWC too, as the
    interior of gp (N x (Ho+2gh) x (Wo+2gw) x C, padded for the input gradient,
    `_depthwise_rules._nhwc_grads`):

        dw[tap, c] = sum of dy[n, oh, ow, c] * xp[n, oh + i*dh, ow + j*dw, c]

    parts[t] += thread t's samples' sums (threads x kh*kw x C, float64; summed per sample
    in float32, pixel by pixel: the same bits as `depthwise_nhwc_backward`'s). Each
    thread a run of samples; each tap a multiply-add over a run of the channels."""
    n_batch, hp, wp, c = xp.shape
    hg, wg = gp.shape[1], gp.shape[2]
    ho, wo = hg - 2 * gh, wg - 2 * gw
    taps, cu = kh * kw, np.uint64(c)
    xf, gf = xp.reshape(xp.size), gp.reshape(gp.size)
    for t in prange(threads):
        acc = np.empty(taps * c, np.float32)
        for n in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            acc[:] = 0.0
            base = np.uint64(n * hp * wp * c)
            for oh in range(ho):
                for ow in range(wo):
                    at = np.uint64(((n * hg + oh + gh) * wg + ow + gw) * c)
                    for i in range(kh):
                        for j in range(kw):
                            tap = np.uint64((i * kw + j) * c)
                            px = base + np.uint64(((oh + i * dh) * wp + ow + j * dw) * c)
                            for k in range(cu):
                                acc[tap + k] += gf[at + k] * xf[px + k]
            for q in range(taps * c):
                parts[t, q // c, q % c] += acc[q]
