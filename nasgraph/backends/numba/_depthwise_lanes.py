"""3x3 depthwise convs with the batch in the vector lanes: 16 samples of one channel a
vector, for small maps.

On a 4x4 or 7x7 map a channel's plane is one to three vectors and a bit, and a vector of
pixels meets the map's edges everywhere: the flat planes (`_depthwise_flat`) copy each
plane into zero-padded scratch, mask the columns that wrap, and loop over runs too short
for LLVM's vector loops (which take 64 values at a time and leave the rest to scalar
code). Here the 16 lanes of a vector are 16 samples at the same pixel of the same
channel. A block of 16 samples of channel c is transposed into a zero-padded Hp x Wp
grid of such vectors (`_transpose.transpose16_to`, 16 pixels at a time), and the conv
is whole vectors only: an output pixel is its window's nine vectors, each times its
tap's weight (the channel's, the same in every lane), summed in registers; no masks, and
no stride phases for stride 2. The way back to NCHW is `transpose16`.

    forward:          y[p] = b + sum over taps t of w[t] * x[window(p) + t]
    weight gradient:  dw[t] = sum over pixels p and the lanes of dy[p] * x[window(p) + t]
    input gradient:   dx = the same window sums over dy spread s apart into zeros and
                      padded by d (k - 1) - p, with the kernel rotated by 180 degrees

(seed 003's full convolution, for any stride). Any stride and dilation, a padding of at
most the kernel's reach (`lanes_geometry`); `_conv_paths.lanes_depthwise` says which
convs take it. dw's sums: float32 over a block of 16 samples, float64 across blocks.
The window sums are LLVM IR (`numba.extending.intrinsic`, as `_transpose`'s), each a
loop over the pixels with the nine weights and offsets in registers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from nasgraph.backends.numba._masked import activated, passed, splat
from nasgraph.backends.numba._prefetch import prefetch_run
from nasgraph.backends.numba._transpose import BLOCK, transpose16, transpose16_to

LANES = BLOCK  # samples a vector: the transposes' block
TAPS = 9  # a 3x3 kernel's
_F32X16 = ir.VectorType(ir.FloatType(), LANES)
_I64 = ir.IntType(64)


class LanesGeometry(NamedTuple):
    """A 3x3 depthwise conv on H x W maps in lanes: the zero-padded input grid (Hp x Wp
    vectors; a pixel's vector at (row * Wp + column) * LANES), the output's Ho x Wo, for
    each output pixel p the offset of its window's first tap in the grid (`window`), for
    each tap its offset from there (`taps`); and the same for the input gradient's grid
    of dy (`up`: Uh x Uw vectors)."""

    hw: tuple[int, int]
    padded: tuple[int, int]
    out_hw: tuple[int, int]
    window: np.ndarray  # int64, Ho*Wo
    taps: np.ndarray  # int64, 9
    inside: np.ndarray  # int64, H*W: each input pixel's vector in the grid
    up: tuple[int, int]  # the input gradient's grid: dy spread s apart, padded
    spread: np.ndarray  # int64, Ho*Wo: each dy pixel's vector in it
    up_window: np.ndarray  # int64, H*W: each input pixel's window in it
    up_taps: np.ndarray  # int64, 9: the flipped kernel's taps in it


@functools.lru_cache(maxsize=64)
def lanes_geometry(h: int, w: int, stride: tuple[int, int], pad: tuple[int, int],
                   dilation: tuple[int, int]) -> LanesGeometry:
    """The layout for H x W maps (once per geometry, shared, never written); a padding
    of at most the kernel's reach, 2 d (dy's spread grid starts at d (k - 1) - p)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    if ph > 2 * dh or pw > 2 * dw:
        raise ValueError(f"padding {pad} beyond a 3x3 kernel's reach at dilation {dilation}")
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wo = (hp - 2 * dh - 1) // sh + 1, (wp - 2 * dw - 1) // sw + 1
    oi, oj = np.divmod(np.arange(ho * wo), wo)
    window = (oi * sh * wp + oj * sw) * LANES
    taps = np.array([(i * dh * wp + j * dw) * LANES for i in range(3) for j in range(3)])
    r, col = np.divmod(np.arange(h * w), w)
    inside = ((r + ph) * wp + col + pw) * LANES
    # dx = the correlation of dy, spread s apart and padded by d (k - 1) - p (plus what
    # rows and columns the forward's windows left unread), with the kernel rotated
    # by 180 degrees: an H x W output of the same window sums
    qh, qw = 2 * dh - ph, 2 * dw - pw
    uh, uw = h + 2 * dh, w + 2 * dw
    spread = ((oi * sh + qh) * uw + oj * sw + qw) * LANES
    up_window = (r * uw + col) * LANES
    up_taps = np.array([(i * dh * uw + j * dw) * LANES for i in range(3) for j in range(3)])
    return LanesGeometry((h, w), (hp, wp), (ho, wo), window.astype(np.int64),
                         taps.astype(np.int64), inside.astype(np.int64), (uh, uw),
                         spread.astype(np.int64), up_window.astype(np.int64),
                         up_taps.astype(np.int64))


def _vector(builder: ir.IRBuilder, base, at) -> ir.Value:
    return builder.bitcast(builder.gep(base, [at]), _F32X16.as_pointer())


def _arrays(context, builder, signature, args, which):
    return [context.make_array(signature.args[k])(context, builder, args[k]).data
            for k in which]


def _taps(builder, offs, ws):
    # the nine (offset, weight broadcast) pairs, from their tuples
    return [(builder.extract_value(offs, t), splat(builder, builder.extract_value(ws, t)))
            for t in range(TAPS)]


_OFFS = types.UniTuple(types.uint64, TAPS)
_WS = types.UniTuple(types.float32, TAPS)


@intrinsic
def windows9(typingctx, src, window, offs, ws, bias, dst, count):
    """dst[16 p:+16] = bias + the sum over taps t of ws[t] * src[window[p] + offs[t]:+16]
    for the pixels p < count (src, dst flat float32; window int64; offs and ws tuples of
    nine): an output pixel of 16 samples, its nine products summed in registers."""
    sig = types.void(src, window, _OFFS, _WS, types.float32, dst, types.uint64)

    def codegen(context, builder, signature, args):
        src_p, window_p, dst_p = _arrays(context, builder, signature, args, (0, 1, 5))
        offs, ws, bias, count = args[2], args[3], args[4], args[6]
        taps = _taps(builder, offs, ws)
        start = splat(builder, bias)
        flags = ("contract",)
        with cgutils.for_range(builder, count) as loop:
            p = loop.index
            at = builder.load(builder.gep(window_p, [p]))
            acc = start
            for off, w in taps:
                v = builder.load(_vector(builder, src_p, builder.add(at, off)), align=4)
                acc = builder.fadd(acc, builder.fmul(w, v, flags=flags), flags=flags)
            builder.store(acc, _vector(builder, dst_p, builder.mul(p, ir.Constant(_I64, LANES))),
                          align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def wgrad9(typingctx, x, window, offs, g, spread, count, sums):
    """sums[16 t:+16] += the sum over the pixels p < count of g[spread[p]:+16] * x[window[p]
    + offs[t]:+16], for the nine taps t: the weight gradient's 16 lanes, summed in
    registers over the pixels (x, g, sums flat float32; window, spread int64)."""
    sig = types.void(x, window, _OFFS, g, spread, types.uint64, sums)

    def codegen(context, builder, signature, args):
        x_p, window_p, g_p, spread_p, sums_p = _arrays(context, builder, signature, args,
                                                       (0, 1, 3, 4, 6))
        offs, count = args[2], args[5]
        flags = ("contract",)
        zero = ir.Constant(_F32X16, [0.0] * LANES)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(TAPS)]
        with cgutils.for_range(builder, count) as loop:
            p = loop.index
            at = builder.load(builder.gep(window_p, [p]))
            dy = builder.load(_vector(builder, g_p, builder.load(builder.gep(spread_p, [p]))),
                              align=4)
            for t, acc in enumerate(accs):
                off = builder.extract_value(offs, t)
                v = builder.load(_vector(builder, x_p, builder.add(at, off)), align=4)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(dy, v, flags=flags),
                                           flags=flags), acc)
        for t, acc in enumerate(accs):
            s = _vector(builder, sums_p, ir.Constant(_I64, t * LANES))
            builder.store(builder.fadd(builder.load(s, align=4), builder.load(acc)), s,
                          align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def normalize_at(typingctx, src, dst, places, count, scale, shift, act):
    """dst[places[p]:+16] = act(src[places[p]:+16] * scale + shift) for p < count: a
    BatchNorm's output (`_rule.Normalized`) computed in the grid, a product, then
    a sum, as BatchNorm's output pass rounds it (`_masked.activated`)."""
    sig = types.void(src, dst, places, types.uint64, types.float32, types.float32,
                     types.int64)

    def codegen(context, builder, signature, args):
        src_p, dst_p, places_p = _arrays(context, builder, signature, args, (0, 1, 2))
        count, scale, shift, act = args[3], args[4], args[5], args[6]
        sc, sh = splat(builder, scale), splat(builder, shift)
        with cgutils.for_range(builder, count) as loop:
            at = builder.load(builder.gep(places_p, [loop.index]))
            y = builder.fadd(builder.fmul(builder.load(_vector(builder, src_p, at), align=4),
                                          sc), sh)
            builder.store(activated(builder, y, act), _vector(builder, dst_p, at), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def masked_sums(typingctx, raw, places, g, count, mu, scale, shift, act, sums):
    """sums[:16] += the sum over p < count of g'[p], sums[16:32] += that of g'[p] *
    (raw[places[p]:+16] - mu), lane by lane, where g' is g[16 p:+16] where the
    activation's slope is 1 at raw * scale + shift (a product, then a sum, as the
    forward rounded it; `_masked.passed`), else 0: a BatchNorm's backward sums
    (`_batchnorm._run_sums`) over the gradient of its output, as the conv after it
    computes it."""
    sig = types.void(raw, places, g, types.uint64, types.float32, types.float32,
                     types.float32, types.int64, sums)

    def codegen(context, builder, signature, args):
        raw_p, places_p, g_p, sums_p = _arrays(context, builder, signature, args,
                                               (0, 1, 2, 8))
        count, mu, scale, shift, act = args[3], args[4], args[5], args[6], args[7]
        m, sc, sh = splat(builder, mu), splat(builder, scale), splat(builder, shift)
        zero = ir.Constant(_F32X16, [0.0] * LANES)
        acc_g = cgutils.alloca_once_value(builder, zero)
        acc_x = cgutils.alloca_once_value(builder, zero)
        with cgutils.for_range(builder, count) as loop:
            p = loop.index
            v = builder.load(_vector(builder, raw_p, builder.load(builder.gep(places_p, [p]))),
                             align=4)
            gv = builder.load(_vector(builder, g_p, builder.mul(p, ir.Constant(_I64, LANES))),
                              align=4)
            keep = passed(builder, builder.fadd(builder.fmul(v, sc), sh), act)
            gk = builder.select(keep, gv, zero)
            builder.store(builder.fadd(builder.load(acc_g), gk), acc_g)
            builder.store(builder.fadd(builder.load(acc_x),
                                       builder.fmul(gk, builder.fsub(v, m))), acc_x)
        for k, acc in enumerate((acc_g, acc_x)):
            s = _vector(builder, sums_p, ir.Constant(_I64, k * LANES))
            builder.store(builder.fadd(builder.load(s, align=4), builder.load(acc)), s,
                          align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", cache=True)
def _nine_offsets(taps):
    return (np.uint64(taps[0]), np.uint64(taps[1]), np.uint64(taps[2]), np.uint64(taps[3]),
            np.uint64(taps[4]), np.uint64(taps[5]), np.uint64(taps[6]), np.uint64(taps[7]),
            np.uint64(taps[8]))


@njit(inline="always", cache=True)
def _nine_weights(w1, ch):
    k = ch * TAPS
    return (w1[k], w1[k + 1], w1[k + 2], w1[k + 3], w1[k + 4], w1[k + 5], w1[k + 6],
            w1[k + 7], w1[k + 8])


@njit(inline="always", cache=True)
def _nine_rotated(w1, ch):
    # the kernel rotated by 180 degrees: the taps in reverse
    k = ch * TAPS
    return (w1[k + 8], w1[k + 7], w1[k + 6], w1[k + 5], w1[k + 4], w1[k + 3], w1[k + 2],
            w1[k + 1], w1[k])


@njit(inline="always", cache=True)
def _into_lanes(x1, n0, lanes, c, planes, hw, inside, grid):
    # the plane of channel c of samples n0 .. n0 + lanes - 1 (x1 flat N x C x H*W, C =
    # planes) into the grid, pixel p's vector at inside[p], lanes past `lanes` zero: whole
    # blocks of 16 pixels through `transpose16_to` where all 16 samples are there, the
    # rest value by value
    step = np.uint64(planes * hw)
    src = np.uint64(n0) * step + np.uint64(c * hw)
    whole = hw // LANES * LANES if lanes == LANES else 0
    for p0 in range(0, whole, LANES):
        transpose16_to(x1, src + np.uint64(p0), step, grid, np.uint64(0), inside,
                       np.uint64(p0))
    for p in range(whole, hw):
        d = np.uint64(inside[p])
        for k in range(LANES):
            grid[d + k] = x1[src + np.uint64(k) * step + np.uint64(p)] if k < lanes else 0.0


@njit(inline="always", cache=True)
def _from_lanes(vals, hw, o1, n0, lanes, c, planes):
    # vals (H*W vectors of 16 samples, flat) back to channel c's planes of samples n0 ..
    # n0 + lanes - 1 in o1 (flat N x C x H*W, C = planes)
    step = np.uint64(planes * hw)
    dst = np.uint64(n0) * step + np.uint64(c * hw)
    whole = hw // LANES * LANES if lanes == LANES else 0
    for p0 in range(0, whole, LANES):
        transpose16(vals, np.uint64(p0 * LANES), np.uint64(LANES), o1, dst + np.uint64(p0),
                    step)
    for p in range(whole, hw):
        s = np.uint64(p * LANES)
        for k in range(lanes):
            o1[dst + np.uint64(k) * step + np.uint64(p)] = vals[s + np.uint64(k)]


# `norm` where the input is not normalized: (scale, shift, mean, act, normalized)
NO_NORM = (np.zeros(1, np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32), 0,
           False)
# `depthwise_backward`'s `bn_sums` where it takes none (no column a channel)
NO_SUMS = np.zeros((1, 2, 0))
# Both are passed, never defaults: numba's cache never holds a call that omits an array
# (`test_no_cached_kernel_has_an_unhashable_default`; docs/numba.md, "What `compile` does")


@njit(inline="always", cache=True)
def _normalized(raw, grid, inside, hw, ch, norm):
    # channel ch's block, raw in `raw`, normalized into the grid where `norm` says so (its
    # padding stays 0)
    scale, shift, _, act, normalized = norm
    if normalized:
        normalize_at(raw, grid, inside, np.uint64(hw), scale[ch], shift[ch], act)


@njit(inline="always", cache=True)
def _lane_sum(sums, row):
    # the 16 lanes of sums[16 row:+16] summed in float32, in lane order
    total = np.float32(0.0)
    for lane in range(LANES):
        total += sums[row * LANES + lane]
    return total


@njit(inline="always", cache=True)
def _job(job, c, n_batch):
    # a job's channel, its block's first sample and how many samples the block has: jobs
    # go channel by channel within a block of 16 samples
    b, ch = divmod(job, c)
    n0 = b * LANES
    return ch, n0, min(LANES, n_batch - n0)


@njit(inline="always", cache=True)
def _prefetch_planes(x1, job, end, c, n_batch, hw):
    # asks for the planes job `job` reads (x1 flat N x C x H*W), where job < end: its
    # block's 16 runs of H*W values, a sample apart, which the prefetcher does not follow
    # (`_prefetch`); the job before it runs meanwhile
    if job >= end:
        return
    ch, n0, lanes = _job(job, c, n_batch)
    for k in range(lanes):
        prefetch_run(x1, ((n0 + k) * c + ch) * hw, hw)


@njit(parallel=True, cache=True)
def depthwise_forward(x, w, bias, out, geometry, threads, norm):
    """out (N x C x Ho x Wo) = the 3x3 depthwise conv of x (N x C x H x W) with w (C x 9)
    plus bias (C), `geometry` its `LanesGeometry`; with `norm` (scale, shift, mean, act,
    True) rather than `NO_NORM`, of act(x * scale + shift) per channel instead, the
    BatchNorm before it (`normalize_at`).
    Each thread its share of the (block of 16 samples, channel) pairs."""
    (h, wd), (hp, wp), (ho, wo), window, taps, inside = geometry[:6]
    n_batch, c = x.shape[0], x.shape[1]
    hw, howo = h * wd, ho * wo
    x1, w1, o1 = x.reshape(x.size), w.reshape(w.size), out.reshape(out.size)
    blocks = -(-n_batch // LANES)
    jobs = blocks * c
    offs = _nine_offsets(taps)
    for th in prange(threads):
        grid = np.zeros(hp * wp * LANES, np.float32)
        vals = np.empty(howo * LANES, np.float32)
        end = (th + 1) * jobs // threads
        for job in range(th * jobs // threads, end):
            _prefetch_planes(x1, job + 1, end, c, n_batch, hw)
            ch, n0, lanes = _job(job, c, n_batch)
            _into_lanes(x1, n0, lanes, ch, c, hw, inside, grid)
            _normalized(grid, grid, inside, hw, ch, norm)
            windows9(grid, window, offs, _nine_weights(w1, ch), bias[ch], vals,
                     np.uint64(howo))
            _from_lanes(vals, howo, o1, n0, lanes, ch, c)


@njit(parallel=True, cache=True)
def depthwise_backward(x, gy, w, gx, parts, geometry, need_dx, threads, norm, bn_sums):
    """The gradients of `depthwise_forward`'s conv (its input normalized again with `norm`
    where the forward's was): parts[t] (threads x C x 9, float64) += thread t's share of
    the weight gradient, and where `need_dx`, gx (N x C x H x W), the gradient of the
    conv's input (the BatchNorm's output, where normalized):
    dy's block spread into the zero grid of `LanesGeometry.up`, then dw's lanes summed
    over its pixels (`wgrad9`) and dx its windows with the kernel rotated (`windows9`).
    Where normalized, need_dx and bn_sums is threads x 2 x C (float64), bn_sums[t] +=
    thread t's share of the BatchNorm's backward sums over gx (`masked_sums`: float32
    over a block of 16 samples, float64 across), which its backward then need not take;
    `NO_SUMS` where it takes none."""
    ((h, wd), (hp, wp), (ho, wo), window, taps, inside, (uh, uw), spread, up_window,
     up_taps) = geometry
    n_batch, c = x.shape[0], x.shape[1]
    hw, howo = h * wd, ho * wo
    x1, g1, w1 = x.reshape(x.size), gy.reshape(gy.size), w.reshape(w.size)
    o1 = gx.reshape(gx.size)
    blocks = -(-n_batch // LANES)
    jobs = blocks * c
    offs, up_offs = _nine_offsets(taps), _nine_offsets(up_taps)
    mean, act, normalized = norm[2], norm[3], norm[4]
    summed = normalized and need_dx and bn_sums.shape[2] == c
    for th in prange(threads):
        grid = np.zeros(hp * wp * LANES, np.float32)
        raw = np.zeros(hp * wp * LANES if summed else 1, np.float32)
        up = np.zeros(uh * uw * LANES, np.float32)  # dy, spread: its zeros stay
        vals = np.empty(hw * LANES, np.float32)
        sums = np.empty(TAPS * LANES, np.float32)
        end = (th + 1) * jobs // threads
        for job in range(th * jobs // threads, end):
            _prefetch_planes(x1, job + 1, end, c, n_batch, hw)
            _prefetch_planes(g1, job + 1, end, c, n_batch, howo)
            ch, n0, lanes = _job(job, c, n_batch)
            _into_lanes(x1, n0, lanes, ch, c, hw, inside, raw if summed else grid)
            _normalized(raw if summed else grid, grid, inside, hw, ch, norm)
            _into_lanes(g1, n0, lanes, ch, c, howo, spread, up)
            sums[:] = 0.0
            wgrad9(grid, window, offs, up, spread, np.uint64(howo), sums)
            for t in range(TAPS):
                parts[th, ch, t] += _lane_sum(sums, t)
            if need_dx:
                windows9(up, up_window, up_offs, _nine_rotated(w1, ch), np.float32(0.0),
                         vals, np.uint64(hw))
                _from_lanes(vals, hw, o1, n0, lanes, ch, c)
            if summed:
                sums[:2 * LANES] = 0.0
                masked_sums(raw, inside, vals, np.uint64(hw), mean[ch], norm[0][ch],
                            norm[1][ch], act, sums)
                for k in range(2):
                    bn_sums[th, k, ch] += _lane_sum(sums, k)
