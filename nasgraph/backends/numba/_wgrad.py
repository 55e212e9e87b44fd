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
loops (LLVM promotes their stack slots), which LLVM lowers for the CPU it compiles for.
Generated as scalar code that the SLP vectorizer packed, the 16-pixel tiles took numba a
minute to compile; as IR, two seconds for all of them.

Every tile takes the same arguments (`tile`): g1 dy's rows (flat float32) from g_0, g_c
values a row apart and g_n a sample; x1 the planes (flat float32) from x_0, x_n values a
sample; offs[k, s] tap s's offset (tile column k of an int64 array); m samples; `steps`
vectors a row; acc (flat float32) the R x S accumulators of LANES values from `at`, row
r's tap s at (r*S + s)*LANES, loaded and stored back, so that a run of samples (whose
rows stay in L1) costs no sum of its own. Offsets are not checked.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 8  # pixels a vector of `TILES`
WIDE_LANES = 16  # pixels a vector of `WIDE_TILES`

# (R output channels, S taps): 4 x 3 for ungrouped convs and depthwise ones of 4 or more
# outputs an input channel, 1 x 9 (a 3x3 kernel) for depthwise ones of fewer; R*S = 12
# and 9 of AVX2's 16 vector registers. Where vectors are 512 bits (32 registers),
# ungrouped convs of 3 and 5-7 output channels take a tile of as many rows, which leaves
# no rows of zeros (`_planes_wgrad._tile`); on 16 pixels, 8 as well (24 registers)
TILES = ((4, 3), (1, 9), (3, 3), (5, 3), (6, 3), (7, 3))
WIDE_TILES = TILES + ((8, 3),)

_F32 = ir.FloatType()
_I64 = ir.IntType(64)


def _tile_intrinsic(rows: int, taps: int, lanes: int):
    """The tile of `rows` x `taps` on vectors of `lanes` pixels, as an intrinsic."""
    vec = ir.VectorType(_F32, lanes)

    def tile(typingctx, g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at):
        sig = types.void(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)

        def codegen(context, builder, signature, args):
            kinds = signature.args
            g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at = (
                context.cast(builder, v, t, types.int64) if isinstance(t, types.Integer)
                else v for v, t in zip(args, kinds, strict=True))
            g_ptr = context.make_array(kinds[0])(context, builder, g1).data
            x_ptr = context.make_array(kinds[4])(context, builder, x1).data
            a_ptr = context.make_array(kinds[11])(context, builder, acc).data
            offs_array = context.make_array(kinds[7])(context, builder, offs)
            tap = [builder.load(cgutils.get_item_pointer(context, builder, kinds[7],
                                                         offs_array, [k, _i64(s)]))
                   for s in range(taps)]
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                vec, [vec, vec, vec]), f"llvm.fma.v{lanes}f32")
            sums = []  # row r's tap s at r*taps + s
            for i in range(rows * taps):
                slot = cgutils.alloca_once(builder, vec)
                builder.store(_load(builder, a_ptr, builder.add(at, _i64(i * lanes)), vec),
                              slot)
                sums.append(slot)
            with cgutils.for_range(builder, m) as sample:
                n = sample.index
                row = [builder.add(builder.add(g_0, builder.mul(n, g_n)),
                                   builder.mul(g_c, _i64(r))) for r in range(rows)]
                x_n0 = builder.add(x_0, builder.mul(n, x_n))
                window = [builder.add(x_n0, tap[s]) for s in range(taps)]
                with cgutils.for_range(builder, steps) as step:
                    p = builder.mul(step.index, _i64(lanes))
                    u = [_load(builder, x_ptr, builder.add(window[s], p), vec)
                         for s in range(taps)]
                    for r in range(rows):
                        q = _load(builder, g_ptr, builder.add(row[r], p), vec)
                        for s in range(taps):
                            slot = sums[r * taps + s]
                            builder.store(builder.call(fma, [q, u[s], builder.load(slot)]),
                                          slot)
            for i, slot in enumerate(sums):
                _store(builder, a_ptr, builder.add(at, _i64(i * lanes)),
                       builder.load(slot), vec)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"tile_{rows}x{taps}" + ("_wide" if lanes == WIDE_LANES else "")
    return intrinsic(tile)


def _i64(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _load(builder: ir.IRBuilder, base, at, vec: ir.VectorType) -> ir.Value:
    # a vector from base[at], unaligned
    return builder.load(builder.bitcast(builder.gep(base, [at]), vec.as_pointer()), align=4)


def _store(builder: ir.IRBuilder, base, at, value: ir.Value, vec: ir.VectorType) -> None:
    builder.store(value, builder.bitcast(builder.gep(base, [at]), vec.as_pointer()), align=4)


tile_4x3, tile_1x9, tile_3x3, tile_5x3, tile_6x3, tile_7x3 = (
    _tile_intrinsic(r, s, LANES) for r, s in TILES)
(tile_4x3_wide, tile_1x9_wide, tile_3x3_wide, tile_5x3_wide, tile_6x3_wide, tile_7x3_wide,
 tile_8x3_wide) = (_tile_intrinsic(r, s, WIDE_LANES) for r, s in WIDE_TILES)


@njit(inline="always", cache=True)
def tile(r, g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at):
    """The tile of `TILES` with r rows, on these arguments."""
    if r == 4:
        tile_4x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 1:
        tile_1x9(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 3:
        tile_3x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 5:
        tile_5x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 6:
        tile_6x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    else:
        tile_7x3(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)


@njit(inline="always", cache=True)
def tile_wide(r, g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at):
    """The tile of `WIDE_TILES` with r rows, on these arguments."""
    if r == 4:
        tile_4x3_wide(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 1:
        tile_1x9_wide(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 3:
        tile_3x3_wide(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 5:
        tile_5x3_wide(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 6:
        tile_6x3_wide(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    elif r == 7:
        tile_7x3_wide(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
    else:
        tile_8x3_wide(g1, g_0, g_c, g_n, x1, x_0, x_n, offs, k, m, steps, acc, at)
