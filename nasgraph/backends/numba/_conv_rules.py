"""Training rules of convolutions (`conv2d`, `fused_conv2d`): which kernels of
`_backward_conv`, `_planes`, `_planes_wgrad` and `_conv_matmul` run a conv's forward and
its gradients, and what the forward keeps for the backward; `_conv_paths` says which path
takes a conv, `_conv_layouts` what it asks the ops beside it to write. Depthwise convs
with kernels of their own layout (the batch in the lanes, flat planes, NHWC) are
`_depthwise_rules`'. docs/numba.md, "Which kernel computes which gradient"."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np

from nasgraph.backends.numba import _backward_conv as conv_b
from nasgraph.backends.numba import _conv_matmul as matmul_k
from nasgraph.backends.numba import _depthwise_rules as depthwise_r
from nasgraph.backends.numba import _planes as planes_k
from nasgraph.backends.numba import _planes_depthwise as depthwise_planes_k
from nasgraph.backends.numba import _planes_wgrad as wgrad_planes_k
from nasgraph.backends.numba import _strided_dx as strided_k
from nasgraph.backends.numba._activations import ACT_CODES
from nasgraph.backends.numba._conv_layouts import Padded, weight_grad_on_planes
from nasgraph.backends.numba._conv_paths import (
    depthwise_nhwc,
    dx_is_conv,
    flat_depthwise,
    lanes_conv,
    per_group,
    planes_forward,
    planes_grouped,
    planes_input_grad,
    strided_dx_pays,
    subsampled_pointwise,
    tiled_input_grad,
)
from nasgraph.backends.numba._rule import (
    F32,
    NO_BIAS,
    NO_GRAD,
    Grads,
    Normalized,
    Run,
    Spread,
    Weights,
    activate,
    activation_grad,
    empty,
    thread_total,
)
from nasgraph.backends.numba.nodes import conv_strategy
from nasgraph.ir import Node, TensorType


class _Subsampled(NamedTuple):
    """What a strided 1x1 conv (`subsampled_pointwise`) keeps for its backward: the
    pixels its kernel reads, and the shape of its whole input."""

    xs: np.ndarray
    shape: tuple[int, ...]


class _Grouped(NamedTuple):
    """What a grouped conv run forward on phase planes (`planes_grouped`) keeps for its
    backward: its input's planes, which the weight gradient reads; where dx is not a conv
    of dy (`dx_is_conv`), its input too, which the GEMM of columns reads."""

    planes: planes_k.PhasePlanes
    x: np.ndarray | None = None


class _PerGroup(NamedTuple):
    """What a grouped conv run as one ungrouped conv a group (`per_group`) keeps for its
    backward: the node of a group's conv (`_group_node`), and what each group's forward
    kept."""

    node: Node
    saved: list


@functools.lru_cache(maxsize=256)
def _group_node(node: Node) -> Node:
    """The conv of one group of a grouped conv `node`: its input channels to its output
    channels, ungrouped, same kernel, stride, padding, dilation and bias."""
    op = node.op
    cog = op.out_channels // op.groups
    return dataclasses.replace(
        node, op=op.model_copy(update={"out_channels": cog, "groups": 1}),
        type=TensorType(channels=cog, height=node.type.height, width=node.type.width))


def _group_weights(wts: Weights, op, g: int) -> Weights:
    # group g's weights: views of its output channels' rows
    cog = op.out_channels // op.groups
    rows = slice(g * cog, (g + 1) * cog)
    return {key: value[rows] for key, value in wts.items()}


def conv_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                 ) -> tuple[np.ndarray, np.ndarray | Padded | _Subsampled | _Grouped
                            | _PerGroup | matmul_k.Dense | planes_k.PhasePlanes
                            | depthwise_r.Lanes | depthwise_r.Flat | depthwise_r.NHWC]:
    # N x Cin x H x W -> N x Cout x Ho x Wo; saved: x, for a tiled conv `Padded`, for a
    # strided 1x1 one `_Subsampled`, for a depthwise one (or a stem of one input channel)
    # `_depthwise_rules`' `Lanes`, `Flat`, `NHWC` or its input's phase planes,
    # for a grouped one on the planes `_Grouped`, as a conv a group `_PerGroup`, for one
    # on a tiny map `matmul_k.Dense`
    op, x = node.op, xs[0]
    w = wts["weight"]  # Cout x Cin/G x kh x kw
    cout, cig, kh, kw = w.shape
    bias = wts["bias"] if op.bias else NO_BIAS
    out = empty(x, node)
    if isinstance(x, Normalized):  # the BatchNorm before it left that to it
        return out, depthwise_r.lanes_forward(op, x, w, bias, out, run)
    if isinstance(x, conv_b.PaddedNHWC) and op.groups != 1:  # depthwise (`padded_x`)
        return out, depthwise_r.nhwc_forward(op, x.xp, w, bias, out, run)
    if isinstance(x, conv_b.PaddedNHWC):  # as its producer wrote it for this (`padded_x`)
        conv_b.conv2d_direct(x.xp, w, bias if op.bias else None, out, op.stride,
                             op.dilation[0], run.threads)
        return out, Padded(x.xp, x)
    if isinstance(x, planes_k.PhasePlanes):  # as its producer wrote them (`planes_x`)
        planes_k.conv2d_forward(x, w, bias if op.bias else None, out, run.threads)
        return out, Padded(None, x, x)
    if per_group(op, cig, out.shape[2] * out.shape[3]):
        return out, _per_group_forward(node, x, wts, out, run)
    if subsampled_pointwise(op):
        sh, sw = op.stride
        sub = np.ascontiguousarray(x[:, :, ::sh, ::sw])
        if matmul_k.batched_pointwise(op, run.threads):
            matmul_k.pointwise_forward(sub, w, bias if op.bias else None, out)
        else:
            conv_b.conv2d_forward(sub, w.reshape(op.groups, cout // op.groups, cig), bias,
                                  out, 1, 1, 1, 1, 0, 0, 1, 1, int(op.bias), run.threads)
        return out, _Subsampled(sub, x.shape)
    if lanes_conv(op, x.shape):
        return out, depthwise_r.lanes_forward(op, x, w, bias, out, run)
    if cig == 1 and flat_depthwise(op, x.shape[2] * x.shape[3]):
        return out, depthwise_r.flat_forward(op, x, w, bias, out, run)
    if cig == 1 and depthwise_nhwc(op, cout, x.shape[1], out.shape[2] * out.shape[3]):
        return out, depthwise_r.nhwc_forward(op, conv_b.padded_nhwc(x, op.pad, run.threads),
                                             w, bias, out, run)
    if cig == 1:  # depthwise: on the planes its weight and input gradients read
        # one input channel (a stem) where vectors are 512 bits: `conv2d_forward`'s tiles
        # of output channels x pixels (0.27-0.53x the time of an axpy per output channel
        # and tap, 6-22 output channels, one thread; docs/numba.md, "Few output channels
        # on the phase planes")
        stem = op.groups == 1 and conv_b.WIDE
        planes = planes_k.phase_planes(x, out.shape[2:], op.kernel, op.stride, op.pad,
                                       op.dilation,
                                       multiple=planes_k.PIXELS if stem else planes_k.LANES)
        if stem:
            planes_k.conv2d_forward(planes, w, bias if op.bias else None, out, run.threads)
        else:
            depthwise_planes_k.depthwise_forward(planes, w.reshape(cout, kh * kw),
                                       bias if op.bias else None, out, run.threads)
        return out, planes
    if conv_strategy(node, cig, winograd=False) == "tiled":  # as the executor runs it
        if planes_forward(op, cout, out.shape[2] * out.shape[3]):
            planes = planes_k.phase_planes(x, out.shape[2:], op.kernel, op.stride, op.pad,
                                           op.dilation, multiple=planes_k.PIXELS)
            planes_k.conv2d_forward(planes, w, bias if op.bias else None, out, run.threads)
            return out, Padded(None, x, planes)
        xp = conv_b.padded_nhwc(x, op.pad, run.threads)
        conv_b.conv2d_direct(xp, w, bias if op.bias else None, out, op.stride,
                             op.dilation[0], run.threads)
        planes = weight_grad_on_planes(op, cout, out.shape[2] * out.shape[3])
        return out, Padded(None if planes else xp, x)
    if matmul_k.dense(op, x.shape, out.shape):
        return out, matmul_k.dense_forward(op, x, w, bias if op.bias else None, out)
    if planes_grouped(op, cig):
        planes = planes_k.phase_planes(x, out.shape[2:], op.kernel, op.stride, op.pad,
                                       op.dilation, multiple=planes_k.PIXELS)
        planes_k.conv2d_forward(planes, w, bias if op.bias else None, out, run.threads,
                                op.groups)
        return out, _Grouped(planes, None if dx_is_conv(op) else x)
    if matmul_k.batched_pointwise(op, run.threads):
        matmul_k.pointwise_forward(x, w, bias if op.bias else None, out)
        return out, x
    conv_b.conv2d_forward(x, w.reshape(op.groups, cout // op.groups, cig * kh * kw), bias,
                          out, kh, kw, *op.stride, *op.pad, *op.dilation, int(op.bias),
                          run.threads)
    return out, x


def _per_group_forward(node: Node, x: np.ndarray, wts: Weights, out: np.ndarray, run: Run
                       ) -> _PerGroup:
    # a grouped conv as `op.groups` ungrouped convs, each on its group's input channels
    # copied out, its output copied into its channels of `out`
    op, group = node.op, _group_node(node)
    cig, cog = x.shape[1] // op.groups, group.op.out_channels
    saved = []
    for g in range(op.groups):
        xg = np.ascontiguousarray(x[:, g * cig:(g + 1) * cig])
        out_g, kept = conv_forward(group, [xg], _group_weights(wts, op, g), run)
        out[:, g * cog:(g + 1) * cog] = out_g
        saved.append(kept)
    return _PerGroup(group, saved)


def _per_group_backward(op, gy: np.ndarray, saved: _PerGroup, wts: Weights, run: Run,
                        needs: list[bool]) -> Grads:
    # each group's conv's gradients (`_per_group_forward`), put together
    cog = saved.node.op.out_channels
    gxs, grads = [], {key: np.empty(value.shape, F32) for key, value in wts.items()}
    for g, kept in enumerate(saved.saved):
        gyg = np.ascontiguousarray(gy[:, g * cog:(g + 1) * cog])
        (gx,), gw = conv_backward(saved.node, gyg, kept, _group_weights(wts, op, g), run,
                                  needs)
        gxs.append(gx)
        for key, value in gw.items():
            grads[key][g * cog:(g + 1) * cog] = value
    return [np.concatenate(gxs, axis=1) if needs[0] else None], grads


def conv_backward(node: Node, gy: np.ndarray,
                  saved: np.ndarray | Padded | _Subsampled | _Grouped | _PerGroup
                  | matmul_k.Dense | planes_k.PhasePlanes | depthwise_r.Lanes
                  | depthwise_r.Flat | depthwise_r.NHWC,
                  wts: Weights,
                  run: Run,
                  needs: list[bool]) -> Grads:
    op = node.op
    w = wts["weight"]
    cout, cig, kh, kw = w.shape
    if isinstance(saved, Padded):
        return _tiled_conv_backward(op, gy, saved, w, run, needs)
    if isinstance(saved, _PerGroup):
        return _per_group_backward(op, gy, saved, wts, run, needs)
    if isinstance(saved, matmul_k.Dense):
        gx, gw = matmul_k.dense_backward(op, saved, gy, w, needs[0])
        return [gx], _with_bias_grad(op, gw, gy)
    if isinstance(saved, _Grouped):  # dw on the planes, dx a conv on dy's or the GEMM's
        gw = wgrad_planes_k.conv2d_weight_grad(saved.planes, gy, op.groups, op.kernel,
                                               run.threads, wide=conv_b.WIDE)
        gx = None
        if needs[0] and saved.x is None:
            gx, _ = planes_k.conv2d_input_grad(gy, w, saved.planes.shape, op.pad,
                                               op.dilation, run.threads, op.groups)
        elif needs[0]:
            gx, _ = _gemm_conv_backward(saved.x, w, gy, op.groups, (*op.stride, *op.pad,
                                                                    *op.dilation),
                                        True, run, need_dw=False)
        return [gx], _with_bias_grad(op, gw, gy)
    if isinstance(saved, _Subsampled):  # the stride-1 conv's gradients, dx at its pixels
        if matmul_k.batched_pointwise(op, run.threads):
            gxs, gw = matmul_k.pointwise_backward(saved.xs, w, gy, needs[0])
        else:
            gxs, gw = _gemm_conv_backward(saved.xs, w, gy, op.groups, (1, 1, 0, 0, 1, 1),
                                          needs[0], run)
        gx = Spread(gxs, op.stride, saved.shape) if needs[0] else None
        return [gx], _with_bias_grad(op, gw, gy)
    if isinstance(saved, depthwise_r.SAVED):
        gx, gw = depthwise_r.backward(op, gy, saved, w, run, needs[0])
        return [gx], _with_bias_grad(op, gw, gy)
    if isinstance(saved, planes_k.PhasePlanes):  # depthwise
        gp = depthwise_planes_k.depthwise_rows(saved, gy, conv_b.WIDE)
        gw = wgrad_planes_k.conv2d_weight_grad(saved, gy, op.groups, op.kernel,
                                               run.threads, gp, conv_b.WIDE)
        gx = depthwise_planes_k.depthwise_input_grad(
            saved, gp, w.reshape(cout, kh * kw), run.threads) if needs[0] else None
        return [gx], _with_bias_grad(op, gw, gy)
    if matmul_k.batched_pointwise(op, run.threads):
        gx, gw = matmul_k.pointwise_backward(saved, w, gy, needs[0])
    else:
        gx, gw = _gemm_conv_backward(saved, w, gy, op.groups, (*op.stride, *op.pad,
                                                              *op.dilation), needs[0], run)
    return [gx], _with_bias_grad(op, gw, gy)


def _gemm_conv_backward(x: np.ndarray, w: np.ndarray, gy: np.ndarray, groups: int,
                        geometry: tuple[int, ...], need_dx: bool, run: Run,
                        need_dw: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
    """dx (None unless `need_dx`) and dw (None unless `need_dw`) of a `conv2d_forward`
    conv: geometry is (sh, sw, ph, pw, dh, dw)."""
    cout, cig, kh, kw = w.shape
    gx = np.zeros_like(x) if need_dx else NO_GRAD
    cog, k = cout // groups, cig * kh * kw
    parts = np.zeros((run.threads if need_dw else 1, groups, cog, k), F32)
    conv_b.conv2d_backward(x, w.reshape(groups, cog, k), gy, gx, parts, kh, kw, *geometry,
                           need_dx, need_dw, run.threads)
    gw = thread_total(parts).reshape(w.shape)
    return (gx if need_dx else None), (gw if need_dw else None)


def _tiled_conv_backward(op, gy: np.ndarray, saved: Padded, w: np.ndarray, run: Run,
                         needs: list[bool]) -> Grads:
    # the weight gradient from the padded NHWC input the forward kept, by `_wgrad_nhwc`'s
    # tiles where they pay (`nhwc_weight_grad_pays`) or as a GEMM, else by `_wgrad` on
    # phase planes (`planes_pay`; the forward's, where it ran on them); the input
    # gradient of a stride-1 conv is a conv of gy (seed 003's full convolution), on its
    # phase planes for few input channels where vectors are 512 bits
    # (`planes_input_grad`), else tiled, on dy's padded NHWC copy, which the NHWC weight
    # gradient then reads too (`shares_padded_dy`); of others summed in registers where
    # that pays (`strided_dx_pays`), else added back window by window
    cout, cin, kh, kw = w.shape
    x = saved.x
    # dy as its producer wrote it, zero-padded in NHWC (`padded_dy`): the paths taken
    # below read that alone
    gp = gy.xp if isinstance(gy, conv_b.PaddedNHWC) else None
    direct_dx = needs[0] and tiled_input_grad(op, x.shape)
    add_dx = needs[0] and not direct_dx
    nhwc_dw = saved.xp is not None and conv_b.nhwc_weight_grad_pays(cout, op.stride)
    gemm_dw = saved.xp is not None and not nhwc_dw
    gx = gw = dy_planes = None
    if add_dx and isinstance(gy, np.ndarray) and strided_dx_pays(op, cin, cout):
        gx = strided_k.input_gradient(gy, w, x.shape, op.stride, op.pad, op.dilation[0],
                                      run.threads)
        add_dx = False
    if direct_dx and planes_input_grad(cin, x.shape, kw, op.dilation[1]):
        gx, dy_planes = planes_k.conv2d_input_grad(gy, w, x.shape, op.pad, op.dilation,
                                                   run.threads)
    elif direct_dx:
        gx = np.empty(x.shape, F32)
        gp = conv_b.conv2d_input_grad(gy, w, gx, op.pad, op.dilation[0], run.threads)
    if nhwc_dw:
        gw = conv_b.conv2d_weight_grad_nhwc(
            saved.xp, gy, op.kernel, op.stride, op.dilation[0], run.threads, gp,
            conv_b.dy_padding(op.kernel, op.pad, op.dilation[0]))
    elif not gemm_dw:
        planes = saved.planes
        if planes is None:
            planes = planes_k.phase_planes(x, gy.shape[2:], op.kernel, op.stride, op.pad,
                                           op.dilation)
        gw = wgrad_planes_k.conv2d_weight_grad(planes, gy, 1, op.kernel, run.threads,
                                               wide=conv_b.WIDE, dy_planes=dy_planes)
    if gemm_dw or add_dx:
        n, _, h, wi = x.shape
        xp_shape = (n, h + 2 * op.pad[0], wi + 2 * op.pad[1], cin)
        gxp = np.zeros(xp_shape, F32) if add_dx else NO_GRAD
        w2 = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(cout, kh * kw * cin)
        parts = np.zeros((run.threads if gemm_dw else 1, cout, kh * kw * cin), F32)
        # without the GEMM, only xp's shape is read: gxp has it
        conv_b.conv2d_nhwc_backward(saved.xp if gemm_dw else gxp, gy, w2, parts, gxp, kh,
                                    kw, *op.stride, op.dilation[0], gemm_dw, add_dx,
                                    run.threads)
        if gemm_dw:
            gw = thread_total(parts)
            gw = np.ascontiguousarray(gw.reshape(cout, kh, kw, cin).transpose(0, 3, 1, 2))
    if add_dx:
        gx = np.empty(x.shape, F32)
        conv_b.from_padded_nhwc(gxp, gx, *op.pad)
    return [gx], _with_bias_grad(op, gw, gy)


def _with_bias_grad(op, gw: np.ndarray, gy: np.ndarray) -> Weights:
    grads = {"weight": gw}
    if op.bias:
        grads["bias"] = np.empty(op.out_channels, F32)
        conv_b.channel_sums(gy, grads["bias"])
    return grads


def fused_conv_forward(node: Node, xs: list[np.ndarray], wts: Weights, run: Run
                       ) -> tuple[np.ndarray, tuple]:
    # act(conv(x) + residual); saved: x and the activation's input
    op = node.op
    pre, x = conv_forward(node, xs[:1], wts, run)
    if op.residual:
        pre += xs[1]
    if op.act is None:
        return pre, (x, pre)
    out = np.empty_like(pre)
    activate(pre, out, ACT_CODES[op.act])
    return out, (x, pre)


def fused_conv_backward(node: Node, gy: np.ndarray, saved: tuple, wts: Weights, run: Run,
                        needs: list[bool]) -> Grads:
    x, pre = saved
    if node.op.act is not None:
        gy = activation_grad(pre, gy, ACT_CODES[node.op.act])
    (gx,), grads = conv_backward(node, gy, x, wts, run, needs[:1])
    return [gx, gy] if node.op.residual else [gx], grads
