"""Sums of matrix products over a batch, accumulated by BLAS itself: sgemm with beta = 1,
called from numba, one call a sample (`summed_products`).

numpy's batched `matmul` writes each sample's product (N x M x K values), which a second
pass then sums: for a 1x1 conv's weight gradient on 4x4 to 14x14 maps that is a tensor of
the weight's size a sample, written and read once, for products of depth H*W only. sgemm
with beta = 1 adds each product into one M x K block that stays in cache. The sgemm is the
one numba's own `np.dot` calls, scipy's (`scipy.linalg.cython_blas`, the Fortran
interface: every argument by reference, matrices column-major), passed to the kernel as
an argument (`SGEMM`), so that the compiled kernel is cached like the others (a ctypes
function read as a global would be compiled in with its address, which differs between
processes). docs/numba.md, "1x1 convs as batched matmuls".
"""

from __future__ import annotations

import ctypes

import numpy as np
from numba import njit
from numba.extending import get_cython_function_address

_P = ctypes.c_void_p
# scipy's Fortran sgemm: transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc
SGEMM = ctypes.CFUNCTYPE(None, *[_P] * 13)(
    get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))


@njit(cache=True)
def summed_products(sgemm, a, b, chunk):
    """The sum over samples s of a[s] @ b[s].T (a: S x M x K, b: S x N x K, float32,
    C-contiguous) as an M x N float64 array: each run of `chunk` samples summed in
    float32 by sgemm (beta = 1, in sample order, as numpy's float32 sum of the products
    would), the runs in float64. `sgemm`: `SGEMM`."""
    samples, m, k = a.shape
    n = b.shape[1]
    # row-major out[m, n] is column-major out.T (n x m) = b[s] (column-major k x n,
    # transposed) times a[s].T (column-major k x m)
    flags = np.array([ord("T"), ord("N")], np.uint8)
    dims = np.array([n, m, k, k, k, n], np.int32)  # m, n, k, lda, ldb, ldc (Fortran's)
    one = np.ones(1, np.float32)
    part = np.zeros((m, n), np.float32)
    total = np.zeros((m, n))
    a1, b1 = a.reshape(a.size), b.reshape(b.size)
    for s in range(samples):
        sgemm(flags[0:].ctypes, flags[1:].ctypes, dims[0:].ctypes, dims[1:].ctypes,
              dims[2:].ctypes, one.ctypes, b1[s * n * k:].ctypes, dims[3:].ctypes,
              a1[s * m * k:].ctypes, dims[4:].ctypes, one.ctypes, part.ctypes,
              dims[5:].ctypes)
        if (s + 1) % chunk == 0 or s == samples - 1:
            total += part
            part[:] = 0.0
    return total
