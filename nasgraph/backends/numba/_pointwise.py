"""1x1 convs in NCHW as register tiles: out[n] = W · x[n], a sample's planes the
product's right operand as they lie.

numpy's batched matmul runs one sgemm a sample (`_conv_matmul.pointwise_forward`); on the
small products of a search candidate's 1x1 convs (8-128 channels, 16-196 pixels) OpenBLAS
spends much of each call packing its operands. Here a tile is 4 output channels x 3
vectors of 8 pixels, 12 of AVX2's 16 vector registers of sums: for each input channel it
loads the 24 pixels of its plane once, broadcasts the 4 weights, and adds 12 products
(LLVM IR, as `_strided_dx`'s tiles). A plane's pixels past its whole tiles of 24 go in one
tile of 3, 2 or 1 vectors ending at its last pixel, which computes some pixels twice and
stores the same values; the last block of 4 channels likewise ends at the last channel.
The same kernel computes the input gradient, Wᵀ · dY. `_conv_matmul.pointwise_tiles`
says where it runs.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

WIDTH = 8  # float32 lanes of a vector: 256 bits
ROWS = 4  # output channels a tile
_F32X8 = ir.VectorType(ir.FloatType(), WIDTH)
_I64 = ir.IntType(64)
MIN_PIXELS = WIDTH  # planes of fewer pixels than a vector stay with numpy


def _splat(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    one = builder.insert_element(ir.Constant(_F32X8, None), value, ir.Constant(_I64, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32),
                                                                      WIDTH), [0] * WIDTH))


def _vector(builder: ir.IRBuilder, base, at) -> ir.Value:
    return builder.bitcast(builder.gep(base, [at]), _F32X8.as_pointer())


def _tile_intrinsic(n_vectors: int):
    """`tile4x{n_vectors}`: 4 output channels x n_vectors vectors of pixels."""

    def tile(typingctx, x, x_at, plane, count, w, w_at, out, o_at):
        sig = types.void(x, types.uint64, types.uint64, types.uint64, w, types.uint64, out,
                         types.uint64)

        def codegen(context, builder, signature, args):
            x_ptr, w_ptr, o_ptr = (context.make_array(signature.args[k])(
                context, builder, args[k]).data for k in (0, 4, 6))
            _, x_at, plane, count, _, w_at, _, o_at = args
            zero = ir.Constant(_F32X8, [0.0] * WIDTH)
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(n_vectors)]
                    for _ in range(ROWS)]
            flags = ("contract",)
            with cgutils.for_range(builder, count) as loop:
                c = loop.index  # the input channel
                x_c = builder.add(x_at, builder.mul(c, plane))
                xs = [builder.load(_vector(builder, x_ptr, builder.add(
                    x_c, ir.Constant(_I64, v * WIDTH))), align=4) for v in range(n_vectors)]
                for k in range(ROWS):
                    w_k = builder.add(builder.add(w_at, builder.mul(ir.Constant(_I64, k),
                                                                    count)), c)
                    wv = _splat(builder, builder.load(builder.gep(w_ptr, [w_k])))
                    for v in range(n_vectors):
                        acc = sums[k][v]
                        builder.store(builder.fadd(builder.load(acc), builder.fmul(
                            wv, xs[v], flags=flags), flags=flags), acc)
            for k in range(ROWS):
                o_k = builder.add(o_at, builder.mul(ir.Constant(_I64, k), plane))
                for v in range(n_vectors):
                    builder.store(builder.load(sums[k][v]), _vector(builder, o_ptr, builder.add(
                        o_k, ir.Constant(_I64, v * WIDTH))), align=4)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"tile4x{n_vectors}"
    return intrinsic(tile)


# tile4xV(x, x_at, plane, count, w, w_at, out, o_at): out[o_at + k * plane + j] = the sum
# over c < count of w[w_at + k * count + c] * x[x_at + c * plane + j], k < 4, j < 8V (flat
# float32 arrays, unsigned offsets: w's rows count values long, x's and out's planes
# `plane` apart). No bounds are checked.
tile4x1, tile4x2, tile4x3 = (_tile_intrinsic(v) for v in (1, 2, 3))


@njit(inline="always", cache=True)
def _tiles(x1, xa, p, cin, w1, wa, o1, oa, at, n_vectors):
    # the tile of n_vectors vectors from pixel `at` of a plane p pixels long
    q, pu, cu = np.uint64(at), np.uint64(p), np.uint64(cin)
    if n_vectors == 3:
        tile4x3(x1, xa + q, pu, cu, w1, wa, o1, oa + q)
    elif n_vectors == 2:
        tile4x2(x1, xa + q, pu, cu, w1, wa, o1, oa + q)
    else:
        tile4x1(x1, xa + q, pu, cu, w1, wa, o1, oa + q)


@njit(parallel=True, cache=True)
def pointwise(x, w, out, threads):
    """out[n] = w · x[n] for the samples of x (N x Cin x P, P >= 8 pixels; C-contiguous
    of any shape), w (Cout x Cin, Cout >= 4), out (N x Cout x P). Each thread its share
    of the samples."""
    n_batch, cin = x.shape[0], x.shape[1]
    cout = w.shape[0]
    p = x[0].size // cin
    x1, w1, o1 = x.reshape(x.size), w.reshape(w.size), out.reshape(out.size)
    full = p // 24 * 24
    rest = p - full
    for t in prange(threads):
        for s in range(t * n_batch // threads, (t + 1) * n_batch // threads):
            for c0 in range(0, cout, ROWS):
                cb = min(c0, cout - ROWS)
                xa = np.uint64(s * cin * p)
                wa = np.uint64(cb * cin)
                oa = np.uint64((s * cout + cb) * p)
                for p0 in range(0, full, 24):
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p0, 3)
                # the pixels left: tiles ending at the last pixel, starting at or after 0
                if rest > 16 and p >= 24:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 24, 3)
                elif rest > 16:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, 0, 2)
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 8, 1)
                elif rest > 8 and p >= 16:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 16, 2)
                elif rest > 8:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, 0, 1)
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 8, 1)
                elif rest > 0:
                    _tiles(x1, xa, p, cin, w1, wa, o1, oa, p - 8, 1)
