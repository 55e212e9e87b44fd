"""BatchNorm's passes that write the layout a tiled conv reads: its output
(`batchnorm_out_padded_nhwc`) or its input gradient (`batchnorm_dx_padded_nhwc`) zero-padded
in NHWC (`_backward_conv.PaddedNHWC`), so that the conv beside it copies nothing
(docs/numba.md, "BatchNorm writes what the conv reads" and "The padded passes a plane
at a time"). A job is a sample's block of 16 channels; 16 channels x 16 pixels of its
plane at a time are computed as `_batchnorm`'s NCHW passes compute them, transposed in
registers and stored pixel by pixel where the padding puts them (LLVM IR: `_out16`,
`_dx16`). Flat arrays, unsigned offsets, as there.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from nasgraph.backends.numba._batchnorm import _dx_coefficients
from nasgraph.backends.numba._isa import wide_vectors
from nasgraph.backends.numba._masked import activated, load_first, move, passed, splat
from nasgraph.backends.numba._transpose import BLOCK as SIDE
from nasgraph.backends.numba._transpose import store_at_places, transposed


def batchnorm_out_padded_nhwc(x, scale, shift, act, xp, threads):
    """BatchNorm's output act(x * scale + shift) (`_normalize_run`'s, per channel, `act`
    as `batchnorm_train` applies it) written zero-padded in NHWC into xp (N x (H+2ph) x
    (W+2pw) x C): the layout in which the conv after it reads its input
    (`_backward_conv.PaddedNHWC`), so that the conv does not copy it there. Where
    `output_fits`."""
    (_plane_nhwc_1 if threads == 1 else _plane_nhwc)(x, x, _NO_COEFFICIENTS, scale, shift,
                                                     act, xp, False)


def batchnorm_dx_padded_nhwc(x, gy, gamma, mean, invstd, ggamma, gbeta, training, scale,
                             shift, act, gp, threads):
    """BatchNorm's input gradient (`batchnorm_backward`'s dx, gy masked by `act` as there)
    written zero-padded in NHWC into gp (N x (H+2ph) x (W+2pw) x C): the layout in which a
    conv's tiles read dy (`_backward_conv.PaddedNHWC`), so that the conv that produced x
    does not copy it there. From the sums `batchnorm_backward` left in ggamma and gbeta
    (run with need_dx False), where `padded_fits`."""
    count = x.shape[0] * x.shape[2] * x.shape[3]
    k = _coefficients(gamma, mean, invstd, ggamma, gbeta, count, training)
    (_plane_nhwc_1 if threads == 1 else _plane_nhwc)(x, gy, k, scale, shift, act, gp, True)


def padded_fits(shape: tuple[int, ...]) -> bool:
    """Whether `batchnorm_dx_padded_nhwc` takes an N x C x H x W tensor (where vectors
    are 512 bits, `_conv_layouts.padded_dy`): whole blocks of 16 channels, any map.
    Measured on an AVX-512 Xeon, one thread, caches flushed before each call (as a
    training step leaves them), against BatchNorm's NCHW pass and the conv's copy:
    forward 0.56-0.88x and backward 0.76-1.00x on 4x4 to 64x64 maps of 16-128 channels
    at batch 16-128; against the earlier kernels a row at a time, which took maps 32 and
    more wide, 0.64-0.82x and 0.72-0.79x (docs/numba.md, "The padded passes a plane at a
    time")."""
    return shape[1] % SIDE == 0


def output_fits(shape: tuple[int, ...]) -> bool:
    """Whether `batchnorm_out_padded_nhwc` takes an N x C x H x W tensor: 16 channels or
    more, those past the last whole block of 16 computed as the last 16 again. On an AMD
    EPYC with AVX2, one thread, batch 128, warm, against BatchNorm's NCHW pass and the
    conv's copy: medians of 0.81-0.97x for 20-60 channels on 4x4 to 14x14 maps
    (docs/numba.md, "Channels past the last block of 16")."""
    return shape[1] >= SIDE


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


# A job is a sample's block of 16 channels over its whole plane, 16 pixels at a time
# (the last block masked). Where C is not a whole number of blocks, the job of the last
# whole block also computes the last 16 channels, some of them again (the same values
# stored twice, by one thread)

_F32X16 = ir.VectorType(ir.FloatType(), SIDE)
_I64 = ir.IntType(64)


def _rows(builder: ir.IRBuilder, ptr, at, step, count) -> list[ir.Value]:
    # the 16 rows ptr[at + i * step:+count], zeros past count (a masked load each)
    return [load_first(builder, ptr, builder.add(at, builder.mul(step, ir.Constant(_I64, i))),
                       count) for i in range(SIDE)]


def _channel(builder: ir.IRBuilder, ptr, at) -> ir.Value:
    # ptr[at] (float32) in every lane
    return splat(builder, builder.load(builder.gep(ptr, [at])))


@intrinsic
def _out16(typingctx, x, at, step, scale, shift, c0, act, dst, dst_at, places, first,
           count):
    # rows i < 16: act(x[at + i * step:+count] * scale[c0 + i] + shift[c0 + i]) (a
    # product, then a sum, as `_normalize_run`; count <= 16 pixels read), transposed,
    # column j < count stored at dst[dst_at + places[first + j]]
    sig = types.void(x, types.uint64, types.uint64, scale, shift, types.uint64, types.int64,
                     dst, types.uint64, places, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        x_p, sc_p, sh_p, d_p, p_p = (context.make_array(signature.args[k])(
            context, builder, args[k]).data for k in (0, 3, 4, 7, 9))
        at, step, c0, act, d_at, first, count = (args[k] for k in (1, 2, 5, 6, 8, 10, 11))
        rows = []
        for i, v in enumerate(_rows(builder, x_p, at, step, count)):
            c = builder.add(c0, ir.Constant(_I64, i))
            y = builder.fadd(builder.fmul(v, _channel(builder, sc_p, c)),
                             _channel(builder, sh_p, c))
            rows.append(activated(builder, y, act))
        store_at_places(builder, d_p, d_at, p_p, first, transposed(builder, rows), count)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _dx16(typingctx, x, g, at, step, k, c_in, scale, shift, c0, act, dst, dst_at, places,
          first, count):
    # rows i < 16 of dx = kk * (g' - ka - (x - mu) * kb) (k's rows mu, kk, ka, kb of
    # channel c0 + i; flat, C a row), g' = g where the activation passed x * scale +
    # shift (a product, then a sum), as `_dx_rows`; count <= 16 pixels read, transposed,
    # column j < count stored at dst[dst_at + places[first + j]]
    sig = types.void(x, g, types.uint64, types.uint64, k, types.uint64, scale, shift,
                     types.uint64, types.int64, dst, types.uint64, places, types.uint64,
                     types.uint64)

    def codegen(context, builder, signature, args):
        x_p, g_p, k_p, sc_p, sh_p, d_p, p_p = (context.make_array(signature.args[i])(
            context, builder, args[i]).data for i in (0, 1, 4, 6, 7, 10, 12))
        at, step, c_in, c0, act, d_at, first, count = (args[i] for i in
                                                       (2, 3, 5, 8, 9, 11, 13, 14))
        zero = ir.Constant(_F32X16, [0.0] * SIDE)
        rows = []
        for i, (v, g) in enumerate(zip(_rows(builder, x_p, at, step, count),
                                       _rows(builder, g_p, at, step, count), strict=True)):
            c = builder.add(c0, ir.Constant(_I64, i))
            mu, kk, ka, kb = (_channel(builder, k_p, builder.add(builder.mul(
                ir.Constant(_I64, row), c_in), c)) for row in range(4))
            pre = builder.fadd(builder.fmul(v, _channel(builder, sc_p, c)),
                               _channel(builder, sh_p, c))
            g = builder.select(passed(builder, pre, act), g, zero)
            inner = builder.fsub(builder.fsub(g, ka), builder.fmul(builder.fsub(v, mu), kb))
            rows.append(builder.fmul(kk, inner))
        store_at_places(builder, d_p, d_at, p_p, first, transposed(builder, rows), count)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def _plane_places(h, w, wp, ph, pw, c_in):
    # where each pixel's C values start in a sample of the padded NHWC layout
    at = np.empty(h * w, np.int64)
    for p in range(h * w):
        at[p] = ((p // w + ph) * wp + p % w + pw) * c_in
    return at


# How the jobs zero a sample's border: where vectors are 512 bits, 16 values a masked
# store (`_masked.move` of nothing; value by value the border had taken as long as the
# rest on 8x8 maps); where they are 256 bits, a loop that LLVM vectorizes into plain
# stores and a scalar remainder, as `vmaskmovps` stores are slow there. On an AMD EPYC,
# one thread, 32 samples in L2, three runs (docs/numba.md, "The padded passes' border on
# AVX2"): the output pass 0.51-0.89x and the dx pass 0.55-0.86x the time with masked
# stores, for 16 and 32 channels on 8x8 maps
MASKED_ZEROS = wide_vectors()


@njit(inline="always", cache=True)
def _zero(p1, at, n):
    # p1[at:at + n] = 0
    if MASKED_ZEROS:
        nothing = np.uint64(0)
        move(p1, nothing, nothing, p1, at, n)
    else:
        for k in range(n):
            p1[at + k] = 0.0


@njit(inline="always", cache=True)
def _plane_job(x1, g1, p1, job, shape, hp, wp, k1, scale, shift, act, places, dx):
    # sample job // blocks, channels (job % blocks) * 16 .. + 15 over the whole plane, dx
    # or the output, and the last 16 channels too if this is the last whole block and
    # channels are left past it; the first block's job also zeroes the sample's border
    n_batch, c_in, h, w = shape
    blocks = c_in // SIDE
    n, c0 = job // blocks, job % blocks * SIDE
    ph, pw = (hp - h) // 2, (wp - w) // 2
    wcu = np.uint64(wp * c_in)
    base = np.uint64(n * hp) * wcu
    if c0 == 0:  # the first block's job zeroes the sample's border
        _zero(p1, base, np.uint64(ph) * wcu)
        _zero(p1, base + np.uint64(ph + h) * wcu, np.uint64(hp - ph - h) * wcu)
        side = np.uint64(pw * c_in)
        for r in range(h):
            o = base + np.uint64(ph + r) * wcu
            _zero(p1, o, side)
            _zero(p1, o + np.uint64((pw + w) * c_in), wcu - side - np.uint64(w * c_in))
    _plane_block(x1, g1, p1, n, c0, shape, base, k1, scale, shift, act, places, dx)
    if c0 + SIDE == blocks * SIDE and c_in % SIDE != 0:
        _plane_block(x1, g1, p1, n, c_in - SIDE, shape, base, k1, scale, shift, act, places,
                     dx)


@njit(inline="always", cache=True)
def _plane_block(x1, g1, p1, n, c0, shape, base, k1, scale, shift, act, places, dx):
    # channels c0 .. c0 + 15 of sample n over its whole plane, 16 pixels at a time, into
    # the padded sample at p1[base:]
    n_batch, c_in, h, w = shape
    hw = h * w
    src = np.uint64((n * c_in + c0) * hw)
    step, cu = np.uint64(hw), np.uint64(c_in)
    to = base + np.uint64(c0)
    for p0 in range(0, hw, SIDE):
        count = np.uint64(min(SIDE, hw - p0))
        if dx:
            _dx16(x1, g1, src + np.uint64(p0), step, k1, cu, scale, shift, np.uint64(c0),
                  act, p1, to, places, np.uint64(p0), count)
        else:
            _out16(x1, src + np.uint64(p0), step, scale, shift, np.uint64(c0), act, p1, to,
                   places, np.uint64(p0), count)


@njit(inline="always", cache=True)
def _plane_arrays(x, gy, k, xp):
    # the flat views the jobs read and write, and each pixel's place in a padded sample
    h, w = x.shape[2], x.shape[3]
    places = _plane_places(h, w, xp.shape[2], (xp.shape[1] - h) // 2, (xp.shape[2] - w) // 2,
                           x.shape[1])
    return x.reshape(x.size), gy.reshape(gy.size), xp.reshape(xp.size), k.reshape(k.size), places


@njit(parallel=True, cache=True)
def _plane_nhwc(x, gy, k, scale, shift, act, xp, dx):
    x1, g1, p1, k1, places = _plane_arrays(x, gy, k, xp)
    for job in prange(x.shape[0] * (x.shape[1] // SIDE)):
        _plane_job(x1, g1, p1, job, x.shape, xp.shape[1], xp.shape[2], k1, scale, shift,
                   act, places, dx)


@njit(cache=True)
def _plane_nhwc_1(x, gy, k, scale, shift, act, xp, dx):
    # `_plane_nhwc` on the calling thread alone
    x1, g1, p1, k1, places = _plane_arrays(x, gy, k, xp)
    for job in range(x.shape[0] * (x.shape[1] // SIDE)):
        _plane_job(x1, g1, p1, job, x.shape, xp.shape[1], xp.shape[2], k1, scale, shift,
                   act, places, dx)
