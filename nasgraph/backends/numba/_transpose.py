"""A 16 x 16 block of float32 transposed in vector registers (`transpose16`): how the
kernels that write NCHW tensors into the NHWC layout of the tiled convs move 16 channels
x 16 pixels at a time.

Numba has no vector shuffles, and value by value LLVM moves planes into pixels with
gathers of 8 values (a 64-bit index each). `transpose16` is written as LLVM IR
(`numba.extending.intrinsic`): it loads 16 rows of 16 values, permutes them in 64
two-vector shuffles (four rounds that swap the off-diagonal halves of each block: 8 x 8,
then 4 x 4, 2 x 2, 1 x 1) and stores 16 rows. LLVM lowers the shuffles for the CPU it
compiles for (`vpermt2ps` on AVX-512; the tests also pass compiled for AVX2, with
NUMBA_CPU_NAME=haswell). In L1, 15.6 ns a block on an AVX-512 Xeon, one thread: 65 GB/s
read.

BatchNorm's passes that write their output or dx straight into the padded NHWC a tiled
conv reads use it (`_batchnorm_nhwc.batchnorm_out_padded_nhwc`,
`batchnorm_dx_padded_nhwc`). A plain NCHW -> NHWC copy built on it was faster alone
(0.72-0.94x on resnet20's tensors) but not in a training step (1.01x): the copy is bound
by memory there (docs/numba.md, "BatchNorm writes what the conv reads").

`store_columns8` (and its twins of 4 and 2 rows) does the same the other way round, for
the tiled convs' NCHW outputs: a tile of 8 pixels x 16 channels, its columns written as
a channel's 8 pixels, by those of the rounds that swap blocks smaller than 8 (docs/numba.md,
"The tiles' NCHW epilogue in registers"); `store_columns8x8` and its twins for tiles of
8 channels. `pixels8` and `pixels16` copy fewer than 8 (16) channels of NCHW planes into
NHWC, 8 (16) pixels at a time, each pixel's vector stored whole (`_tiled.to_padded_nhwc`).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nasgraph.backends.numba._masked import load_first

BLOCK = 16  # a transposed block: BLOCK x BLOCK values
_F32X16 = ir.VectorType(ir.FloatType(), BLOCK)
_I32X16 = ir.VectorType(ir.IntType(32), BLOCK)
_I64 = ir.IntType(64)


def _swap_masks(width: int = BLOCK) -> list[tuple[int, ir.Constant, ir.Constant]]:
    # for each half-size h = width / 2, ..., 2, 1: the shuffles that swap, between rows i
    # and i + h (i & h == 0), the values of row i at columns j + h with those of row i + h
    # at columns j (j & h == 0), rows of `width` values; a mask indexes the two rows'
    # 2 * width values, row i's first
    masks, lanes = [], ir.VectorType(ir.IntType(32), width)
    for h in (8, 4, 2, 1)[(BLOCK // width).bit_length() - 1:]:
        low = [j if not j & h else width + j - h for j in range(width)]
        high = [j + h if not j & h else width + j for j in range(width)]
        masks.append((h, ir.Constant(lanes, low), ir.Constant(lanes, high)))
    return masks


@intrinsic
def transpose16(typingctx, src, src_at, src_step, dst, dst_at, dst_step):
    """Writes the 16 x 16 block src[src_at + i * src_step + j] (i, j < 16; flat float32
    arrays, unsigned offsets) transposed: its column j as the 16 consecutive values at
    dst_at + j * dst_step. Rows are loaded and stored unaligned; no bounds are
    checked."""
    sig = types.void(src, types.uint64, types.uint64, dst, types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        s_ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
        d_ptr = context.make_array(signature.args[3])(context, builder, args[3]).data
        s_at, s_step, _, d_at, d_step = args[1:]
        rows = transposed(builder, load_rows(builder, s_ptr, s_at, s_step))
        for j, row in enumerate(rows):
            _store(builder, d_ptr, builder.add(d_at, builder.mul(d_step, _index(j))), row)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def transpose16_to(typingctx, src, src_at, src_step, dst, dst_at, places, first):
    """`transpose16` with each column stored where `places` says: the 16 x 16 block
    src[src_at + i * src_step + j] transposed, column j as the 16 consecutive values at
    dst[dst_at + places[first + j]] (flat float32 arrays, places int64, unsigned
    offsets): 16 pixels of 16 samples or channels into a layout whose rows are padded
    (`_depthwise_lanes`). No bounds are checked."""
    sig = types.void(src, types.uint64, types.uint64, dst, types.uint64, places,
                     types.uint64)

    def codegen(context, builder, signature, args):
        s_ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
        d_ptr = context.make_array(signature.args[3])(context, builder, args[3]).data
        p_ptr = context.make_array(signature.args[5])(context, builder, args[5]).data
        s_at, s_step, _, d_at, _, first = args[1:]
        store_at_places(builder, d_ptr, d_at, p_ptr, first,
                        transposed(builder, load_rows(builder, s_ptr, s_at, s_step)))
        return context.get_dummy_value()

    return sig, codegen


def load_rows(builder: ir.IRBuilder, s_ptr, s_at, s_step) -> list[ir.Value]:
    """The 16 rows s_ptr[s_at + i * s_step:+16] (LLVM vectors of 16 float32)."""
    return [_load(builder, s_ptr, builder.add(s_at, builder.mul(s_step, _index(i))))
            for i in range(BLOCK)]


def transposed(builder: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """16 rows of 16 float32 (8 of 8) transposed: row j of the result is column j, after
    the four (three) rounds of swaps. For intrinsics that compute their rows before they
    move them (`_batchnorm_nhwc`, `pixels16`)."""
    rows = list(rows)
    for h, low, high in _swap_masks(len(rows)):
        for i in range(len(rows)):
            if not i & h:
                a, b = rows[i], rows[i + h]
                rows[i] = builder.shuffle_vector(a, b, low)
                rows[i + h] = builder.shuffle_vector(a, b, high)
    return rows


def store_at_places(builder: ir.IRBuilder, d_ptr, d_at, p_ptr, first, rows,
                    count: ir.Value | None = None) -> None:
    """Stores rows[j] at d_ptr[d_at + p_ptr[first + j]] (p_ptr int64): a transposed
    block's columns, each where an array of places says (`transpose16_to`); with
    `count`, only those j < count."""
    for j, row in enumerate(rows):
        if count is None:
            _store_at_place(builder, d_ptr, d_at, p_ptr, first, j, row)
            continue
        with builder.if_then(builder.icmp_unsigned("<", _index(j), count), likely=True):
            _store_at_place(builder, d_ptr, d_at, p_ptr, first, j, row)


def _store_at_place(builder: ir.IRBuilder, d_ptr, d_at, p_ptr, first, j: int, row) -> None:
    at = builder.load(builder.gep(p_ptr, [builder.add(first, _index(j))]))
    _store(builder, d_ptr, builder.add(d_at, at), row)


def _index(i: int) -> ir.Constant:
    return ir.Constant(_I64, i)


def _load(builder: ir.IRBuilder, base, at, vector: ir.VectorType = _F32X16) -> ir.Value:
    # 16 float32 (or `vector`'s) from base[at], unaligned
    return builder.load(builder.bitcast(builder.gep(base, [at]), vector.as_pointer()),
                        align=4)


def _store(builder: ir.IRBuilder, base, at, row: ir.Value) -> None:
    # a vector (of any width) at base[at], unaligned
    builder.store(row, builder.bitcast(builder.gep(base, [at]), row.type.as_pointer()),
                  align=4)


def _columns_intrinsic(rows: int, width: int = BLOCK):
    """`store_columns{rows}`: a rows x 16 block (rows of `COLUMN_ROWS`) written
    transposed; `store_columns{rows}x8` the same of a rows x 8 block."""
    vector = ir.VectorType(ir.FloatType(), width)

    def store_columns(typingctx, src, src_at, src_step, dst, dst_at, dst_step, n):
        if not (isinstance(src, types.Array) and src.dtype == types.float32
                and src.layout == "C" and isinstance(dst, types.Array)
                and dst.dtype == types.float32 and dst.ndim == 1):
            return None  # numba then names the arguments it could not type
        sig = types.void(src, types.uint64, types.uint64, dst, types.uint64, types.uint64,
                         types.uint64)

        def codegen(context, builder, signature, args):
            s_ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
            d_ptr = context.make_array(signature.args[3])(context, builder, args[3]).data
            s_at, s_step, _, d_at, d_step, n = args[1:]
            block = [_load(builder, s_ptr, builder.add(s_at, builder.mul(s_step, _index(i))),
                           vector) for i in range(rows)]
            for h, low, high in _swap_masks(width):
                for i in range(rows if h < rows else 0):
                    if not i & h:
                        a, b = block[i], block[i + h]
                        block[i] = builder.shuffle_vector(a, b, low)
                        block[i + h] = builder.shuffle_vector(a, b, high)
            for j in range(width):  # column j: row j % rows, lanes from j // rows * rows
                first = j // rows * rows
                lanes = ir.Constant(ir.VectorType(ir.IntType(32), rows),
                                    list(range(first, first + rows)))
                values = builder.shuffle_vector(block[j % rows], block[j % rows], lanes)
                with builder.if_then(builder.icmp_unsigned("<", _index(j), n), likely=True):
                    _store(builder, d_ptr, builder.add(d_at, builder.mul(d_step, _index(j))),
                           values)
            return context.get_dummy_value()

        return sig, codegen

    store_columns.__name__ = f"store_columns{rows}" + ("" if width == BLOCK else f"x{width}")
    return intrinsic(store_columns)


# store_columnsR(src, src_at, src_step, dst, dst_at, dst_step, n): writes the R x 16 block
# src[src_at + i * src_step + j] (i < R, j < 16) transposed, for its first n columns (n <=
# 16): column j as the R consecutive values at dst_at + j * dst_step (float32 arrays,
# unsigned offsets; src C-contiguous of any rank, read flat: a tile needs no reshape, which
# would count references in the kernel's loop). A conv tile's R pixels x 16 channels,
# written into N x C x H x W where a channel's R pixels are consecutive values. The rows
# are transposed in registers by `transpose16`'s rounds that swap blocks smaller than R,
# on the 16 / R blocks of R columns at once: row i then holds column i of each. No bounds
# are checked. store_columnsRx8 does the same with R x 8 blocks (n <= 8), 8 channels a
# tile row (`_tiled_narrow`'s tiles), the rows of 8 values.
COLUMN_ROWS = (8, 4, 2)  # the row counts of the `store_columns` intrinsics
COLUMN_WIDTHS = (BLOCK, 8)  # the channels a tile row holds, to which they apply
store_columns8, store_columns4, store_columns2 = map(_columns_intrinsic, COLUMN_ROWS)
store_columns8x8, store_columns4x8, store_columns2x8 = (
    _columns_intrinsic(rows, 8) for rows in COLUMN_ROWS)


def _pixels_intrinsic(width: int):
    """`pixels{width}`: up to `width` channels x `width` pixels of NCHW planes written
    as pixels of channels."""
    zero = ir.Constant(ir.VectorType(ir.FloatType(), width), [0.0] * width)

    def pixels(typingctx, src, src_at, src_step, channels, count, dst, dst_at, dst_step):
        if not (isinstance(src, types.Array) and src.dtype == types.float32
                and src.ndim == 1 and isinstance(dst, types.Array)
                and dst.dtype == types.float32 and dst.ndim == 1):
            return None  # numba then names the arguments it could not type
        sig = types.void(src, types.uint64, types.uint64, types.uint64, types.uint64, dst,
                         types.uint64, types.uint64)

        def codegen(context, builder, signature, args):
            s_ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
            d_ptr = context.make_array(signature.args[5])(context, builder, args[5]).data
            s_at, s_step, channels, count, _, d_at, d_step = args[1:]
            last = builder.sub(channels, _index(1))
            rows = []
            for i in range(width):  # rows past the channels: zeros, their loads in bounds
                inside = builder.icmp_unsigned("<", _index(i), channels)
                at = builder.add(s_at, builder.mul(s_step, builder.select(inside, _index(i),
                                                                          last)))
                row = load_first(builder, s_ptr, at, count, width)
                rows.append(builder.select(inside, row, zero))
            # in order of j: each pixel's zeros may fall on the next's values
            for j, row in enumerate(transposed(builder, rows)):
                with builder.if_then(builder.icmp_unsigned("<", _index(j), count),
                                     likely=True):
                    _store(builder, d_ptr, builder.add(d_at, builder.mul(d_step, _index(j))),
                           row)
            return context.get_dummy_value()

        return sig, codegen

    pixels.__name__ = f"pixels{width}"
    return intrinsic(pixels)


# pixelsW(src, src_at, src_step, channels, count, dst, dst_at, dst_step): of the planes
# src[src_at + i * src_step:] (i < channels <= W), pixels j < count <= W written as
# pixels: dst[dst_at + j * dst_step + i] = src[src_at + i * src_step + j], each pixel's W
# values stored whole, those past the channels zeros (float32 arrays, unsigned offsets).
# A pixel's store so writes W - channels zeros past its channels, over the next pixel's
# (stored after it) or whatever follows. An NCHW -> NHWC copy of fewer than W channels
# (`_tiled.to_padded_nhwc`): W x W loaded (masked to count; rows past the channels read
# the last channel's, then zeroed), transposed in registers as `transpose16`. No bounds
# are checked.
pixels8, pixels16 = _pixels_intrinsic(8), _pixels_intrinsic(BLOCK)
