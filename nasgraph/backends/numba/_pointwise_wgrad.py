"""The weight gradient of a 1x1 conv in NCHW as register tiles: dW = Σ over samples n of
dY[n] · x[n]ᵀ, a sample's planes (Cout x P and Cin x P) both operands as they lie.

`_blas.summed_products` calls sgemm once a sample; on a search candidate's products
(8-128 channels, a depth of 16-196 pixels) OpenBLAS spends much of each call packing
them. Here a tile is 4 output x 3 input channels: 12 of AVX2's 16 vector registers of
sums, each the products of one pair of rows 8 pixels at a time. For each vector of
pixels it loads the 4 rows of dY and the 3 of x (7 loads for 12 fused multiply-adds),
over every sample of a run before it sums its lanes. A plane's pixels past its whole
vectors go in one vector ending at its last pixel, whose lanes counted already are
zeroed in x's rows; the last block of output (input) channels ends at the last channel,
which computes some sums twice and stores the same values.

The sums follow the other weight gradients' convention: float32 over a run of `chunk`
samples, the runs added in float64. Before a run's tiles, its dY and x (each one
contiguous run of memory) are prefetched line by line (`_prefetch`): the tiles' own
order jumps a sample a row, which the hardware's prefetcher does not follow.
`_conv_matmul.pointwise_wgrad_tiles` says where it runs.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from nasgraph.backends.numba._masked import first_lanes
from nasgraph.backends.numba._outer import WIDTH, vector_ptr
from nasgraph.backends.numba._prefetch import prefetch_run

ROWS, COLS = 4, 3  # output channels (dY's rows) x input channels (x's rows) a tile
MIN_PIXELS = WIDTH  # the tail vector ends at the last pixel: planes of a vector at least
_F32X8 = ir.VectorType(ir.FloatType(), WIDTH)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _c(i: int) -> ir.Constant:
    return ir.Constant(_I64, i)


def _vector_at(builder: ir.IRBuilder, base, at) -> ir.Value:
    return builder.load(vector_ptr(builder, base, at), align=4)


def _lane_sum(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    # the 8 lanes of v added: halves, then quarters, then the last two
    def lanes(u, *which):
        return builder.shuffle_vector(u, u, ir.Constant(ir.VectorType(_I32, len(which)),
                                                        list(which)))
    v4 = builder.fadd(lanes(v, 0, 1, 2, 3), lanes(v, 4, 5, 6, 7))
    v2 = builder.fadd(lanes(v4, 0, 1), lanes(v4, 2, 3))
    return builder.fadd(builder.extract_element(v2, ir.Constant(_I32, 0)),
                        builder.extract_element(v2, ir.Constant(_I32, 1)))


@intrinsic
def _tile(typingctx, a, a_at, b, b_at, p, samples, a_step, b_step, dst, d_at, d_row):
    """dst[d_at + r * d_row + c] = Σ over samples s < `samples` and pixels j < p of
    a[a_at + s * a_step + r * p + j] * b[b_at + s * b_step + c * p + j], r < ROWS,
    c < COLS (flat float32 arrays, unsigned offsets; p >= 8). No bounds are checked."""
    sig = types.void(a, types.uint64, b, types.uint64, types.uint64, types.uint64,
                     types.uint64, types.uint64, dst, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        a_ptr, b_ptr, d_ptr = (context.make_array(signature.args[k])(
            context, builder, args[k]).data for k in (0, 2, 8))
        _, a_at, _, b_at, p, samples, a_step, b_step, _, d_at, d_row = args
        zero = ir.Constant(_F32X8, [0.0] * WIDTH)
        sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(COLS)]
                for _ in range(ROWS)]
        flags = ("contract",)
        full, tail = builder.udiv(p, _c(WIDTH)), builder.urem(p, _c(WIDTH))
        # the tail vector ends at the last pixel: its lanes past the first 8 - tail are new
        new = builder.not_(first_lanes(builder, builder.sub(_c(WIDTH), tail), WIDTH))

        def products(a0, b0, mask=None):
            # 4 rows of a times 3 of b from a0 and b0, into the sums
            av = [_vector_at(builder, a_ptr, builder.add(a0, builder.mul(p, _c(r))))
                  for r in range(ROWS)]
            bv = [_vector_at(builder, b_ptr, builder.add(b0, builder.mul(p, _c(c))))
                  for c in range(COLS)]
            if mask is not None:
                bv = [builder.select(mask, v, zero) for v in bv]
            for r in range(ROWS):
                for c in range(COLS):
                    builder.store(builder.fadd(builder.load(sums[r][c]), builder.fmul(
                        av[r], bv[c], flags=flags), flags=flags), sums[r][c])

        with cgutils.for_range(builder, samples) as sample:
            a_s = builder.add(a_at, builder.mul(sample.index, a_step))
            b_s = builder.add(b_at, builder.mul(sample.index, b_step))
            with cgutils.for_range(builder, full) as vector:
                q = builder.mul(vector.index, _c(WIDTH))
                products(builder.add(a_s, q), builder.add(b_s, q))
            with builder.if_then(builder.icmp_unsigned("!=", tail, _c(0))):
                q = builder.sub(p, _c(WIDTH))
                products(builder.add(a_s, q), builder.add(b_s, q), new)
        for r in range(ROWS):
            for c in range(COLS):
                at = builder.add(d_at, builder.add(builder.mul(d_row, _c(r)), _c(c)))
                builder.store(_lane_sum(builder, builder.load(sums[r][c])),
                              builder.gep(d_ptr, [at]))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def weight_grad(gy, x, chunk):
    """Σ over samples n of gy[n] @ x[n].T as a Cout x Cin float64 array (gy: N x Cout x
    P, x: N x Cin x P, float32, C-contiguous; P >= MIN_PIXELS, Cout >= ROWS, Cin >=
    COLS): each run of `chunk` samples summed in float32 by the tiles, the runs in
    float64. On the calling thread."""
    n, cout, p = gy.shape
    cin = x.shape[1]
    g1, x1 = gy.reshape(gy.size), x.reshape(x.size)
    total = np.zeros((cout, cin))
    part = np.empty((cout, cin), np.float32)
    part1 = part.reshape(part.size)
    pu, g_step, x_step = np.uint64(p), np.uint64(cout * p), np.uint64(cin * p)
    for s0 in range(0, n, chunk):
        count = min(chunk, n - s0)
        prefetch_run(g1, s0 * cout * p, count * cout * p)
        prefetch_run(x1, s0 * cin * p, count * cin * p)
        for c0 in range(0, cout, ROWS):
            cb = min(c0, cout - ROWS)  # the last block ends at the last channel
            for k0 in range(0, cin, COLS):
                kb = min(k0, cin - COLS)
                _tile(g1, np.uint64((s0 * cout + cb) * p), x1, np.uint64((s0 * cin + kb) * p),
                      pu, np.uint64(count), g_step, x_step, part1, np.uint64(cb * cin + kb),
                      np.uint64(cin))
        total += part
    return total
