"""MobileNet (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications"; Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks") made the depthwise-separable convolution the unit of a whole network: a
per-channel k x k filter followed by a 1x1 mix costs about k*k times fewer multiply-adds than
a full convolution, and two multipliers trade width and resolution for accuracy. MobileNet v2
turned the residual block inside out: the shortcut joins thin bottlenecks, each block expands
them sixfold, filters depthwise in the wide space, and projects back linearly, because a ReLU
in a narrow space destroys information. Its inverted residual is the block that EfficientNet
and most later mobile networks search over.
"""

from __future__ import annotations

from functools import partial

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import (
    InvertedResidual,
    SeparableConv,
    conv_unit,
    inverted_residual,
    make_divisible,
    separable_stage,
)
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]

# MobileNet v1 (timm's arch string dsa_r{depth}_k3_s{stride}_c{channels}): one stage each.
_V1_STAGES = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]

# MobileNet v2: expansion t, channels c, repeats n, first stride s (the paper's Table 2).
_V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v1(name: str = "mobilenet_v1", num_classes: int = 1000,
                 input_shape: Shape = (3, 224, 224), width_mult: float = 1.0) -> Graph:
    """MobileNet v1 as timm's `mobilenetv1_100` builds it: ReLU6, no residuals, no head conv.

    `width_mult` is the paper's width multiplier alpha (timm's `channel_multiplier`).
    """
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    # 3 x H x W -> 32 x H/2 x W/2
    x = conv_unit(b, x, make_divisible(32 * width_mult), 3, stride=2, act="relu6",
                  names=("conv_stem", "bn1", None))
    with b.scope("blocks"):
        for stage, (channels, depth, stride) in enumerate(_V1_STAGES):
            cfg = SeparableConv(out_channels=make_divisible(channels * width_mult),
                                stride=stride, act="relu6")
            with b.scope(str(stage)):
                x = separable_stage(b, x, cfg, depth)
    x = b.flatten(b.gap(x, name="global_pool"))
    b.output(b.linear(x, num_classes, name="classifier"))
    return b.build()


def mobilenet_v2(name: str = "mobilenet_v2", num_classes: int = 1000,
                 input_shape: Shape = (3, 224, 224), width_mult: float = 1.0,
                 dropout: float = 0.2) -> Graph:
    """MobileNet v2 exactly as torchvision builds it (`features/0` ... `features/18`)."""
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    with b.scope("features"):
        with b.scope("0"):  # 3 x H x W -> 32 x H/2 x W/2
            x = conv_unit(b, x, make_divisible(32 * width_mult), 3, stride=2, act="relu6",
                          names=("0", "1", "2"))
        index = 1
        for t, c, n, s in _V2_STAGES:
            out = make_divisible(c * width_mult)
            for k in range(n):
                cfg = InvertedResidual(out_channels=out, expand_ratio=t,
                                       stride=s if k == 0 else 1, act="relu6")
                with b.scope(str(index)):
                    x = inverted_residual(b, x, cfg, body="conv", flat_projection=True)
                index += 1
        with b.scope(str(index)):
            x = conv_unit(b, x, make_divisible(1280 * max(1.0, width_mult)), 1, act="relu6",
                          names=("0", "1", "2"))
    x = b.flatten(b.gap(x))
    with b.scope("classifier"):
        x = b.dropout(x, dropout, name="0")
        x = b.linear(x, num_classes, name="1")
    b.output(x)
    return b.build()


register("mobilenet_v1", family="mobilenet", num_classes=1000, input_shape=(3, 224, 224),
         reference="timm:mobilenetv1_100", min_input=(3, 32, 32))(
    partial(mobilenet_v1, "mobilenet_v1"))
register("mobilenet_v2", family="mobilenet", num_classes=1000, input_shape=(3, 224, 224),
         reference="torchvision:mobilenet_v2", min_input=(3, 32, 32))(
    partial(mobilenet_v2, "mobilenet_v2"))
