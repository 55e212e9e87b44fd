"""Pooling and resizing kernels: max/avg windows, adaptive average, nearest and bilinear.

Inputs are N x C x H x W; each writes at channel offset `co` of `out` (see _conv.py). Max
pooling, 16 channels a vector (`maxpool2d`), records where each maximum came from when
training asks.
Index arithmetic follows torch's CPU kernels, in float32 where torch computes in float32,
so that nearest-neighbour choices match exactly.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from nasgraph.backends.numba._masked import LANES, splat

# `maxpool2d` takes LANES (16) channels a vector, the width of `_masked.splat`
NO_PICKS = np.empty((0, 0, 0, 0), np.int32)  # `maxpool2d`'s argmax where none is wanted
_F32X16 = ir.VectorType(ir.FloatType(), LANES)
_I32X16 = ir.VectorType(ir.IntType(32), LANES)


@njit(parallel=True, cache=True)
def maxpool2d(x, out, co, argmax, kh, kw, sh, sw, ph, pw, threads):
    """Max windows (clipped as torch clips them) into channels co.. of `out`, and where
    `argmax` has samples (training; N x C x Ho x Wo int32, else `NO_PICKS`) the flat index
    within its H x W plane of each output's first maximum (a NaN wins, the last one seen).

    16 channels of a sample at a time, one a vector lane: their planes are copied into a
    grid of 16-value vectors, a pixel's, padded with -inf as far as any window reaches,
    and an output pixel is its window's vectors compared in turn (`window_max16`), each
    lane keeping the larger value and where it came from in selects, then copied back.
    Window by window, a branch a compare (mispredicted on about half of them), it ran at
    0.2-0.3 G compares a second: 15-19 ms a 3x3 stride-1 pool of 64 x 7x7 at batch 128,
    one thread, on an AMD EPYC, against 1.5 ms so (docs/numba.md, "Max pooling with the
    channels in the lanes"). Padding's -inf is never taken: a window of -inf alone keeps
    its first pixel inside the map, as window by window.

    Each thread keeps its grid and its window results from job to job, and every copy
    indexes flat arrays: a job's own allocations and a view a plane took 2-4x the time
    of the pool on 3x3 to 7x7 maps (docs/numba.md, "Pooling without a view a plane").
    `threads`: numba's thread count, which the grids are sized by."""
    n_batch, c_in, h, w = x.shape
    c_out, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    hp = max(h + 2 * ph, (ho - 1) * sh + kh)
    wp = max(w + 2 * pw, (wo - 1) * sw + kw)
    taps = np.empty(kh * kw, np.uint64)  # each tap's offset in the grid from the window's
    steps = np.empty(kh * kw, np.int32)  # and its index from the window's first pixel's
    for i in range(kh):
        for j in range(kw):
            taps[i * kw + j] = (i * wp + j) * LANES
            steps[i * kw + j] = i * w + j
    # a thread's grid: -inf where no pixel of x lands, the rest rewritten by every job
    # (lanes past a last block's channels keep an earlier job's values, never copied out)
    cells, results = hp * wp * LANES, ho * wo * LANES
    grids = np.full(threads * cells, -np.inf, np.float32)
    vals = np.empty(threads * results, np.float32)
    picks = np.empty(threads * results, np.int32)
    x1, out1, a1 = x.reshape(x.size), out.reshape(out.size), argmax.reshape(argmax.size)
    hw, howo = h * w, ho * wo
    blocks = -(-c_in // LANES)
    for job in prange(n_batch * blocks):
        n, c0 = job // blocks, job % blocks * LANES
        lanes = min(LANES, c_in - c0)
        thread = numba.get_thread_id()
        g0, r0 = np.uint64(thread * cells), np.uint64(thread * results)
        for lane in range(lanes):
            src = np.uint64((n * c_in + c0 + lane) * hw)
            for i in range(h):
                dst = g0 + np.uint64(((i + ph) * wp + pw) * LANES + lane)
                for j in range(np.uint64(w)):
                    grids[dst + j * np.uint64(LANES)] = x1[src + np.uint64(i * w) + j]
        for oh in range(ho):
            first_row = max(oh * sh - ph, 0)
            for ow in range(wo):
                window_max16(grids, g0 + np.uint64((oh * sh * wp + ow * sw) * LANES), taps,
                             steps, np.uint64(kh * kw),
                             np.int32((oh * sh - ph) * w + ow * sw - pw),
                             np.int32(first_row * w + max(ow * sw - pw, 0)), vals, picks,
                             r0 + np.uint64((oh * wo + ow) * LANES))
        for lane in range(lanes):
            dst = np.uint64((n * c_out + co + c0 + lane) * howo)
            for k in range(np.uint64(howo)):
                out1[dst + k] = vals[r0 + k * np.uint64(LANES) + np.uint64(lane)]
            if argmax.shape[0]:
                dst = np.uint64((n * c_in + c0 + lane) * howo)
                for k in range(np.uint64(howo)):
                    a1[dst + k] = picks[r0 + k * np.uint64(LANES) + np.uint64(lane)]


@intrinsic
def window_max16(typingctx, grid, at, taps, steps, count, base, first, vals, picks, out_at):
    """The max of each lane over the window of `count` vectors grid[at + taps[t]:+16]
    (taps in order, unsigned), into vals[out_at:+16], and where it came from into
    picks[out_at:+16]: base + steps[t] of the first tap whose value beat the lane's max so
    far (greater, or a NaN), `first` where none did. Both kept in registers over the
    taps; no bounds are checked."""
    sig = types.void(grid, types.uint64, taps, steps, types.uint64, types.int32,
                     types.int32, vals, picks, types.uint64)

    def codegen(context, builder, signature, args):
        g_ptr, t_ptr, s_ptr, v_ptr, p_ptr = (
            context.make_array(signature.args[k])(context, builder, args[k]).data
            for k in (0, 2, 3, 7, 8))
        at, count, base, first, out_at = args[1], args[4], args[5], args[6], args[9]
        best = cgutils.alloca_once_value(builder, ir.Constant(_F32X16, [-np.inf] * LANES))
        where = cgutils.alloca_once_value(builder, splat(builder, first))
        with cgutils.for_range(builder, count) as loop:
            offset = builder.load(builder.gep(t_ptr, [loop.index]))
            u = builder.load(_vector_at(builder, g_ptr, builder.add(at, offset), _F32X16),
                             align=4)
            v = builder.load(best)
            take = builder.or_(builder.fcmp_ordered(">", u, v),
                               builder.fcmp_unordered("uno", u, u))
            builder.store(builder.select(take, u, v), best)
            step = builder.add(base, builder.load(builder.gep(s_ptr, [loop.index])))
            builder.store(builder.select(take, splat(builder, step), builder.load(where)),
                          where)
        builder.store(builder.load(best), _vector_at(builder, v_ptr, out_at, _F32X16),
                      align=4)
        builder.store(builder.load(where), _vector_at(builder, p_ptr, out_at, _I32X16),
                      align=4)
        return context.get_dummy_value()

    return sig, codegen


def _vector_at(builder: ir.IRBuilder, base, at, vector: ir.VectorType):
    # a pointer to the vector at base[at] (unaligned)
    return builder.bitcast(builder.gep(base, [at]), vector.as_pointer())


@njit(parallel=True, cache=True)
def avgpool2d(x, out, co, kh, kw, sh, sw, ph, pw, count_include_pad):
    """Average windows; windows past the input (ceil_mode) are clipped as in torch. 2x2
    windows that tile the input (`tiles`: a DenseNet's transition) take straight-line
    code (`_tiled_avgpool_2x2`), summed in the window loop's order. Flat offsets, no view
    a plane (`maxpool2d`)."""
    n_batch, c_in, h, w = x.shape
    c_out, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    if kh == 2 and kw == 2 and tiles(h, w, ho, wo, kh, kw, sh, sw, ph, pw):
        _tiled_avgpool_2x2(x, out, co)
        return
    x1, out1 = x.reshape(x.size), out.reshape(out.size)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        s0, d0 = job * h * w, (n * c_out + co + c) * ho * wo
        for oh in range(ho):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, h + ph)
            for ow in range(wo):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, w + pw)
                area = (h1 - h0) * (w1 - w0)
                a0, a1, b0, b1 = max(h0, 0), min(h1, h), max(w0, 0), min(w1, w)
                s = np.float32(0.0)
                for i in range(a0, a1):
                    for j in range(b0, b1):
                        s += x1[np.uint64(s0 + i * w + j)]
                if not count_include_pad:
                    area = (a1 - a0) * (b1 - b0)
                out1[np.uint64(d0 + oh * wo + ow)] = s / area


@njit(cache=True)
def tiles(h, w, ho, wo, kh, kw, sh, sw, ph, pw):
    """Whether a pool's windows tile its input: as large as their stride, unpadded, each
    inside it (the rows and columns past the last window unread)."""
    return (kh == sh and kw == sw and ph == 0 and pw == 0 and ho * kh <= h
            and wo * kw <= w)


@njit(parallel=True, cache=True)
def _tiled_avgpool_2x2(x, out, co):
    # `avgpool2d` of 2x2 windows that tile x (a DenseNet's transition), each window
    # summed in a register in the window loop's order and divided in float32 (correctly
    # rounded, as the float64 quotient rounded to float32 is), in straight-line code:
    # loops of a runtime trip count of 2, or the branch to here inside the row loop, took
    # 2-4x the time (24-80 channels, 7x7 to 28x28 maps, batch 128, one thread, AMD EPYC),
    # and so did offsets of np.uint64 constants named outside the parallel loop. Other
    # tiles take the window loop (docs/numba.md, "Pooling without a view a plane")
    n_batch, c_in, h, w = x.shape
    c_out, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    area = np.float32(4.0)
    x1, out1 = x.reshape(x.size), out.reshape(out.size)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        for oh in range(ho):
            at = np.uint64(((n * c_out + co + c) * ho + oh) * wo)
            first = np.uint64((job * h + oh * 2) * w)
            second = first + np.uint64(w)
            for ow in range(np.uint64(wo)):
                k = ow * np.uint64(2)
                s = np.float32(0.0) + x1[first + k]
                s += x1[first + k + np.uint64(1)]
                s += x1[second + k]
                s += x1[second + k + np.uint64(1)]
                out1[at + ow] = s / area


@njit(parallel=True, cache=True)
def adaptive_avgpool(x, out, co):
    """Window i covers [floor(i * n / size), ceil((i + 1) * n / size)) on each axis.
    Flat offsets, no views: a view per channel updates one reference count shared by the
    threads (ResNet-20's global pool at batch 1: 64 channels, 2 views each)."""
    n_batch, c_in, h, w = x.shape
    c_out, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    xf, of = x.reshape(x.size), out.reshape(out.size)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src = np.uint64(job * h * w)
        dst = np.uint64((n * c_out + co + c) * ho * wo)
        for oh in range(ho):
            a0, a1 = (oh * h) // ho, -((-(oh + 1) * h) // ho)
            for ow in range(wo):
                b0, b1 = (ow * w) // wo, -((-(ow + 1) * w) // wo)
                if b0 == 0 and b1 == w:  # whole rows: one run (the global pool: the plane)
                    s = _run_sum(xf, src + np.uint64(a0 * w), (a1 - a0) * w)
                else:
                    s = np.float32(0.0)
                    for i in range(a0, a1):
                        s += _run_sum(xf, src + np.uint64(i * w + b0), b1 - b0)
                of[dst + np.uint64(oh * wo + ow)] = s / ((a1 - a0) * (b1 - b0))


@njit(cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _run_sum(xf, start, n):
    """xf[start:start + n].sum(), reassociated so that LLVM vectorizes it (one serial
    chain of adds took 12 us for ResNet-20's 64 x 8 x 8 global pool)."""
    s = np.float32(0.0)
    for j in range(np.uint64(n)):
        s += xf[start + j]
    return s


@njit(cache=True)
def _nearest_index(dst, size_in, size_out, scale):
    if size_out == size_in:
        return dst
    if size_out == 2 * size_in:
        return dst >> 1
    return min(int(math.floor(np.float32(dst) * scale)), size_in - 1)


@njit(cache=True)
def _linear_index(dst, size_in, scale, align_corners):
    if align_corners:
        src = scale * np.float32(dst)
    else:
        src = max(scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5),
                  np.float32(0.0))
    i0 = min(int(math.floor(src)), size_in - 1)
    lam = min(max(src - np.float32(i0), np.float32(0.0)), np.float32(1.0))
    return i0, i0 + (1 if i0 < size_in - 1 else 0), lam


@njit(parallel=True, cache=True)
def upsample(x, out, co, bilinear, align_corners, scale_h, scale_w):
    """Nearest or bilinear resize; scales are torch's float32 source-per-output steps."""
    n_batch, c_in, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    fh, fw = np.float32(scale_h), np.float32(scale_w)
    one = np.float32(1.0)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        src, dst = x[n, c], out[n, co + c]
        for oh in range(ho):
            if bilinear:
                i0, i1, lh = _linear_index(oh, h, fh, align_corners)
            else:
                i0, i1, lh = _nearest_index(oh, h, ho, fh), 0, np.float32(0.0)
            for ow in range(wo):
                if bilinear:
                    j0, j1, lw = _linear_index(ow, w, fw, align_corners)
                    dst[oh, ow] = (one - lh) * ((one - lw) * src[i0, j0] + lw * src[i0, j1]) \
                        + lh * ((one - lw) * src[i1, j0] + lw * src[i1, j1])
                else:
                    dst[oh, ow] = src[i0, _nearest_index(ow, w, wo, fw)]
