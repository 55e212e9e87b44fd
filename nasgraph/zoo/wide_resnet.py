"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks"): a ResNet
widened by a factor k and made shallower trains faster and is more accurate than a thin,
very deep one, because a thousand-layer ResNet spends most of its blocks contributing
little. WRN-28-10 (28 layers, 10x the filters of a CIFAR ResNet, dropout between the convs
of each pre-activation block) beat the 1001-layer ResNet on CIFAR. torchvision's
`wide_resnet50_2` applies the idea to ImageNet by doubling the bottleneck's inner width.
"""

from __future__ import annotations

from functools import partial

from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import ResidualBlock, residual_stage
from nasgraph.zoo._registry import register
from nasgraph.zoo.resnet import resnet

Shape = tuple[int, int, int]

register("wide_resnet50_2", family="wide_resnet", num_classes=1000, input_shape=(3, 224, 224),
         reference="torchvision:wide_resnet50_2", min_input=(3, 32, 32))(
    partial(resnet, "wide_resnet50_2", "bottleneck", [3, 4, 6, 3], width_per_group=128))


def wide_resnet_cifar(name: str, depth: int, widen: int, dropout: float = 0.0,
                      num_classes: int = 10, input_shape: Shape = (3, 32, 32)) -> Graph:
    """WRN-`depth`-`widen`: a 3x3 conv to 16 channels, three stages of (depth - 4) / 6
    pre-activation basic blocks with 16k, 32k and 64k channels, BN-ReLU, global average
    pooling and a linear classifier. A 1x1 conv projects the shortcut where widths change."""
    if (depth - 4) % 6:
        raise NasgraphError(f"WRN depth {depth} is not 6n+4; hint: 16, 22, 28, 40, ...")
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    x = b.conv(x, 16, 3, padding=1, bias=False, name="conv1")
    for stage, planes in enumerate((16, 32, 64)):
        cfg = ResidualBlock(planes=planes, widen=widen, stride=1 if stage == 0 else 2,
                            preact=True, dropout=dropout)
        with b.scope(f"layer{stage + 1}"):
            x = residual_stage(b, x, cfg, (depth - 4) // 6)
    x = b.relu(b.bn(x, name="bn"))
    x = b.flatten(b.gap(x, name="avgpool"))
    b.output(b.linear(x, num_classes, name="fc"))
    return b.build()


register("wrn_28_10_cifar", family="wide_resnet", num_classes=10, input_shape=(3, 32, 32),
         min_input=(3, 8, 8))(partial(wide_resnet_cifar, "wrn_28_10_cifar", 28, 10, 0.3))
