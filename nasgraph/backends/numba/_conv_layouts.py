"""What a conv asks of the ops beside it, so that it copies nothing: its input written
for the forward zero-padded in NHWC (`padded_x`) or as phase planes (`planes_x`), dy for
the backward likewise (`padded_dy`, `planes_dy`), and what a tiled conv keeps for its
backward (`Padded`), which the backward's answers read. `grad` asks, and the BatchNorm
before or after the conv writes so (`_batchnorm_nhwc`, `_batchnorm`'s planes);
`_conv_rules` runs the conv on what it gets. docs/numba.md, "BatchNorm writes what the
conv reads"."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nasgraph.backends.numba import _backward_conv as conv_b
from nasgraph.backends.numba import _planes as planes_k
from nasgraph.backends.numba import _planes_wgrad as wgrad_planes_k
from nasgraph.backends.numba._conv_paths import (
    depthwise_nhwc,
    flat_depthwise,
    lanes_conv,
    per_group,
    planes_forward,
    planes_input_grad,
    planes_pay,
    subsampled_pointwise,
    tiled_input_grad,
)
from nasgraph.backends.numba.nodes import conv_strategy
from nasgraph.ir import Node


class Padded(NamedTuple):
    """What a conv the executor tiles keeps for its backward: its input; where the
    weight gradient reads the input zero-padded in NHWC (`_wgrad_nhwc`'s tiles, or a
    GEMM of columns copied from it), that; where the forward ran on the input's phase
    planes (`planes_forward`), those, which `_wgrad` reads."""

    xp: np.ndarray | None
    # where xp or planes are kept, its shape alone is read
    x: np.ndarray | conv_b.PaddedNHWC | planes_k.PhasePlanes
    planes: planes_k.PhasePlanes | None = None


def weight_grad_on_planes(op, cout: int, pixels: int) -> bool:
    # whether a tiled conv's weight gradient runs on its input's phase planes
    # (`planes_pay`), not on the NHWC copy the forward read
    return not conv_b.nhwc_weight_grad_pays(cout, op.stride) and planes_pay(op, cout, pixels)


def padded_x(node: Node, x_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The padding with which a conv's forward copies its input into NHWC, where that
    copy is all it reads and keeps of it: the tiled path of `conv_forward` (no groups,
    more than one input channel, not on the phase planes, forward or weight gradient),
    or a depthwise conv in NHWC (`depthwise_in_nhwc`). There the op that produces x may
    write it so (`conv_b.PaddedNHWC`); else None. Measured on an AVX-512 Xeon first
    (docs/numba.md, "BatchNorm writes what the conv reads"); on an AMD EPYC with AVX2,
    whole steps in pairs of processes against the conv's own copy: resnet20 0.974x
    (eight pairs, 0.951-1.024x), the digits candidate at batch 128 0.987x (four,
    0.967-1.019x; docs/numba.md, "The weight gradient on AVX2")."""
    op = node.op
    if node.kind != "conv2d" or x_shape[1] == 1 or subsampled_pointwise(op):
        return None
    if op.groups != 1:
        return op.pad if depthwise_in_nhwc(node, x_shape) else None
    pixels = node.type.height * node.type.width
    if conv_strategy(node, x_shape[1], winograd=False) != "tiled" or planes_forward(
            op, op.out_channels, pixels) or weight_grad_on_planes(op, op.out_channels, pixels):
        return None
    return op.pad


def depthwise_in_nhwc(node: Node, x_shape: tuple[int, ...]) -> bool:
    """Whether `conv_forward` runs a grouped conv as a depthwise conv in NHWC
    (`_depthwise`): one input channel a group, and none of the paths it asks first (a
    conv a group, `per_group`; the batch in the lanes, `lanes_conv`; flat planes,
    `flat_depthwise`), then `depthwise_nhwc`."""
    op = node.op
    cig = x_shape[1] // op.groups
    out_pixels = node.type.height * node.type.width
    return (cig == 1 and not per_group(op, cig, out_pixels) and not lanes_conv(op, x_shape)
            and not flat_depthwise(op, x_shape[2] * x_shape[3])
            and depthwise_nhwc(op, op.out_channels, x_shape[1], out_pixels))


def planes_x(node: Node, x_shape: tuple[int, ...]) -> planes_k.PlanesFor | None:
    """Where a conv's forward runs on its input's phase planes (`planes_forward`), stride
    1, no groups, more than one input channel, a padding of half the kernel's reach: how
    it lays them out, so that the op that produces x may write them
    (`planes_k.PhasePlanes`); else None."""
    op = node.op
    if node.kind != "conv2d" or op.groups != 1 or op.stride != (1, 1) or x_shape[1] == 1 \
            or not _half_reach(op):
        return None
    ho, wo = node.type.height, node.type.width
    if conv_strategy(node, x_shape[1], winograd=False) != "tiled" or not planes_forward(
            op, op.out_channels, ho * wo):
        return None
    return planes_k.PlanesFor((ho, wo), op.kernel, op.pad, op.dilation)


def _half_reach(op) -> bool:
    # a padding of half the kernel's reach on each axis: the output as large as the
    # input at stride 1, dy's planes as wide as the input's (no generator: asked for
    # every conv every step)
    (ph, pw), (kh, kw), (dh, dw) = op.pad, op.kernel, op.dilation
    return 2 * ph == (kh - 1) * dh and 2 * pw == (kw - 1) * dw


def planes_dy(node: Node, saved: object, need_dx: bool) -> planes_k.PlanesFor | None:
    """Where a conv's backward reads dy only as phase planes: a tiled conv without a bias
    whose weight gradient runs on the planes (`Padded` without xp) and whose input
    gradient, wanted, is a conv of dy's planes (`planes_input_grad`), with a padding of
    half the kernel's reach and output channels in whole tiles of `_wgrad`, so that the
    weight gradient reads dy's rows within those planes (`wgrad_planes_k._rows_in_planes`).
    There the op that produces dy may write them; else None."""
    op = node.op
    if node.kind != "conv2d" or op.bias or not need_dx or not isinstance(saved, Padded) \
            or saved.xp is not None:
        return None
    x_shape, kw, dw = saved.x.shape, op.kernel[1], op.dilation[1]
    if not (tiled_input_grad(op, x_shape)
            and planes_input_grad(x_shape[1], x_shape, kw, dw)):
        return None
    if not _half_reach(op):
        return None
    cout = op.out_channels
    rows, _ = wgrad_planes_k._tile(1, cout, conv_b.WIDE, x_shape[1])
    if cout % rows:
        return None
    return planes_k.PlanesFor(x_shape[2:], op.kernel, op.pad, op.dilation)


def padded_dy(node: Node, saved: object, need_dx: bool) -> tuple[int, int] | None:
    """The padding with which a conv's backward would copy dy into NHWC, where it reads
    dy in no other layout: a tiled conv (`Padded`, its input kept in NHWC) without a
    bias and of stride 1 (`tiled_input_grad`), whose weight gradient runs on the NHWC
    tiles and can read dy's copy in place (`conv_b.shares_padded_dy`), and whose input
    gradient, if `need_dx`, is a conv of dy on those tiles (not on the phase planes).
    There the op that produces dy may write it so (`conv_b.PaddedNHWC`); else None.
    Where vectors are 512 bits only: on an AMD EPYC with AVX2, BatchNorm's padded dX
    pass and its sums pass took 1.02-1.33x the time of its NCHW backward and the conv's
    copy alone (16 and 32 channels on 4x4 to 14x14 maps, batch 128, one thread), and
    whole steps without it 0.974x (resnet20), 0.981x and 0.992x (the plain CNN), 1.010x
    and 0.980x (the digits candidate at batch 128) in A/B pairs (docs/numba.md, "The
    padded passes' border on AVX2")."""
    if not conv_b.WIDE:
        return None
    op = node.op
    if node.kind != "conv2d" or op.bias or not isinstance(saved, Padded) or saved.xp is None:
        return None
    x_shape = saved.x.shape
    if not (conv_b.nhwc_weight_grad_pays(op.out_channels, op.stride)
            and tiled_input_grad(op, x_shape)):
        return None
    if need_dx and planes_input_grad(x_shape[1], x_shape, op.kernel[1], op.dilation[1]):
        return None
    pad = conv_b.dy_padding(op.kernel, op.pad, op.dilation[0])
    return pad if conv_b.shares_padded_dy(op.out_channels, pad, node.type.width) else None
