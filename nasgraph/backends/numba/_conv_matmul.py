"""Convolutions trained as plain matrix products over the batch, by BLAS, where the conv
kernels do little: convs onto small maps as dense layers of their unrolled weight, one a
group (`dense`), and 1x1 convs as one matrix product a sample (`batched_pointwise`).
`_conv_rules` decides when; docs/numba.md, "Tiny maps as dense layers" and "1x1 convs as
batched matmuls"."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit

from nasgraph.backends.numba import _backward_conv as conv_b
from nasgraph.backends.numba import _blas as blas_k
from nasgraph.backends.numba import _pointwise as pointwise_k
from nasgraph.backends.numba import _pointwise_wgrad as pointwise_wgrad_k
from nasgraph.backends.numba import _tiled as tiled_k


class Dense(NamedTuple):
    """What a conv run as a dense layer (`dense_forward`) keeps for its backward: its
    input, and its weight unrolled into the dense layer's matrix, one a group."""

    x: np.ndarray
    wd: np.ndarray  # G x Cout/G*Ho*Wo x Cin/G*H*W


# a conv runs as a dense layer only where its unrolled weight has at most this many values
# a group
DENSE_MAX_VALUES = 1 << 22  # 16 MiB
# a grouped conv runs as a dense layer where the dense layer's multiply-adds are at most
# this many times the conv's (the taps that read inside the map)
DENSE_GROUPED_WORK = 3


def dense(op, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """Whether a conv trains as a dense layer of its unrolled weight (`unrolled`), one a
    group: a spatial kernel, not depthwise, (ungrouped) onto fewer pixels than a tile of
    the tiled kernels (`tiled_k.R`), which run it as an im2col GEMM of a few columns a
    sample, or (grouped) where the dense layer does at most DENSE_GROUPED_WORK times the
    conv's multiply-adds, in place of the phase planes' grouped tiles. On 2x2 maps a 3x3
    kernel reads 4 of its 9 taps inside the map, and the dense layer multiplies only
    those; its GEMM spans the batch. Measured on an AVX-512 Xeon, one thread, batch 128
    (docs/numba.md, "Tiny maps as dense layers"): 88 -> 88 channels on 2x2 maps took 0.18x
    the im2col GEMM's time forward and 0.13x backward, 20 -> 88 from 4x4 at stride 2
    0.53x and 0.47x; grouped, 64 channels in 4 groups, forward and backward together, on
    2x2 maps 0.06x the planes' time, on 4x4 (2.56 times the work) 0.66x, from 7x7 at
    stride 2 (7.8 times) 0.97x."""
    cout, po = out_shape[1], out_shape[2] * out_shape[3]
    cin, pi = x_shape[1], x_shape[2] * x_shape[3]
    g = op.groups
    cog, cig = cout // g, cin // g
    if op.kernel == (1, 1) or cig == 1 or cog * po * cig * pi > DENSE_MAX_VALUES:
        return False
    if g == 1:
        return po < tiled_k.R
    taps = unrolled(1, 1, x_shape[2:], out_shape[2:], op.kernel, op.stride, op.pad,
                    op.dilation)[0].size  # (output pixel, tap) pairs inside the map
    return po * pi <= DENSE_GROUPED_WORK * taps


@functools.lru_cache(maxsize=256)
def unrolled(cout: int, cin: int, x_hw: tuple[int, int], out_hw: tuple[int, int],
             kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
             dilation: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Where a conv's weights sit in its dense matrix: value src[k] of the flat weight
    (Cout x Cin x kh x kw) is entry dst[k] of the flat Cout*Ho*Wo x Cin*H*W matrix, for
    every output pixel, input channel and tap that reads inside the map (the padding's
    taps read zeros, and have no entry; where every tap does, the matrix is zeros and
    there are none). Cached per geometry: not to be written."""
    (h, w), (ho, wo), (kh, kw) = x_hw, out_hw, kernel
    taps = [(oh * wo + ow, ih * w + iw, i * kw + j)
            for oh in range(ho) for ow in range(wo) for i in range(kh) for j in range(kw)
            if 0 <= (ih := oh * stride[0] - pad[0] + i * dilation[0]) < h
            and 0 <= (iw := ow * stride[1] - pad[1] + j * dilation[1]) < w]
    if not taps:
        none = np.zeros(0, np.int64)
        return none, none
    p, q, t = (np.array(a, np.int64) for a in zip(*taps, strict=True))
    co = np.arange(cout, dtype=np.int64).reshape(-1, 1, 1)
    ci = np.arange(cin, dtype=np.int64).reshape(1, -1, 1)
    dst = ((co * (ho * wo) + p) * (cin * h * w) + ci * (h * w) + q).ravel()
    src = ((co * cin + ci) * (kh * kw) + t).ravel()
    return dst, src


@njit(cache=True)
def scatter(wd, w, dst, src):
    """wd[dst[k]] = w[src[k]] (flat arrays)."""
    for k in range(dst.size):
        wd[dst[k]] = w[src[k]]


@njit(cache=True)
def gather_add(gw, gwd, dst, src):
    """gw[src[k]] += gwd[dst[k]] (flat arrays): each weight's sum over the pixels it
    joins."""
    for k in range(dst.size):
        gw[src[k]] += gwd[dst[k]]


def _geometry(op, x_shape: tuple[int, ...], out_shape: tuple[int, ...]
              ) -> tuple[np.ndarray, np.ndarray]:
    # `unrolled` for one group of the conv
    g = op.groups
    return unrolled(out_shape[1] // g, x_shape[1] // g, x_shape[2:], out_shape[2:],
                    op.kernel, op.stride, op.pad, op.dilation)


def dense_forward(op, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                  out: np.ndarray) -> Dense:
    """out[:, g] = x[:, g] @ wd[g].T (+ bias), a sample a row, each group's NCHW values
    read in place; returns what the backward needs."""
    g, n = op.groups, x.shape[0]
    dst, src = _geometry(op, x.shape, out.shape)
    wd = np.zeros((g, out[0].size // g, x[0].size // g), np.float32)
    w2 = w.reshape(g, -1)
    x3, out3 = x.reshape(n, g, -1), out.reshape(n, g, -1)
    for k in range(g):
        scatter(wd[k].reshape(-1), w2[k], dst, src)
        np.matmul(x3[:, k], wd[k].T, out=out3[:, k])
    if bias is not None:
        out.reshape(n, out.shape[1], -1)[...] += bias.reshape(-1, 1)
    return Dense(x, wd)


def dense_backward(op, saved: Dense, gy: np.ndarray, w: np.ndarray, need_dx: bool
                   ) -> tuple[np.ndarray | None, np.ndarray]:
    """dx (None unless `need_dx`) and dw of a `dense_forward` conv: dx[:, g] = dy[:, g] @
    wd[g]; dw gathered from dy[:, g].T @ x[:, g]."""
    g, n = op.groups, gy.shape[0]
    g3, x3 = gy.reshape(n, g, -1), saved.x.reshape(n, g, -1)
    dst, src = _geometry(op, saved.x.shape, gy.shape)
    gw = np.zeros((g, w.size // g), np.float32)
    gx = np.empty(saved.x.shape, np.float32) if need_dx else None
    for k in range(g):
        gather_add(gw[k], np.dot(g3[:, k].T, x3[:, k]).reshape(-1), dst, src)
        if gx is not None:
            np.matmul(g3[:, k], saved.wd[k], out=gx.reshape(n, g, -1)[:, k])
    return gx, gw.reshape(w.shape)


def batched_pointwise(op, threads: int) -> bool:
    """Whether a 1x1 unpadded conv with no groups (stride 1, or a strided one's
    subsampled pixels: `_conv_paths.subsampled_pointwise`) runs as numpy's batched
    matmul, one sgemm a sample: y[n] = W @ x[n], where NCHW planes are the GEMM's operands
    as they lie. The GEMM of `_backward_conv.conv2d_forward` first copies a run of samples'
    planes side by side, and its output back. On one thread only: BLAS runs on one
    (`grad._one_blas_thread`), where `conv2d_forward` splits the samples between numba's
    threads. Measured on an AVX-512 Xeon, one thread, batch 128, the MobileNetV2-style
    net's 1x1 convs (8-96 -> 16-128 channels, 4x4 to 14x14; docs/numba.md, "1x1 convs as
    batched matmuls"): forward 0.47-0.74x the time, backward 0.52-0.84x."""
    return threads == 1 and op.kernel == (1, 1) and op.groups == 1 and op.pad == (0, 0)


def pointwise_tiles(out_channels: int, pixels: int) -> bool:
    """Whether `_pointwise`'s register tiles compute W · x[n] (a 1x1 conv's forward, or
    its input gradient Wᵀ · dY[n]) rather than numpy's batched matmul: where vectors are
    256 bits, planes of at least a vector of pixels and 4+ output channels. Measured on
    an AMD EPYC with AVX2, one thread, batch 128, the MobileNetV2-style net's 1x1 convs
    in turns against numpy (docs/numba.md, "1x1 convs as batched matmuls"): 0.51-0.86x
    the time (8 -> 32 and 16 -> 8 on 14x14 0.51-0.57x, 32 <-> 128 on 4x4 0.65-0.66x, on
    7x7 0.65-0.86x). Where vectors are 512 bits not measured: numpy keeps them."""
    return (not conv_b.WIDE and pixels >= pointwise_k.MIN_PIXELS
            and out_channels >= pointwise_k.ROWS)


def pointwise_wgrad_tiles(out_channels: int, in_channels: int, pixels: int) -> bool:
    """Whether `_pointwise_wgrad`'s register tiles sum a 1x1 conv's weight gradient
    rather than sgemm a sample (`_blas.summed_products`): where vectors are 256 bits, on
    planes of at least a vector of pixels, 4+ output and 3+ input channels, and samples
    of at most PW_WGRAD_MAX_VALUES values of dY and x; of at most
    PW_WGRAD_FEW_MAX_VALUES where either side has at most PW_WGRAD_FEW_CHANNELS
    channels, sgemm's products a sample then being a few rows thin. Where vectors are
    512 bits not measured: sgemm keeps them."""
    values = (out_channels + in_channels) * pixels
    few = min(out_channels, in_channels) <= PW_WGRAD_FEW_CHANNELS
    return (not conv_b.WIDE and pixels >= pointwise_wgrad_k.MIN_PIXELS
            and out_channels >= pointwise_wgrad_k.ROWS
            and in_channels >= pointwise_wgrad_k.COLS
            and values <= (PW_WGRAD_FEW_MAX_VALUES if few else PW_WGRAD_MAX_VALUES))


# A sample's values of dY and x, (Cout + Cin) x H*W, up to which the 1x1 weight
# gradient takes the register tiles (`pointwise_wgrad_tiles`): a run of 16 samples of
# them in 512 KB, the L2 of the AMD EPYC it was measured on (one thread, batch 128,
# against sgemm a sample; docs/numba.md, "1x1 convs as batched matmuls"): 0.40-1.00x the
# time up to 7,840 values (the Fashion candidates' 1x1 convs), 0.92-1.07x at 6,000-14,000,
# 1.24-2.08x from 15,680 (64 -> 64 on 16x16, 16 -> 64 on 28x28, 160 -> 960 on 4x4), where
# a run no longer stays in L2 for the tiles that read it again
PW_WGRAD_MAX_VALUES = 8192
# ... and where one side has at most 16 channels, up to 18,816 values: sgemm a sample
# then multiplies matrices a few rows thin, and the tiles took 0.18-0.90x its time at
# 9,400-18,816 values (8 -> 48, 64 -> 8 and 80 -> 16 on 14x14, 4 <-> 16 and 12 -> 8 on
# 28x28, ...), 1.08x at 21,952 (16 -> 96 on 14x14); one thread, batch 128, on the EPYC
# (docs/numba.md, "1x1 convs as batched matmuls")
PW_WGRAD_FEW_CHANNELS = 16
PW_WGRAD_FEW_MAX_VALUES = 18_816


def _products(w2: np.ndarray, x3: np.ndarray, out3: np.ndarray) -> None:
    # out3[n] = w2 @ x3[n] (C-contiguous N x C x P operands), tiled where that pays
    if pointwise_tiles(w2.shape[0], x3.shape[2]):
        pointwise_k.pointwise(x3, np.ascontiguousarray(w2), out3, 1)
    else:
        np.matmul(w2, x3, out=out3)


def pointwise_forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                      out: np.ndarray) -> None:
    """out[n] = w @ x[n] (+ bias), N x C x H x W planes as (C, H*W) matrices."""
    n, cin = x.shape[:2]
    cout = w.shape[0]
    out3 = out.reshape(n, cout, -1)
    _products(w.reshape(cout, cin), np.ascontiguousarray(x).reshape(n, cin, -1), out3)
    if bias is not None:
        out3 += bias.reshape(cout, 1)


def pointwise_backward(x: np.ndarray, w: np.ndarray, gy: np.ndarray, need_dx: bool
                       ) -> tuple[np.ndarray | None, np.ndarray]:
    """dx[n] = w.T @ dy[n] (None unless `need_dx`); dw = the sum over n of dy[n] @ x[n].T,
    accumulated by sgemm itself (`_blas.summed_products`): float32 over runs of SUM_CHUNK
    samples, float64 across."""
    n, cin = x.shape[:2]
    cout = w.shape[0]
    w2 = w.reshape(cout, cin)
    g3 = np.ascontiguousarray(gy).reshape(n, cout, -1)
    x3 = np.ascontiguousarray(x).reshape(n, cin, -1)
    gx = None
    if need_dx:
        gx = np.empty(x.shape, np.float32)
        _products(w2.T, g3, gx.reshape(n, cin, -1))
    if pointwise_wgrad_tiles(cout, cin, g3.shape[2]):
        gw = pointwise_wgrad_k.weight_grad(g3, x3, SUM_CHUNK)
    else:
        gw = blas_k.summed_products(blas_k.SGEMM, g3, x3, SUM_CHUNK)
    return gx, gw.astype(np.float32).reshape(w.shape)


# samples whose products the weight gradient sums in float32 (`pointwise_backward`): the
# weight gradients' convention, a run of samples in float32, the runs in float64
SUM_CHUNK = 16
