"""Short runs of float32 moved in one masked vector (`copy16`): how the kernels that lay
a tensor out in rows wider than its own (the phase planes' zero-padded rows) move rows of
at most 16 values.

A loop over a run of 14 values (a 14 x 14 map's row) stays scalar: LLVM vectorizes a loop
whose trip count it does not know for runs of 64 and more (16 lanes, 4 vectors at a
time), and leaves the rest to a scalar remainder. `copy16` is written as LLVM IR
(`numba.extending.intrinsic`): a masked load of n values, zeros in the other lanes, and a
masked store of m lanes, which LLVM lowers for the CPU it compiles for (`vmovups` under
a mask register on AVX-512, `vmaskmovps` on AVX2).

It also holds the pieces other modules' intrinsics build vectors of 16 from: a value in
every lane (`splat`), a masked load (`load_first`), and an activation and where its slope
is 1 (`activated`, `passed`), as BatchNorm's fused passes apply them.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16  # values a `copy16` moves at most
_F32X16 = ir.VectorType(ir.FloatType(), LANES)
_I1X16 = ir.VectorType(ir.IntType(1), LANES)
_I32 = ir.IntType(32)
_I32X16 = ir.VectorType(_I32, LANES)


@intrinsic
def copy16(typingctx, src, src_at, n, dst, dst_at, m):
    """dst[dst_at + j] = src[src_at + j] for j < n, 0.0 for n <= j < m (n <= m <= 16;
    flat float32 arrays, unsigned offsets): one masked load, one masked store; the values
    past n are not read, those past m not written. No bounds are checked."""
    sig = types.void(src, types.uint64, types.uint64, dst, types.uint64, types.uint64)
    return sig, _masked_codegen(add=False)


@intrinsic
def add16(typingctx, src, src_at, n, dst, dst_at, value):
    """dst[dst_at + j] = src[src_at + j] + value for j < n (n <= 16; flat float32 arrays,
    unsigned offsets, value float32): one masked load, an add, one masked store; nothing
    past n is read or written. No bounds are checked."""
    sig = types.void(src, types.uint64, types.uint64, dst, types.uint64, types.float32)
    return sig, _masked_codegen(add=True)


def _masked_codegen(add: bool):
    # the code of `copy16` (the last argument: the lanes stored) or, with `add`, of
    # `add16` (the last argument: the value added; as many lanes stored as loaded)
    def codegen(context, builder, signature, args):
        s_ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
        d_ptr = context.make_array(signature.args[3])(context, builder, args[3]).data
        s_at, count, _, d_at, last = args[1:]
        load, store = _masked_load_store(builder, s_ptr, d_ptr)
        loaded = first_lanes(builder, count)
        value = builder.call(load, [builder.gep(s_ptr, [s_at]), ir.Constant(_I32, 4), loaded,
                                    ir.Constant(_F32X16, [0.0] * LANES)])
        if add:
            value, stored = builder.fadd(value, splat(builder, last)), loaded
        else:
            stored = first_lanes(builder, last)
        builder.call(store, [value, builder.gep(d_ptr, [d_at]), ir.Constant(_I32, 4), stored])
        return context.get_dummy_value()

    return codegen


def _masked_load_store(builder: ir.IRBuilder, s_ptr, d_ptr, lanes: int = LANES) -> tuple:
    # LLVM's masked load from s_ptr's and store to d_ptr's kind of pointer, 16 (`lanes`) x
    # float32
    vector, mask = ir.VectorType(ir.FloatType(), lanes), ir.VectorType(ir.IntType(1), lanes)
    load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        vector, [s_ptr.type, _I32, mask, vector]), f"llvm.masked.load.v{lanes}f32.p0")
    store = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ir.VoidType(), [vector, d_ptr.type, _I32, mask]), f"llvm.masked.store.v{lanes}f32.p0")
    return load, store


def splat(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """For intrinsics: a scalar (a float32, an int32, ...) in all 16 lanes of a vector."""
    vector = ir.VectorType(value.type, LANES)
    v = builder.insert_element(ir.Constant(vector, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(_I32X16, [0] * LANES))


def activated(builder: ir.IRBuilder, y: ir.Value, act: ir.Value) -> ir.Value:
    """For intrinsics: act(y) of a vector of 16, as `_batchnorm._normalize_run` applies
    it: `act` (an integer value) 1 ReLU (y if y > 0 else 0), 2 ReLU6, else y."""
    zero, six = ir.Constant(_F32X16, [0.0] * LANES), ir.Constant(_F32X16, [6.0] * LANES)
    relu = builder.select(builder.fcmp_ordered(">", y, zero), y, zero)
    relu6 = builder.select(builder.fcmp_ordered("<", relu, six), relu, six)
    is1 = builder.icmp_signed("==", act, ir.Constant(act.type, 1))
    is2 = builder.icmp_signed("==", act, ir.Constant(act.type, 2))
    return builder.select(is1, relu, builder.select(is2, relu6, y))


def passed(builder: ir.IRBuilder, pre: ir.Value, act: ir.Value) -> ir.Value:
    """For intrinsics: where activation `act`'s slope is 1 at its input `pre` (a vector
    of 16; an i1 vector): ReLU pre > 0, ReLU6 0 < pre < 6, else everywhere."""
    zero, six = ir.Constant(_F32X16, [0.0] * LANES), ir.Constant(_F32X16, [6.0] * LANES)
    above = builder.fcmp_ordered(">", pre, zero)
    inside = builder.and_(above, builder.fcmp_ordered("<", pre, six))
    is1 = builder.icmp_signed("==", act, ir.Constant(act.type, 1))
    is2 = builder.icmp_signed("==", act, ir.Constant(act.type, 2))
    every = ir.Constant(_I1X16, [1] * LANES)
    return builder.select(is1, above, builder.select(is2, inside, every))


def load_first(builder: ir.IRBuilder, ptr, at: ir.Value, count: ir.Value,
               lanes: int = LANES) -> ir.Value:
    """For intrinsics: ptr[at:at + count] (count <= 16) as a vector of 16 (`lanes`)
    float32, zeros in the other lanes, whose values are not read (a masked load)."""
    load, _ = _masked_load_store(builder, ptr, ptr, lanes)
    zeros = ir.Constant(ir.VectorType(ir.FloatType(), lanes), [0.0] * lanes)
    return builder.call(load, [builder.gep(ptr, [at]), ir.Constant(_I32, 4),
                               first_lanes(builder, count, lanes), zeros])


def first_lanes(builder: ir.IRBuilder, count: ir.Value, lanes: int = LANES) -> ir.Value:
    # the mask of lanes j < count (count <= 16), as the lane numbers compared with count
    # (a vector compare on either ISA); an i16 of count low bits bitcast to the mask is one
    # move into a mask register on AVX-512 but a test and an insert a lane on AVX2
    numbers = ir.VectorType(_I32, lanes)
    splat = builder.insert_element(ir.Constant(numbers, None), builder.trunc(count, _I32),
                                   ir.Constant(_I32, 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(numbers, [0] * lanes))
    return builder.icmp_unsigned("<", ir.Constant(numbers, list(range(lanes))), splat)


@njit(inline="always", cache=True)
def move(src, src_at, n, dst, dst_at, m):
    """dst[dst_at + j] = src[src_at + j] for j < n, 0.0 for n <= j < m (n <= m; flat
    float32 arrays, unsigned offsets), 16 values a `copy16`."""
    lanes = np.uint64(LANES)
    for j in range(np.uint64(0), m, lanes):
        k = min(lanes, m - j)
        copy16(src, src_at + j, min(k, n - j) if n > j else np.uint64(0), dst, dst_at + j, k)


@njit(inline="always", cache=True)
def into_plane(src, src_at, dst, at, h, w, wq, ph, pw, plane):
    """An H x W map (src from src_at, rows W apart) written as a stride-1 phase plane at
    `at` in dst (`_planes.PhasePlanes`: Wq wide, the map padded by (ph, pw), `plane`
    long, zeros around): each row's span of Wq values with its right padding and the next
    row's left (`move`), then the zeros above and below. The caller sees that (ph + H) *
    Wq + pw <= plane."""
    wu, wqu, zero = np.uint64(w), np.uint64(wq), np.uint64(0)
    first = np.uint64(ph * wq + pw)  # row 0, column 0
    move(src, zero, zero, dst, at, first)
    for r in range(h):
        move(src, src_at + np.uint64(r) * wu, wu, dst, at + first + np.uint64(r) * wqu, wqu)
    end = first + np.uint64(h) * wqu
    move(src, zero, zero, dst, at + end, np.uint64(plane) - end)
