"""Register tiles of summed outer products, the inner kernel of `_pointwise` (1x1 convs)
and `_strided_dx` (strided input gradients).

A tile holds R x V vectors of 8 float32 sums in registers. For each index c of a loop
of `count`, it loads V vectors of a row of b (b[b_at + c * b_step:][:8V]), broadcasts R
scalars of a (a[a_ats[r] + c * a_step], one a row), and adds the R x V products; then it
stores, or adds, each row's V vectors at its place in dst:

    dst[d_ats[r] + j] (+)= sum over c < count of a[a_ats[r] + c * a_step]
                                                 * b[b_at + c * b_step + j],   j < 8V

`_pointwise`: a = W (a row an output channel), b = a sample's planes (a row an input
channel), stored. `_strided_dx`: a = dy (a row an output pixel), b = a kernel row's
weights (a row an output channel), added into dx. LLVM IR (`numba.extending.intrinsic`,
as `_depthwise_lanes`' window sums), vectors of 256 bits: R x V <= 12 of AVX2's 16
registers of sums.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

WIDTH = 8  # float32 lanes of a vector: 256 bits
_F32X8 = ir.VectorType(ir.FloatType(), WIDTH)
_I64 = ir.IntType(64)


def _splat(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    one = builder.insert_element(ir.Constant(_F32X8, None), value, ir.Constant(_I64, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32),
                                                                      WIDTH), [0] * WIDTH))


def vector_ptr(builder: ir.IRBuilder, base, at) -> ir.Value:
    # base[at] as a pointer to a vector of 8 float32 (`_pointwise_wgrad`'s tiles too)
    return builder.bitcast(builder.gep(base, [at]), _F32X8.as_pointer())


def _tile_intrinsic(rows: int, n_vectors: int, add: bool):
    """`tile{rows}x{n_vectors}` (`add`: `add{rows}x{n_vectors}`): the module's tile."""

    def tile(typingctx, a, a_ats, a_step, count, b, b_at, b_step, dst, d_ats):
        if not all(isinstance(t, types.UniTuple) and t.count == rows for t in (a_ats, d_ats)):
            return None  # numba then names the arguments it could not type
        sig = types.void(a, a_ats, types.uint64, types.uint64, b, types.uint64,
                         types.uint64, dst, d_ats)

        def codegen(context, builder, signature, args):
            a_ptr, b_ptr, d_ptr = (context.make_array(signature.args[k])(
                context, builder, args[k]).data for k in (0, 4, 7))
            _, a_ats, a_step, count, _, b_at, b_step, _, d_ats = args
            zero = ir.Constant(_F32X8, [0.0] * WIDTH)
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(n_vectors)]
                    for _ in range(rows)]
            flags = ("contract",)
            with cgutils.for_range(builder, count) as loop:
                c = loop.index
                b_c = builder.add(b_at, builder.mul(c, b_step))
                bs = [builder.load(vector_ptr(builder, b_ptr, builder.add(
                    b_c, ir.Constant(_I64, v * WIDTH))), align=4) for v in range(n_vectors)]
                a_c = builder.mul(c, a_step)
                for r in range(rows):
                    s = _splat(builder, builder.load(builder.gep(
                        a_ptr, [builder.add(builder.extract_value(a_ats, r), a_c)])))
                    for v in range(n_vectors):
                        acc = sums[r][v]
                        builder.store(builder.fadd(builder.load(acc), builder.fmul(
                            s, bs[v], flags=flags), flags=flags), acc)
            for r in range(rows):
                d_r = builder.extract_value(d_ats, r)
                for v in range(n_vectors):
                    at = vector_ptr(builder, d_ptr, builder.add(d_r, ir.Constant(_I64, v * WIDTH)))
                    total = builder.load(sums[r][v])
                    if add:
                        total = builder.fadd(builder.load(at, align=4), total)
                    builder.store(total, at, align=4)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"{'add' if add else 'tile'}{rows}x{n_vectors}"
    return intrinsic(tile)


# tileRxV(a, a_ats, a_step, count, b, b_at, b_step, dst, d_ats) stores the module's sums,
# addRxV adds them (flat float32 arrays, unsigned offsets; a_ats and d_ats tuples of R).
# No bounds are checked.
tile4x1, tile4x2, tile4x3 = (_tile_intrinsic(4, v, add=False) for v in (1, 2, 3))
add4x1, add4x2, add4x3 = (_tile_intrinsic(4, v, add=True) for v in (1, 2, 3))
add1x1, add1x2, add1x3 = (_tile_intrinsic(1, v, add=True) for v in (1, 2, 3))
