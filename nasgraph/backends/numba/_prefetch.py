"""Software prefetch, for kernels whose order of reads the hardware's prefetcher does not
follow: a run of a tensor read a few values at a time, a sample (thousands of values)
apart, one sample after the other (`_pointwise_wgrad`'s tiles, `_depthwise_lanes`' blocks
of 16 samples, `_pointwise`'s tiles, `_batchnorm`'s channel walk). `prefetch_run` asks
for every cache line of such a run before the kernel reads it; the loads then find the
values in cache rather than wait for memory each. With `write`, it does the same for a
run the kernel is about to write, which a store would otherwise read from memory first.
`prefetch_lines` asks for such a run a few lines at a time.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LINE = 16  # float32 values a cache line (64 bytes)
_I32 = ir.IntType(32)


def _prefetch_codegen(write: int):
    # LLVM's `prefetch` of a[at]: read (0) or write (1), the highest locality, data
    def codegen(context, builder, signature, args):
        ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [i8p, _I32, _I32, _I32]), "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(builder.gep(ptr, [args[1]]), i8p),
                          ir.Constant(_I32, write), ir.Constant(_I32, 3),
                          ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return codegen


@intrinsic
def prefetch(typingctx, a, at):
    """Asks for the cache line of a[at] (flat float32, unsigned offset) to be read into
    every level of cache: LLVM's `prefetch` (read, the highest locality, data), which
    neither faults nor waits."""
    return types.void(a, types.uint64), _prefetch_codegen(0)


@intrinsic
def prefetch_to_write(typingctx, a, at):
    """`prefetch` of a line the kernel is about to write (`prefetchw` on x86): asked for
    in a state it may write, so that the store does not wait to read it first."""
    return types.void(a, types.uint64), _prefetch_codegen(1)


@njit(inline="always", cache=True)
def _ask(a, at, write):
    # one line, to read or to write
    if write:
        prefetch_to_write(a, at)
    else:
        prefetch(a, at)


@njit(inline="always", cache=True)
def prefetch_run(a, start, count, write=False):
    """Asks for every cache line of a[start:start + count] (flat float32, count > 0); with
    `write`, in a state the kernel may write (`prefetch_to_write`)."""
    for i in range(start, start + count, LINE):
        _ask(a, np.uint64(i), write)
    _ask(a, np.uint64(start + count - 1), write)  # the last line, where start is not on one


@njit(inline="always", cache=True)
def prefetch_lines(a, start, line, end, count, write=False):
    """Asks for up to `count` cache lines of the run from a[start], from its `line`-th on,
    none at or past a[end]: a run asked for a few lines at a time, spread over a kernel's
    work (`prefetch_run`'s `write`). Returns the number of the next line to ask for."""
    for _ in range(count):
        at = start + np.uint64(line * LINE)
        if at >= end:
            break
        _ask(a, at, write)
        line += 1
    return line
