"""Register-tiled tap sums of a convolution's weight gradient, on the stride-phase planes
`_planes` lays out (`_planes_wgrad` runs them).

A tile adds to R output channels x S taps' sums over a run of samples: per vector of
LANES pixels, R loads of dy's rows, S of the input's planes at the taps' offsets and R*S
fused multiply-adds, into R*S vector accumulators; no im2col columns are copied. The rows
of a tile share the taps' input plane, so a grouped conv (depthwise included) tiles each
group's output channels with its own taps.

The tiles are written as LLVM IR (`numba.extending.intrinsic`, as `_masked` and
`_transpose` are): vectors of 8 pixels (`TILES`; one AVX2 register) or of 16
(`WIDE_TILES`; one 512-bit register), the accumulators kept in registers across the
loops (LLVM promotes their stack slots), which LLVM lowers for the CPU it compiles for
(`llvm.fmuladd`: one FMA where the CPU has them). Generated as scalar code that the SLP
vectorizer packed, the 16-pixel tiles took numba a minute to compile; as IR, the driver
of either width compiles in under 3 s.

Every tile takes the same arguments (`tile`): g1 dy's rows (flat float32) from g_0, g_c
values a row apart and g_n a sample; x1 the planes (flat float32) from x_0, x_n values a
sample; offs[k, s] tap s's offset (row k of an int64 array: tile k's S columns); m
samples; `steps` vectors a row; acc (flat float32) the R x S accumulators of LANES values
from `at`, row r's tap s at (r*S + s)*LANES, loaded and stored back, so that a run of
samples (whose rows stay in L1) costs no sum of its own. Offsets are not checked.

`weight_grad` and `weight_grad_wide` run the tiles over chunks of samples
(`_planes_wgrad.conv2d_weight_grad` lays their arguments out). They live here, with the
tiles they compile in: numba keys a cached kernel by its own file, so editing the IR here
recompiles them; a caller in another file would keep running the old IR.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 8  # pixels a vector of `TILES`
WIDE_LANES = 16  # pixels a vector of `WIDE_TILES`

# (R output channels, S taps): 4 x 3 for ungrouped convs and depthwise ones of 4 or more
# outputs an input channel, 1 x 9 (a 3x3 kernel) for depthwise ones of fewer; R*S = 12
# and 9 of AVX2's 16 vector registers. Where vectors are 512 bits (32 registers),
# ungrouped convs of 3 and 5-7 output channels take a tile of as many rows, which leaves
# no rows of zeros (`_planes_wgrad._tile`); on 16 pixels, 8 as well (24 registers).
# Depthwise convs keep 8 pixels (`_planes_wgrad._lanes`); grouped ones of several input
# channels a group and few outputs take 1 x 9 on 16
TILES = ((4, 3), (1, 9), (3, 3), (5, 3), (6, 3), (7, 3))
WIDE_TILES = TILES + ((8, 3),)

# samples whose tap sums `weight_grad` adds in float32 before it adds them into float64
SUM_SAMPLES = 16

_F32 = ir.FloatType()
_I64 = ir.IntType(64)


def _tiles_intrinsic(tiles: tuple[tuple[int, int], ...], lanes: int):
    """`tile(r, ...)` for these tiles on vectors of `lanes` pixels, as an intrinsic: a
    switch on r, each case one tile's loops (`_emit_tile`); a row count that is no tile's
    does nothing (callers take r from the tiles; a raise in numba code would serialize
    their prange)."""

    def tile(typingctx, r, g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at):
        if not (all(_flat_float32(a) for a in (g1, x1, acc))
                and isinstance(offs, types.Array) and offs.dtype == types.int64
                and offs.ndim == 2
                and all(isinstance(i, types.Integer)
                        for i in (r, g_0, g_c, g_n, x_0, x_n, k, m, steps, at))):
            return None  # numba then names the arguments it could not type
        sig = types.void(r, g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)

        def codegen(context, builder, signature, args):
            kinds = signature.args
            r, *values = (
                context.cast(builder, v, t, types.int64) if isinstance(t, types.Integer)
                else v for v, t in zip(args, kinds, strict=True))
            done = builder.append_basic_block("tiles.done")
            switch = builder.switch(r, done)
            for rows, taps in tiles:
                case = builder.append_basic_block(f"tile.{rows}x{taps}")
                switch.add_case(_i64(rows), case)
                builder.position_at_end(case)
                _emit_tile(context, builder, kinds[1:], values, rows, taps, lanes)
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = "tile_wide" if lanes == WIDE_LANES else "tile"
    return intrinsic(tile)


def _emit_tile(context, builder: ir.IRBuilder, kinds, values, rows: int, taps: int,
               lanes: int) -> None:
    # the loops of the tile of `rows` x `taps` on vectors of `lanes` pixels, on the
    # arguments after r (integers as int64)
    vec = ir.VectorType(_F32, lanes)
    g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at = values
    g_ptr = context.make_array(kinds[0])(context, builder, g1).data
    x_ptr = context.make_array(kinds[4])(context, builder, x1).data
    a_ptr = context.make_array(kinds[11])(context, builder, acc).data
    offs_array = context.make_array(kinds[7])(context, builder, offs)
    tap = [builder.load(cgutils.get_item_pointer(context, builder, kinds[7], offs_array,
                                                 [k, _i64(s)]))
           for s in range(taps)]
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        vec, [vec, vec, vec]), f"llvm.fmuladd.v{lanes}f32")
    sums = []  # row r's tap s at r*taps + s
    for i in range(rows * taps):
        slot = cgutils.alloca_once(builder, vec)
        builder.store(_load(builder, a_ptr, builder.add(at, _i64(i * lanes)), vec), slot)
        sums.append(slot)
    with cgutils.for_range(builder, m) as sample:
        n = sample.index
        row = [builder.add(builder.add(g_0, builder.mul(n, g_n)), builder.mul(g_c, _i64(r)))
               for r in range(rows)]
        x_n0 = builder.add(x_0, builder.mul(n, x_n))
        window = [builder.add(x_n0, tap[s]) for s in range(taps)]
        with cgutils.for_range(builder, steps) as step:
            p = builder.mul(step.index, _i64(lanes))
            u = [_load(builder, x_ptr, builder.add(window[s], p), vec) for s in range(taps)]
            for r in range(rows):
                q = _load(builder, g_ptr, builder.add(row[r], p), vec)
                for s in range(taps):
                    slot = sums[r * taps + s]  # += q * u[s]
                    builder.store(builder.call(fma, [q, u[s], builder.load(slot)]), slot)
    for i, slot in enumerate(sums):
        _store(builder, a_ptr, builder.add(at, _i64(i * lanes)), builder.load(slot), vec)


def _flat_float32(kind) -> bool:
    return isinstance(kind, types.Array) and kind.dtype == types.float32 and kind.ndim == 1


def _i64(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _load(builder: ir.IRBuilder, base, at, vec: ir.VectorType) -> ir.Value:
    # a vector from base[at], unaligned
    return builder.load(builder.bitcast(builder.gep(base, [at]), vec.as_pointer()), align=4)


def _store(builder: ir.IRBuilder, base, at, value: ir.Value, vec: ir.VectorType) -> None:
    builder.store(value, builder.bitcast(builder.gep(base, [at]), vec.as_pointer()), align=4)


# tile(r, g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at): the tile of `TILES`
# with r rows on those arguments; `tile_wide` of `WIDE_TILES`
tile = _tiles_intrinsic(TILES, LANES)
tile_wide = _tiles_intrinsic(WIDE_TILES, WIDE_LANES)


@njit(inline="always", cache=True)
def _sum_tiles(tile, lanes, g1, g_at, g_c, g_n, x1, x_n, offs, parts, n_batch, blocks, steps,
               chunk, t, threads):
    # thread t's share of `weight_grad`, by `tile` (`tile`, or `tile_wide` for vectors of
    # `lanes` pixels)
    groups, n_tiles, s = offs.shape
    r = parts.shape[4] // (s * lanes)
    lo, hi = t * n_batch // threads, (t + 1) * n_batch // threads
    total = parts[t].reshape(parts[t].size)
    acc = np.zeros(total.size, np.float32)
    summed = 0
    for n0 in range(lo, hi, chunk):
        m = min(chunk, hi - n0)
        for g in range(groups):
            for b in range(blocks):
                g_0 = g_at + n0 * g_n + (g * blocks + b) * r * g_c
                x_0 = n0 * x_n
                for k in range(n_tiles):
                    at = ((g * blocks + b) * n_tiles + k) * r * s * lanes
                    tile(r, g1, g_0, g_c, g_n, x1, x_0, x_n, offs[g], k, m, steps, acc, at)
        summed += m
        if summed >= SUM_SAMPLES or n0 + m >= hi:
            for q in range(total.size):
                total[q] += acc[q]
                acc[q] = 0.0
            summed = 0


@njit(parallel=True, cache=True)
def weight_grad(g1, g_at, g_c, g_n, x1, x_n, offs, parts, n_batch, blocks, steps, chunk,
                threads):
    """parts[t] += thread t's share of the tap sums: its samples, in chunks of `chunk`
    whose rows and planes stay in L1 while every tile reads them, summed in float32 over
    SUM_SAMPLES samples at a time, then added into parts in float64.

    g1: dy as rows of steps*LANES values, G*blocks*R of them a sample, flat: from g_at,
    g_c values a row apart, g_n a sample (`to_rows` lays them out so, from 0, g_c the
    rows' length; dy's own planes hold them too, `_rows_in_planes`); x1: the input as
    phase planes (`to_phase_planes`, flat; x_n values a sample); offs: each group's taps
    in tiles of S, as offsets into a sample's planes (G x n_tiles x S); parts: threads x
    G x blocks x n_tiles x R*S*LANES, float64. The tile R x S is the one of those sizes
    (`_planes_wgrad._tile`) on vectors of LANES = 8 pixels; `weight_grad_wide` runs the
    tiles of 16."""
    for t in prange(threads):
        _sum_tiles(tile, LANES, g1, g_at, g_c, g_n, x1, x_n, offs, parts,
                   n_batch, blocks, steps, chunk, t, threads)


@njit(parallel=True, cache=True)
def weight_grad_wide(g1, g_at, g_c, g_n, x1, x_n, offs, parts, n_batch, blocks, steps,
                     chunk, threads):
    """`weight_grad` by the tiles of 16 pixels a vector (`WIDE_TILES`): rows
    `steps` * 16 values long."""
    for t in prange(threads):
        _sum_tiles(tile_wide, WIDE_LANES, g1, g_at, g_c, g_n, x1, x_n, offs,
                   parts, n_batch, blocks, steps, chunk, t, threads)
