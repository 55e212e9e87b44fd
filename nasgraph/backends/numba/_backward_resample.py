"""Training kernels of pooling and resizing: max pooling that records where each maximum
came from, and the backward of max, average, adaptive average pooling and upsampling.

Windows and source indices are the forward kernels' (`_resample`), which follow torch's:
max pooling routes each output's gradient to its window's first maximum (torch's pick on
ties, which ReLU's zeros make common), average pooling spreads it evenly over the window
it averaged, resizing adds it back to the pixels it interpolated from. One job per
N x C plane: a plane's gradient is written by one thread. Max pooling's forward takes 16
channels at a time, one a vector lane (`maxpool2d_train`).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from nasgraph.backends.numba._resample import _linear_index, _nearest_index

LANES = 16  # channels a vector in `maxpool2d_train`
_F32X16 = ir.VectorType(ir.FloatType(), LANES)
_I32X16 = ir.VectorType(ir.IntType(32), LANES)
_I32 = ir.IntType(32)


@njit(parallel=True, cache=True)
def maxpool2d_train(x, out, argmax, kh, kw, sh, sw, ph, pw):
    """Max windows (clipped as torch clips them), and in `argmax` (N x C x Ho x Wo int32)
    the flat index within its H x W plane of each output's first maximum (a NaN wins, the
    last one seen).

    16 channels of a sample at a time, one a vector lane: their planes are copied into a
    grid of 16-value vectors, a pixel's, padded with -inf as far as any window reaches,
    and an output pixel is its window's vectors compared in turn (`window_max16`), each
    lane keeping the larger value and where it came from in selects, then copied back.
    Window by window, a branch a compare (mispredicted on about half of them), it ran at
    0.2-0.3 G compares a second: 15-19 ms a 3x3 stride-1 pool of 64 x 7x7 at batch 128,
    one thread, on an AMD EPYC, against 1.5 ms so (docs/numba.md, "Max pooling with the
    channels in the lanes"). Padding's -inf is never taken: a window of -inf alone keeps
    its first pixel inside the map, as window by window."""
    n_batch, c_in, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    hp = max(h + 2 * ph, (ho - 1) * sh + kh)
    wp = max(w + 2 * pw, (wo - 1) * sw + kw)
    taps = np.empty(kh * kw, np.uint64)  # each tap's offset in the grid from the window's
    steps = np.empty(kh * kw, np.int32)  # and its index from the window's first pixel's
    for i in range(kh):
        for j in range(kw):
            taps[i * kw + j] = (i * wp + j) * LANES
            steps[i * kw + j] = i * w + j
    blocks = -(-c_in // LANES)
    for job in prange(n_batch * blocks):
        n, c0 = job // blocks, job % blocks * LANES
        lanes = min(LANES, c_in - c0)
        grid = np.full(hp * wp * LANES, -np.inf, np.float32)
        for lane in range(lanes):
            plane = x[n, c0 + lane]
            for i in range(h):
                for j in range(w):
                    grid[((i + ph) * wp + j + pw) * LANES + lane] = plane[i, j]
        vals = np.empty(ho * wo * LANES, np.float32)
        picks = np.empty(ho * wo * LANES, np.int32)
        for oh in range(ho):
            first_row = max(oh * sh - ph, 0)
            for ow in range(wo):
                at = oh * wo + ow
                window_max16(grid, np.uint64((oh * sh * wp + ow * sw) * LANES), taps, steps,
                             np.uint64(kh * kw), np.int32((oh * sh - ph) * w + ow * sw - pw),
                             np.int32(first_row * w + max(ow * sw - pw, 0)), vals, picks,
                             np.uint64(at * LANES))
        for lane in range(lanes):
            dst, picked = out[n, c0 + lane], argmax[n, c0 + lane]
            for oh in range(ho):
                for ow in range(wo):
                    dst[oh, ow] = vals[(oh * wo + ow) * LANES + lane]
                    picked[oh, ow] = picks[(oh * wo + ow) * LANES + lane]


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
        where = cgutils.alloca_once_value(builder, _splat(builder, first))
        with cgutils.for_range(builder, count) as loop:
            offset = builder.load(builder.gep(t_ptr, [loop.index]))
            u = builder.load(_vector_at(builder, g_ptr, builder.add(at, offset), _F32X16),
                             align=4)
            v = builder.load(best)
            take = builder.or_(builder.fcmp_ordered(">", u, v),
                               builder.fcmp_unordered("uno", u, u))
            builder.store(builder.select(take, u, v), best)
            step = builder.add(base, builder.load(builder.gep(s_ptr, [loop.index])))
            builder.store(builder.select(take, _splat(builder, step), builder.load(where)),
                          where)
        builder.store(builder.load(best), _vector_at(builder, v_ptr, out_at, _F32X16),
                      align=4)
        builder.store(builder.load(where), _vector_at(builder, p_ptr, out_at, _I32X16),
                      align=4)
        return context.get_dummy_value()

    return sig, codegen


def _splat(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    # an int32 in every lane of a 16-lane vector
    one = builder.insert_element(ir.Constant(_I32X16, ir.Undefined), value,
                                 ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(_I32X16, ir.Undefined),
                                  ir.Constant(_I32X16, [0] * LANES))


def _vector_at(builder: ir.IRBuilder, base, at, vector: ir.VectorType):
    # a pointer to the vector at base[at] (unaligned)
    return builder.bitcast(builder.gep(base, [at]), vector.as_pointer())


@njit(parallel=True, cache=True)
def maxpool2d_backward(gy, argmax, gx):
    """gx[n, c] = 0, then += each output's gradient at its maximum's index (the plane's
    flat index: no division a value); a plane zeroed by the thread that adds into it."""
    n_batch, c_in, ho, wo = gy.shape
    plane = gx.shape[2] * gx.shape[3]
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        g, at, dst = gy[n, c], argmax[n, c], gx[n, c].reshape(plane)
        dst[:] = 0.0
        for oh in range(ho):
            for ow in range(wo):
                dst[np.uintp(at[oh, ow])] += g[oh, ow]


@njit(parallel=True, cache=True)
def avgpool2d_backward(gy, gx, kh, kw, sh, sw, ph, pw, count_include_pad):
    """gx (zeroed) += each output's gradient divided by the count it averaged over
    (the window clipped to the padded input, or to the input without
    `count_include_pad`), over that window's input pixels."""
    n_batch, c_in, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        g, dst = gy[n, c], gx[n, c]
        for oh in range(ho):
            h0 = oh * sh - ph
            h1 = min(h0 + kh, h + ph)
            a0, a1 = max(h0, 0), min(h1, h)
            for ow in range(wo):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, w + pw)
                b0, b1 = max(w0, 0), min(w1, w)
                area = (h1 - h0) * (w1 - w0) if count_include_pad else (a1 - a0) * (b1 - b0)
                v = g[oh, ow] / np.float32(area)
                for i in range(a0, a1):
                    for j in range(b0, b1):
                        dst[i, j] += v


@njit(parallel=True, cache=True)
def adaptive_avgpool_backward(gy, gx):
    """The adjoint of `_resample.adaptive_avgpool`: window i of an axis covers
    [floor(i * n / size), ceil((i + 1) * n / size)); gx (zeroed) += gradient / window."""
    n_batch, c_in, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        g, dst = gy[n, c], gx[n, c]
        for oh in range(ho):
            a0, a1 = (oh * h) // ho, -((-(oh + 1) * h) // ho)
            for ow in range(wo):
                b0, b1 = (ow * w) // wo, -((-(ow + 1) * w) // wo)
                v = g[oh, ow] / np.float32((a1 - a0) * (b1 - b0))
                for i in range(a0, a1):
                    for j in range(b0, b1):
                        dst[i, j] += v


# plane sums reassociated, so that LLVM vectorizes them
REASSOC = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, fastmath=REASSOC)
def global_avgpool_planes(xf, of, hw, p0, p1):
    """of[p] = the mean of plane p of the flat x (its hw values, from p * hw on), for
    planes p0..p1: flat offsets, no view per plane and no parallel region, where the
    adaptive pool's per-plane views and window loops took 6-8x as long at one thread
    (32 x 32 planes of 4x4: 11.8 against 2.1 us)."""
    scale = np.float32(1.0 / hw)
    for p in range(p0, p1):
        at = np.uint64(p * hw)
        s = np.float32(0.0)
        for j in range(np.uint64(hw)):
            s += xf[at + j]
        of[p] = s * scale


@njit(cache=True)
def global_avgpool_backward_planes(gf, xf, hw, p0, p1):
    """The adjoint of `global_avgpool_planes`: plane p of the flat gx (written, not
    added to) = gf[p] / hw, for planes p0..p1."""
    for p in range(p0, p1):
        v = gf[p] / np.float32(hw)
        at = np.uint64(p * hw)
        for j in range(np.uint64(hw)):
            xf[at + j] = v


@njit(parallel=True, cache=True)
def global_avgpool_parallel(xf, of, hw, threads):
    """`global_avgpool_planes` over all planes, a run of them per thread."""
    planes = of.size
    for t in prange(threads):
        global_avgpool_planes(xf, of, hw, t * planes // threads, (t + 1) * planes // threads)


@njit(parallel=True, cache=True)
def global_avgpool_backward_parallel(gf, xf, hw, threads):
    """`global_avgpool_backward_planes` over all planes, a run of them per thread."""
    planes = gf.size
    for t in prange(threads):
        global_avgpool_backward_planes(gf, xf, hw, t * planes // threads,
                                       (t + 1) * planes // threads)


@njit(parallel=True, cache=True)
def upsample_backward(gy, gx, bilinear, align_corners, scale_h, scale_w):
    """The adjoint of `_resample.upsample` (same float32 source indices and weights):
    gx (zeroed) += each output's gradient at the pixel(s) it was read from."""
    n_batch, c_in, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    fh, fw = np.float32(scale_h), np.float32(scale_w)
    one = np.float32(1.0)
    for job in prange(n_batch * c_in):
        n, c = job // c_in, job % c_in
        g, dst = gy[n, c], gx[n, c]
        for oh in range(ho):
            if bilinear:
                i0, i1, lh = _linear_index(oh, h, fh, align_corners)
            else:
                i0, i1, lh = _nearest_index(oh, h, ho, fh), 0, np.float32(0.0)
            for ow in range(wo):
                v = g[oh, ow]
                if bilinear:
                    j0, j1, lw = _linear_index(ow, w, fw, align_corners)
                    top, bottom = (one - lh) * v, lh * v
                    dst[i0, j0] += (one - lw) * top
                    dst[i0, j1] += lw * top
                    dst[i1, j0] += (one - lw) * bottom
                    dst[i1, j1] += lw * bottom
                else:
                    dst[i0, _nearest_index(ow, w, wo, fw)] += v
