"""Training rules of depthwise convs (one input channel a group), on the three layouts
they have kernels of their own for: the batch in the lanes (`_depthwise_lanes`), flat
planes (`_depthwise_flat`) and NHWC (`_depthwise`). What each forward keeps for its
backward (`Lanes`, `Flat`, `NHWC`), and the backward. `_conv_rules.conv_forward` asks
`_conv_paths` which one takes a conv; depthwise convs on the phase planes stay there,
beside the stems of one input channel that share them. docs/numba.md, "Depthwise convs
in NHWC", "Depthwise convs on flat planes", "Depthwise convs with the batch in the
lanes", "The depthwise input gradient as a conv"."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nasgraph.backends.numba import _backward_conv as conv_b
from nasgraph.backends.numba import _depthwise as depthwise_k
from nasgraph.backends.numba import _depthwise_flat as flat_k
from nasgraph.backends.numba import _depthwise_lanes as lanes_k
from nasgraph.backends.numba._rule import (
    F32,
    NO_GRAD,
    NO_RES,
    Normalized,
    Run,
    Summed,
    thread_total,
)


class Lanes(NamedTuple):
    """What a depthwise conv run with the batch in the lanes
    (`_conv_paths.lanes_depthwise`) keeps for its backward: its input, or the BatchNorm
    output it was given unwritten (`Normalized`), normalized again there."""

    x: np.ndarray | Normalized


class Flat(NamedTuple):
    """What a depthwise conv (or a stem of one input channel) run on flat planes
    (`_conv_paths.flat_depthwise`) keeps for its backward: its input."""

    x: np.ndarray


class NHWC(NamedTuple):
    """What a depthwise conv run in NHWC (`_conv_paths.depthwise_nhwc`) keeps for its
    backward: its input zero-padded in NHWC, and its weights packed tap by tap (kh*kw x
    C)."""

    xp: np.ndarray
    w: np.ndarray


SAVED = (Lanes, Flat, NHWC)


def _biases(op, bias: np.ndarray, cout: int) -> np.ndarray:
    # the conv's biases, or zeros: the depthwise kernels always add them
    return bias if op.bias else np.zeros(cout, F32)


def _norm(x: Normalized) -> tuple:
    # `_depthwise_lanes`'s normalization of its input
    return x.scale, x.shift, x.mean, x.act, True


def _lanes_geometry(op, x_shape: tuple[int, ...]) -> lanes_k.LanesGeometry:
    return lanes_k.lanes_geometry(*x_shape[2:], op.stride, op.pad, op.dilation)


def lanes_forward(op, x: np.ndarray | Normalized, w: np.ndarray, bias: np.ndarray,
                  out: np.ndarray, run: Run) -> Lanes:
    """out = the conv of x (N x C x H x W, or the BatchNorm output before it left
    unwritten, normalized here) with the batch in the lanes."""
    cout = w.shape[0]
    normalized = isinstance(x, Normalized)
    lanes_k.depthwise_forward(x.x if normalized else x, w.reshape(cout, 9),
                              _biases(op, bias, cout), out, _lanes_geometry(op, x.shape),
                              run.threads, _norm(x) if normalized else lanes_k.NO_NORM)
    return Lanes(x)


def flat_forward(op, x: np.ndarray, w: np.ndarray, bias: np.ndarray, out: np.ndarray,
                 run: Run) -> Flat:
    """out = the 3x3 conv of x (N x C x H x W) on flat planes."""
    cout = w.shape[0]
    flat_k.depthwise_forward(x, w.reshape(cout, 9), _biases(op, bias, cout), out,
                             flat_k.flat_geometry(*x.shape[2:], op.stride[0]), run.threads)
    return Flat(x)


def nhwc_forward(op, xp: np.ndarray, w: np.ndarray, bias: np.ndarray, out: np.ndarray,
                 run: Run) -> NHWC:
    """out (NCHW) = the conv of xp, its input zero-padded in NHWC (as the conv's copy or
    the BatchNorm before it wrote it)."""
    cout, _, kh, kw = w.shape
    taps = depthwise_k.pack_weights(w)
    ho, wo = out.shape[2:]
    conv = (depthwise_k.conv2d_depthwise_nhwc_1 if run.threads == 1
            else depthwise_k.conv2d_depthwise_nhwc)
    conv(xp.reshape(xp.shape[0], xp.shape[1], -1), 0, taps, _biases(op, bias, cout), NO_RES,
         out, 0, kh, kw, *op.stride, *op.dilation, 0, 0, ho, wo, -1, -1, run.threads)
    return NHWC(xp, taps)


def backward(op, gy: np.ndarray, saved: Lanes | Flat | NHWC, w: np.ndarray, run: Run,
             need_dx: bool) -> tuple[np.ndarray | Summed | None, np.ndarray]:
    """The input gradient (None unless `need_dx`) and the weight gradient (float32,
    shaped as w) of the conv whose forward kept `saved`; the bias's is the caller's."""
    cout, _, kh, kw = w.shape
    if isinstance(saved, Lanes):
        # where the BatchNorm before it left it its output, normalized again here, and
        # that BatchNorm's backward sums taken too (`Summed`)
        normalized = isinstance(saved.x, Normalized)
        x = saved.x.x if normalized else saved.x
        gx = np.empty_like(x) if need_dx else NO_GRAD
        parts = np.zeros((run.threads, cout, 9))
        sums = np.zeros((run.threads, 2, cout)) if normalized and need_dx else lanes_k.NO_SUMS
        lanes_k.depthwise_backward(x, gy, w.reshape(cout, 9), gx, parts,
                                   _lanes_geometry(op, x.shape), need_dx, run.threads,
                                   _norm(saved.x) if normalized else lanes_k.NO_NORM, sums)
        gw = thread_total(parts).astype(F32).reshape(w.shape)
        if not need_dx:
            return None, gw
        return (Summed(gx, thread_total(sums)) if normalized else gx), gw
    if isinstance(saved, Flat):
        x = saved.x
        gx = np.empty_like(x) if need_dx else NO_GRAD
        parts = np.zeros((run.threads, cout, 9))
        flat_k.depthwise_backward(x, gy, w.reshape(cout, 9), gx, parts,
                                  flat_k.flat_geometry(*x.shape[2:], op.stride[0]), need_dx,
                                  run.threads)
        return gx if need_dx else None, thread_total(parts).astype(F32).reshape(w.shape)
    xp = saved.xp
    n, hp, wp, _ = xp.shape
    ph, pw = op.pad
    gx = np.empty((n, cout, hp - 2 * ph, wp - 2 * pw), F32) if need_dx else NO_GRAD
    parts = np.zeros((run.threads, kh * kw, cout))
    pad = _dy_padding(op) if need_dx else None
    if pad is None:
        depthwise_k.depthwise_nhwc_backward(xp, gy, saved.w, gx, parts, kh, kw, *op.stride,
                                            *op.dilation, ph, pw, need_dx, run.threads)
    else:
        _nhwc_grads(op, xp, gy, saved.w, gx, parts, pad, run)
    gw = np.ascontiguousarray(thread_total(parts).T, F32).reshape(w.shape)
    return gx if need_dx else None, gw


def _dy_padding(op) -> tuple[int, int] | None:
    """How a stride-1 depthwise conv in NHWC pads dy for its input gradient, a
    depthwise conv of dy with the taps flipped (dilation times the kernel's reach less
    the padding, each way); None for strided convs, and where the padding exceeds that
    reach, which `depthwise_nhwc_backward` takes."""
    if op.stride != (1, 1):
        return None
    pad = tuple(d * (k - 1) - p for d, k, p in zip(op.dilation, op.kernel, op.pad,
                                                   strict=True))
    return pad if min(pad) >= 0 else None


def _nhwc_grads(op, xp: np.ndarray, gy: np.ndarray, taps: np.ndarray, gx: np.ndarray,
                parts: np.ndarray, pad: tuple[int, int], run: Run) -> None:
    # a stride-1 depthwise conv's gradients in NHWC from dy copied once, zero-padded by
    # `pad` (`_dy_padding`): the weight gradient from its interior, the input gradient
    # the forward's kernel on it with the taps flipped, written into gx in NCHW
    # (docs/numba.md, "The depthwise input gradient as a conv"). Where no input gradient
    # is needed, `depthwise_nhwc_backward` is faster: it copies dy a sample at a time
    kh, kw = op.kernel
    gp = conv_b.padded_nhwc(gy, pad, run.threads)
    depthwise_k.depthwise_nhwc_weight_grad(xp, gp, *pad, parts, kh, kw, *op.dilation,
                                           run.threads)
    c, (h, w) = gx.shape[1], gx.shape[2:]
    conv = (depthwise_k.conv2d_depthwise_nhwc_1 if run.threads == 1
            else depthwise_k.conv2d_depthwise_nhwc)
    conv(gp.reshape(gp.shape[0], gp.shape[1], -1), 0, np.ascontiguousarray(taps[::-1]),
         np.zeros(c, F32), NO_RES, gx, 0, kh, kw, 1, 1, *op.dilation, 0, 0, h, w, -1, -1,
         run.threads)
