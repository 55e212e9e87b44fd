"""Per op kind, how it runs in training and how its gradient flows back: `BACKWARD`.

A `Rule` is two functions. `forward(node, xs, weights, run)` returns the node's output
and what its backward needs (saved); `backward(node, gy, saved, weights, run, needs)`
returns the gradients of its inputs (None where `needs` says no gradient is wanted) and
of its trainable weights (suffix -> array). `weights` holds the node's state-dict entries
by suffix (`weight`, `bias`, `running_mean`, ...). Every tensor is a C-contiguous float32
N x C x H x W array; flat ones are N x F x 1 x 1. No rule writes into an array it did
not allocate: an input's gradient may be another node's.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from nasgraph.backends.numba import _backward_conv as conv_b
from nasgraph.backends.numba import _backward_elementwise as elem_b
from nasgraph.backends.numba import _backward_resample as resample_b
from nasgraph.backends.numba import _elementwise as elem_k
from nasgraph.backends.numba import _resample as resample_k
from nasgraph.backends.numba import _tiled as tiled_k
from nasgraph.backends.numba._activations import ACT_CODES
from nasgraph.backends.numba.nodes import conv_strategy
from nasgraph.errors import GraphError
from nasgraph.ir import Node

Weights = dict[str, np.ndarray]
Grads = tuple[list[np.ndarray | None], Weights]

_F32 = np.float32
_NO_BIAS = np.zeros(1, _F32)
_NO_RES = np.zeros((1, 1, 1, 1), _F32)
_NO_GRAD = np.zeros((1, 1, 1, 1), _F32)  # where the kernels skip the input gradient


@dataclass
class Run:
    """One forward and backward pass: the graph inputs' values, the mode, numba's thread
    count, the dropout seed, and where BatchNorm puts its updated running statistics
    (state-dict key -> new array)."""

    inputs: dict[str, np.ndarray]
    training: bool = True
    threads: int = 1
    seed: int = 0
    buffers: dict[str, np.ndarray] = field(default_factory=dict)


class Rule(NamedTuple):
    """How one op kind trains: its forward (keeping what the backward needs) and its
    backward."""

    forward: Callable[[Node, list[np.ndarray], Weights, Run], tuple[np.ndarray, Any]]
    backward: Callable[[Node, np.ndarray, Any, Weights, Run, list[bool]], Grads]


def shape4(node: Node) -> tuple[int, int, int]:
    """A node's per-sample output shape as stored here: C x H x W (flat: F x 1 x 1)."""
    t = node.type
    return t.channels, t.height, t.width


def _empty(x: np.ndarray, node: Node) -> np.ndarray:
    return np.empty((x.shape[0], *shape4(node)), _F32)


# ------------------------------------------------------------------ convolution


class _Padded(NamedTuple):
    """What a conv run by the tiled kernel keeps for its backward: its input, and where
    the weight gradient is a GEMM of copied columns (not `_planes_pay`) the input
    zero-padded in NHWC, from which they are copied."""

    xp: np.ndarray | None
    x: np.ndarray


def _planes_pay(op, out_channels: int, out_pixels: int) -> bool:
    """Whether a tiled conv's weight gradient runs faster by `_wgrad`'s register-tiled
    kernel than as a GEMM of copied columns: spatial kernels of few output channels, and
    of strided convs only on large outputs. The GEMM's rows are its output channels, and
    OpenBLAS uses few rows badly; with more, it copies once for many FMAs. Measured on
    AVX2, one thread, batch 128 (docs/numba.md, "The weight gradient"): at 7-16 output
    channels the tiled kernel takes 0.3-0.7x the GEMM's time, at 32 about as long, at 64
    1.7-2.5x; strided ones onto 7x7 outputs 1.7-2x."""
    kh, kw = op.kernel
    return (kh * kw > 1 and out_channels <= WGRAD_MAX_CHANNELS
            and (op.stride == (1, 1) or out_pixels >= 196))


# convs of at most this many output channels take `_wgrad`'s weight gradient
WGRAD_MAX_CHANNELS = 28


def _conv_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                  ) -> tuple[np.ndarray, np.ndarray | _Padded | conv_b.PhasePlanes]:
    # N x Cin x H x W -> N x Cout x Ho x Wo; saved: x, for a tiled conv `_Padded`, for a
    # depthwise one its input's phase planes
    op, x = node.op, xs[0]
    w = wts["weight"]  # Cout x Cin/G x kh x kw
    cout, cig, kh, kw = w.shape
    bias = wts["bias"] if op.bias else _NO_BIAS
    out = _empty(x, node)
    if cig == 1:  # depthwise: on the planes its weight and input gradients read
        planes = conv_b.phase_planes(x, out.shape[2:], op.kernel, op.stride, op.pad,
                                     op.dilation)
        conv_b.depthwise_forward(planes, w.reshape(cout, kh * kw), bias if op.bias else None,
                                 out, run.threads)
        return out, planes
    if conv_strategy(node, cig, winograd=False) == "tiled":  # as the executor runs it
        xp = conv_b.padded_nhwc(x, op.pad, run.threads)
        conv_b.conv2d_direct(xp, w, bias if op.bias else None, out, op.stride,
                             op.dilation[0], run.threads)
        planes = _planes_pay(op, cout, out.shape[2] * out.shape[3])
        return out, _Padded(None if planes else xp, x)
    conv_b.conv2d_forward(x, w.reshape(op.groups, cout // op.groups, cig * kh * kw), bias,
                          out, kh, kw, *op.stride, *op.pad, *op.dilation, int(op.bias),
                          run.threads)
    return out, x


def _tiled_input_grad(op, shape: tuple[int, ...]) -> bool:
    # dx of a stride-1 conv is a stride-1 conv of dy (`conv_b.conv2d_input_grad`), padded
    # by (k - 1) * d - p on each side (not negative), with a tile's worth of pixels
    kh, kw = op.kernel
    return (op.stride == (1, 1) and shape[2] * shape[3] >= tiled_k.R
            and (kh - 1) * op.dilation[0] >= op.pad[0] and kw - 1 >= op.pad[1])


def _conv_backward(node: Node, gy: np.ndarray,
                   saved: np.ndarray | _Padded | conv_b.PhasePlanes, wts: Weights, run: Run,
                   needs: list[bool]) -> Grads:
    op = node.op
    w = wts["weight"]
    cout, cig, kh, kw = w.shape
    if isinstance(saved, _Padded):
        return _tiled_conv_backward(op, gy, saved, w, run, needs)
    if isinstance(saved, conv_b.PhasePlanes):  # depthwise
        gp = conv_b.depthwise_rows(saved, gy)
        gw = conv_b.conv2d_weight_grad(saved, gy, op.groups, op.kernel, run.threads, gp)
        gx = conv_b.depthwise_input_grad(saved, gp, w.reshape(cout, kh * kw), run.threads) \
            if needs[0] else None
        return [gx], _with_bias_grad(op, gw, gy)
    x = saved
    gx = np.zeros_like(x) if needs[0] else _NO_GRAD
    cog, k = cout // op.groups, cig * kh * kw
    parts = np.zeros((run.threads, op.groups, cog, k), _F32)
    conv_b.conv2d_backward(x, w.reshape(op.groups, cog, k), gy, gx, parts, kh, kw,
                           *op.stride, *op.pad, *op.dilation, needs[0], run.threads)
    gw = parts[0] if run.threads == 1 else parts.sum(axis=0)
    return [gx if needs[0] else None], _with_bias_grad(op, gw.reshape(w.shape), gy)


def _tiled_conv_backward(op, gy: np.ndarray, saved: _Padded, w: np.ndarray, run: Run,
                         needs: list[bool]) -> Grads:
    # the weight gradient by `_wgrad` or as a GEMM from the padded NHWC input the forward
    # kept (`_planes_pay`); the input gradient of a stride-1 conv is a tiled conv of gy
    # (seed 003's full convolution), of others added back window by window
    cout, cin, kh, kw = w.shape
    x = saved.x
    direct_dx = needs[0] and _tiled_input_grad(op, x.shape)
    add_dx = needs[0] and not direct_dx
    gemm_dw = saved.xp is not None
    gw = None
    if not gemm_dw:
        planes = conv_b.phase_planes(x, gy.shape[2:], op.kernel, op.stride, op.pad,
                                     op.dilation)
        gw = conv_b.conv2d_weight_grad(planes, gy, 1, op.kernel, run.threads)
    if gemm_dw or add_dx:
        n, _, h, wi = x.shape
        xp_shape = (n, h + 2 * op.pad[0], wi + 2 * op.pad[1], cin)
        gxp = np.zeros(xp_shape, _F32) if add_dx else _NO_GRAD
        w2 = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(cout, kh * kw * cin)
        parts = np.zeros((run.threads if gemm_dw else 1, cout, kh * kw * cin), _F32)
        # without the GEMM, only xp's shape is read: gxp has it
        conv_b.conv2d_nhwc_backward(saved.xp if gemm_dw else gxp, gy, w2, parts, gxp, kh,
                                    kw, *op.stride, op.dilation[0], gemm_dw, add_dx,
                                    run.threads)
        if gemm_dw:
            gw = parts[0] if run.threads == 1 else parts.sum(axis=0)
            gw = np.ascontiguousarray(gw.reshape(cout, kh, kw, cin).transpose(0, 3, 1, 2))
    gx = None
    if direct_dx:
        gx = np.empty(x.shape, _F32)
        conv_b.conv2d_input_grad(gy, w, gx, op.pad, op.dilation[0], run.threads)
    elif add_dx:
        gx = np.empty(x.shape, _F32)
        conv_b.from_padded_nhwc(gxp, gx, *op.pad)
    return [gx], _with_bias_grad(op, gw, gy)


def _with_bias_grad(op, gw: np.ndarray, gy: np.ndarray) -> Weights:
    grads = {"weight": gw}
    if op.bias:
        grads["bias"] = np.empty(op.out_channels, _F32)
        conv_b.channel_sums(gy, grads["bias"])
    return grads


def _fused_conv_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                        ) -> tuple[np.ndarray, tuple]:
    # act(conv(x) + residual); saved: x and the activation's input
    op = node.op
    pre, x = _conv_forward(node, xs[:1], wts, run)
    if op.residual:
        pre += xs[1]
    if op.act is None:
        return pre, (x, pre)
    out = np.empty_like(pre)
    _activate(pre, out, ACT_CODES[op.act])
    return out, (x, pre)


def _fused_conv_backward(node: Node, gy: np.ndarray, saved: tuple, wts: Weights, run: Run,
                         needs: list[bool]) -> Grads:
    x, pre = saved
    if node.op.act is not None:
        gy = _activation_grad(pre, gy, ACT_CODES[node.op.act])
    (gx,), grads = _conv_backward(node, gy, x, wts, run, needs[:1])
    return [gx, gy] if node.op.residual else [gx], grads


# ------------------------------------------------------------------ normalization


def _batchnorm_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                       ) -> tuple[np.ndarray, tuple]:
    # saved: x, the mean and 1 / sqrt(var + eps) it normalized with (float64, per channel)
    op, x = node.op, xs[0]
    out = np.empty_like(x)
    if not run.training:
        mean = wts["running_mean"].astype(np.float64)
        invstd = 1.0 / np.sqrt(wts["running_var"].astype(np.float64) + op.eps)
        scale = (wts["weight"] * invstd).astype(_F32)
        shift = (wts["bias"] - mean * wts["weight"] * invstd).astype(_F32)
        elem_k.scale_shift(x, scale, shift, out, 0, 0)
        return out, (x, mean, invstd)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if count < 2:
        raise GraphError(f"node {node.id!r} (batchnorm2d): training needs more than one value "
                         f"per channel, got input {x.shape}; hint: a larger batch")
    mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
    elem_b.batchnorm_train(x, wts["weight"], wts["bias"], op.eps, out, mean, var)
    # torch: running stats move by `momentum` towards the batch's, the variance unbiased
    key, m = node.param_key, op.momentum
    run.buffers[f"{key}.running_mean"] = (
        (1 - m) * wts["running_mean"] + m * mean).astype(_F32)
    run.buffers[f"{key}.running_var"] = (
        (1 - m) * wts["running_var"] + m * var * (count / (count - 1))).astype(_F32)
    return out, (x, mean, 1.0 / np.sqrt(var + op.eps))


def _batchnorm_backward(node: Node, gy: np.ndarray, saved: tuple, wts: Weights, run: Run,
                        needs: list[bool]) -> Grads:
    x, mean, invstd = saved
    gx = np.empty_like(x) if needs[0] else _NO_GRAD
    ggamma, gbeta = np.empty(x.shape[1], _F32), np.empty(x.shape[1], _F32)
    elem_b.batchnorm_backward(x, gy, wts["weight"], mean, invstd, gx, ggamma, gbeta,
                              run.training, needs[0])
    return [gx if needs[0] else None], {"weight": ggamma, "bias": gbeta}


def _layernorm_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                       ) -> tuple[np.ndarray, tuple]:
    # statistics over the channels of each pixel (axis 1), in float64; saved: the
    # normalized x and 1 / sqrt(var + eps), N x 1 x H x W
    x = xs[0].astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    invstd = 1.0 / np.sqrt(x.var(axis=1, keepdims=True) + node.op.eps)
    xhat = (x - mean) * invstd
    w, b = wts["weight"][None, :, None, None], wts["bias"][None, :, None, None]
    return (xhat * w + b).astype(_F32), (xhat, invstd)


def _layernorm_backward(node: Node, gy: np.ndarray, saved: tuple, wts: Weights, run: Run,
                        needs: list[bool]) -> Grads:
    # dx = invstd * (g - mean_c(g) - xhat * mean_c(g * xhat)), g = dy * weight
    xhat, invstd = saved
    g64 = gy.astype(np.float64)
    grads = {"weight": (g64 * xhat).sum(axis=(0, 2, 3)).astype(_F32),
             "bias": g64.sum(axis=(0, 2, 3)).astype(_F32)}
    if not needs[0]:
        return [None], grads
    g = g64 * wts["weight"][None, :, None, None]
    gx = invstd * (g - g.mean(axis=1, keepdims=True)
                   - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return [gx.astype(_F32)], grads


# ------------------------------------------------------------------ activations


def _activate(x: np.ndarray, out: np.ndarray, code: int) -> None:
    elem_b.activation_forward(x, out, code)


def _activation_grad(x: np.ndarray, gy: np.ndarray, code: int) -> np.ndarray:
    gx = np.empty_like(x)
    if code == ACT_CODES["relu"]:
        elem_b.relu_backward(x, gy, gx)
    else:
        elem_b.activation_backward(x, gy, gx, code)
    return gx


def _activation_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                        ) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty_like(xs[0])
    _activate(xs[0], out, ACT_CODES[node.op.fn])
    return out, xs[0]


def _activation_backward(node: Node, gy: np.ndarray, x: np.ndarray, wts: Weights, run: Run,
                         needs: list[bool]) -> Grads:
    return [_activation_grad(x, gy, ACT_CODES[node.op.fn]) if needs[0] else None], {}


# ------------------------------------------------------------------ pooling and resizing


def _maxpool_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                     ) -> tuple[np.ndarray, tuple]:
    op, x = node.op, xs[0]
    out = _empty(x, node)
    argmax = np.empty(out.shape, np.int32)
    resample_b.maxpool2d_train(x, out, argmax, *op.kernel, *op.strides, *op.padding)
    return out, (argmax, x.shape)


def _maxpool_backward(node: Node, gy: np.ndarray, saved: tuple, wts: Weights, run: Run,
                      needs: list[bool]) -> Grads:
    argmax, shape = saved
    gx = np.zeros(shape, _F32)
    resample_b.maxpool2d_backward(gy, argmax, gx)
    return [gx], {}


def _avgpool_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                     ) -> tuple[np.ndarray, tuple]:
    op, x = node.op, xs[0]
    out = _empty(x, node)
    resample_k.pool2d(x, out, 0, *op.kernel, *op.strides, *op.padding, 0,
                      int(op.count_include_pad))
    return out, x.shape


def _avgpool_backward(node: Node, gy: np.ndarray, shape: tuple, wts: Weights, run: Run,
                      needs: list[bool]) -> Grads:
    op = node.op
    gx = np.zeros(shape, _F32)
    resample_b.avgpool2d_backward(gy, gx, *op.kernel, *op.strides, *op.padding,
                                  int(op.count_include_pad))
    return [gx], {}


def _adaptive_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                      ) -> tuple[np.ndarray, tuple]:
    out = _empty(xs[0], node)
    resample_k.adaptive_avgpool(xs[0], out, 0)
    return out, xs[0].shape


def _adaptive_backward(node: Node, gy: np.ndarray, shape: tuple, wts: Weights, run: Run,
                       needs: list[bool]) -> Grads:
    gx = np.zeros(shape, _F32)
    resample_b.adaptive_avgpool_backward(gy, gx)
    return [gx], {}


def upsample_scales(node: Node, h: int, w: int) -> tuple[float, float]:
    """Upsample's source steps per output pixel (h, w) as torch computes them in float32
    (the executor's `nodes._upsample` does the same)."""
    op, (ho, wo) = node.op, (node.type.height, node.type.width)
    if op.align_corners:  # (in - 1) / (out - 1), 0 for a single output
        return tuple(float(_F32(i - 1) / _F32(o - 1)) if o > 1 else 0.0
                     for i, o in ((h, ho), (w, wo)))
    if op.scale is not None:
        return (float(_F32(1.0 / op.scale)),) * 2
    return tuple(float(_F32(i) / _F32(o)) for i, o in ((h, ho), (w, wo)))


def _upsample_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                      ) -> tuple[np.ndarray, tuple]:
    op, x = node.op, xs[0]
    out = _empty(x, node)
    resample_k.upsample(x, out, 0, int(op.mode == "bilinear"), int(op.align_corners),
                        *upsample_scales(node, *x.shape[2:]))
    return out, x.shape


def _upsample_backward(node: Node, gy: np.ndarray, shape: tuple, wts: Weights, run: Run,
                       needs: list[bool]) -> Grads:
    op = node.op
    gx = np.zeros(shape, _F32)
    resample_b.upsample_backward(gy, gx, int(op.mode == "bilinear"), int(op.align_corners),
                                 *upsample_scales(node, *shape[2:]))
    return [gx], {}


# ------------------------------------------------------------------ merging


def _concat_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                    ) -> tuple[np.ndarray, list[int]]:
    return np.concatenate(xs, axis=1), [x.shape[1] for x in xs]


def _concat_backward(node: Node, gy: np.ndarray, sizes: list[int], wts: Weights, run: Run,
                     needs: list[bool]) -> Grads:
    bounds = np.cumsum([0, *sizes])
    return [np.ascontiguousarray(gy[:, a:b]) if need else None
            for a, b, need in zip(bounds[:-1], bounds[1:], needs, strict=True)], {}


def _add_weights(node: Node) -> list[float]:
    return list(node.op.weights or [1.0] * len(node.inputs))


def _add_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                 ) -> tuple[np.ndarray, None]:
    out = np.empty_like(xs[0])
    for k, (x, w) in enumerate(zip(xs, _add_weights(node), strict=True)):
        elem_k.add_scaled(x, float(w), out, 0, int(k > 0))
    return out, None


def _add_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                  needs: list[bool]) -> Grads:
    return [None if not need else gy if w == 1.0 else gy * _F32(w)
            for w, need in zip(_add_weights(node), needs, strict=True)], {}


def _mul_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    a, b = xs if xs[0].size >= xs[1].size else xs[::-1]
    out = np.empty_like(a)
    elem_k.mul(a, b, out, 0)
    return out, xs


def _mul_backward(node: Node, gy: np.ndarray, xs: list[np.ndarray], wts: Weights, run: Run,
                  needs: list[bool]) -> Grads:
    grads: list[np.ndarray | None] = []
    for k, (x, need) in enumerate(zip(xs, needs, strict=True)):
        other = xs[1 - k]
        if not need:
            grads.append(None)
        elif x.shape == gy.shape:
            grads.append(gy * other)  # the other factor broadcasts when it is C x 1 x 1
        else:  # x is the C x 1 x 1 factor: sum over H x W
            gx = np.empty_like(x)
            elem_b.broadcast_product_backward(other, gy, gx)
            grads.append(gx)
    return grads, {}


def _channel_pad_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                         ) -> tuple[np.ndarray, None]:
    x, before = xs[0], node.op.before
    out = np.zeros((x.shape[0], *shape4(node)), _F32)
    out[:, before:before + x.shape[1]] = x
    return out, None


def _channel_pad_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                          needs: list[bool]) -> Grads:
    before, c = node.op.before, gy.shape[1] - node.op.before - node.op.after
    return [np.ascontiguousarray(gy[:, before:before + c])], {}


def _shuffled(a: np.ndarray, rows: int) -> np.ndarray:
    # N x C x H x W seen as N x rows x C/rows x H x W, transposed: channel r * C/rows + j
    # goes to j * rows + r
    n, c, h, w = a.shape
    return np.ascontiguousarray(
        a.reshape(n, rows, c // rows, h, w).transpose(0, 2, 1, 3, 4)).reshape(n, c, h, w)


def _channel_shuffle_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                             ) -> tuple[np.ndarray, None]:
    return _shuffled(xs[0], node.op.groups), None


def _channel_shuffle_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                              needs: list[bool]) -> Grads:
    # the inverse permutation: the transpose of the C/groups x groups view
    return [_shuffled(gy, gy.shape[1] // node.op.groups)], {}


def _channel_slice_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                           ) -> tuple[np.ndarray, tuple[int, ...]]:
    return np.ascontiguousarray(xs[0][:, node.op.start:node.op.stop]), xs[0].shape


def _channel_slice_backward(node: Node, gy: np.ndarray, shape: tuple[int, ...], wts: Weights,
                            run: Run, needs: list[bool]) -> Grads:
    gx = np.zeros(shape, _F32)  # the channels outside the slice get no gradient
    gx[:, node.op.start:node.op.stop] = gy
    return [gx], {}


# ------------------------------------------------------------------ classifier and views


def _linear_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                    ) -> tuple[np.ndarray, np.ndarray]:
    # N x F x 1 x 1 -> N x O x 1 x 1 (sgemm); saved: x as N x F
    x = xs[0].reshape(xs[0].shape[0], -1)
    out = x @ wts["weight"].T
    if node.op.bias:
        out += wts["bias"]
    return out.reshape(x.shape[0], -1, 1, 1), x


def _linear_backward(node: Node, gy: np.ndarray, x: np.ndarray, wts: Weights, run: Run,
                     needs: list[bool]) -> Grads:
    g = gy.reshape(gy.shape[0], -1)  # N x O
    grads = {"weight": g.T @ x}
    if node.op.bias:
        grads["bias"] = g.sum(axis=0, dtype=np.float64).astype(_F32)
    gx = (g @ wts["weight"]).reshape(*x.shape, 1, 1) if needs[0] else None
    return [gx], grads


def _flatten_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                     ) -> tuple[np.ndarray, tuple]:
    return xs[0].reshape(xs[0].shape[0], -1, 1, 1), xs[0].shape


def _flatten_backward(node: Node, gy: np.ndarray, shape: tuple, wts: Weights, run: Run,
                      needs: list[bool]) -> Grads:
    return [gy.reshape(shape)], {}


def dropout_mask(seed: int, node_id: str, shape: tuple[int, ...], p: float) -> np.ndarray:
    """The multiplier dropout node `node_id` applies in a training pass with `seed`: 0 with
    probability p, else 1 / (1 - p) (float32, `shape`). Drawn from
    `np.random.default_rng([seed, crc32(node_id)])`: the same seed gives the same masks,
    and each node its own."""
    rng = np.random.default_rng([seed, zlib.crc32(node_id.encode())])
    keep = rng.random(shape, dtype=_F32) >= p
    return keep.astype(_F32) * _F32(1.0 / (1.0 - p))


def _dropout_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    if not run.training or node.op.p == 0:
        return xs[0], None
    mask = dropout_mask(run.seed, node.id, xs[0].shape, node.op.p)
    return xs[0] * mask, mask


def _dropout_backward(node: Node, gy: np.ndarray, mask: np.ndarray | None, wts: Weights,
                      run: Run, needs: list[bool]) -> Grads:
    return [gy if mask is None else gy * mask], {}


def _pass_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                  ) -> tuple[np.ndarray, None]:
    return xs[0], None


def _pass_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                   needs: list[bool]) -> Grads:
    return [gy], {}


def _input_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                   ) -> tuple[np.ndarray, None]:
    return run.inputs[node.id], None


def _input_backward(node: Node, gy: np.ndarray, saved: None, wts: Weights, run: Run,
                    needs: list[bool]) -> Grads:
    return [], {}


BACKWARD: dict[str, Rule] = {
    "input": Rule(_input_forward, _input_backward),
    "output": Rule(_pass_forward, _pass_backward),
    "identity": Rule(_pass_forward, _pass_backward),
    "conv2d": Rule(_conv_forward, _conv_backward),
    "fused_conv2d": Rule(_fused_conv_forward, _fused_conv_backward),
    "batchnorm2d": Rule(_batchnorm_forward, _batchnorm_backward),
    "layernorm2d": Rule(_layernorm_forward, _layernorm_backward),
    "activation": Rule(_activation_forward, _activation_backward),
    "maxpool2d": Rule(_maxpool_forward, _maxpool_backward),
    "avgpool2d": Rule(_avgpool_forward, _avgpool_backward),
    "global_avgpool": Rule(_adaptive_forward, _adaptive_backward),
    "adaptive_avgpool2d": Rule(_adaptive_forward, _adaptive_backward),
    "upsample": Rule(_upsample_forward, _upsample_backward),
    "concat": Rule(_concat_forward, _concat_backward),
    "add": Rule(_add_forward, _add_backward),
    "mul": Rule(_mul_forward, _mul_backward),
    "channel_pad": Rule(_channel_pad_forward, _channel_pad_backward),
    "channel_shuffle": Rule(_channel_shuffle_forward, _channel_shuffle_backward),
    "channel_slice": Rule(_channel_slice_forward, _channel_slice_backward),
    "linear": Rule(_linear_forward, _linear_backward),
    "flatten": Rule(_flatten_forward, _flatten_backward),
    "dropout": Rule(_dropout_forward, _dropout_backward),
}
