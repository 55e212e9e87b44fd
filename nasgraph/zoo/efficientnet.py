"""EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks") showed that depth, width and input resolution should be scaled together:
one compound coefficient grows all three by fixed ratios found by a small grid search, and
the family B0-B7 spans 0.39 to 37 GMACs along that single curve. The base network B0 was
itself found by architecture search (as in MnasNet) over MBConv blocks: MobileNet v2's
inverted residual with a squeeze-and-excitation gate and the SiLU (swish) activation. It is
the clearest case of searching a block first and scaling the network afterwards.
"""

from __future__ import annotations

import math
from functools import partial

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import InvertedResidual, conv_unit, inverted_residual_stage, make_divisible
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]

# B0's stages: expansion, kernel, first stride, output channels, repeats (the paper's Table 1).
_B0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def efficientnet(name: str, width_mult: float = 1.0, depth_mult: float = 1.0,
                 dropout: float = 0.2, num_classes: int = 1000,
                 input_shape: Shape = (3, 224, 224), bn_eps: float = 1e-5) -> Graph:
    """An EfficientNet-B* exactly as torchvision builds it, scaled from B0 by `width_mult`
    (channels, rounded to multiples of 8) and `depth_mult` (repeats, rounded up).

    Stochastic depth is the identity at inference and has no parameters: it is left out.
    """
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    with b.scope("features"):
        with b.scope("0"):  # 3 x H x W -> 32 x H/2 x W/2
            x = conv_unit(b, x, make_divisible(32 * width_mult), 3, stride=2, act="silu",
                          eps=bn_eps, names=("0", "1", "2"))
        for stage, (t, kernel, stride, channels, repeats) in enumerate(_B0_STAGES, start=1):
            cfg = InvertedResidual(out_channels=make_divisible(channels * width_mult),
                                   expand_ratio=t, kernel=kernel, stride=stride, se_ratio=0.25,
                                   act="silu", se_act="silu", divisor=8, bn_eps=bn_eps)
            with b.scope(str(stage)):
                x = inverted_residual_stage(b, x, cfg, math.ceil(repeats * depth_mult))
        with b.scope(str(len(_B0_STAGES) + 1)):
            x = conv_unit(b, x, 4 * x.channels, 1, act="silu", eps=bn_eps,
                          names=("0", "1", "2"))
    x = b.flatten(b.gap(x, name="avgpool"))
    with b.scope("classifier"):
        x = b.dropout(x, dropout, name="0")
        x = b.linear(x, num_classes, name="1")
    b.output(x)
    return b.build()


register("efficientnet_b0", family="efficientnet", num_classes=1000, input_shape=(3, 224, 224),
         reference="torchvision:efficientnet_b0", min_input=(3, 32, 32))(
    partial(efficientnet, "efficientnet_b0", 1.0, 1.0, 0.2))
