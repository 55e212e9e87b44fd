"""PyramidNet (Han et al. 2017, "Deep Pyramidal Residual Networks"): instead of doubling
the width at each downsampling, every block widens a little, linearly, by alpha / N in
all, so that no single block carries the burden of a width jump. The shortcuts stay
parameter-free: average-pooled where the block strides and zero-padded to the new width.
PyramidNet-110 with alpha = 48 matches far larger ResNets on CIFAR with 1.7M parameters.
"""

from __future__ import annotations

from functools import partial

from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import pyramid_stage, pyramid_widths
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]


def pyramidnet_cifar(name: str, depth: int, alpha: float, num_classes: int = 10,
                     input_shape: Shape = (3, 32, 32)) -> Graph:
    """PyramidNet with basic blocks: a 3x3 conv and BN to 16 channels, three stages of
    (depth - 2) / 6 blocks widening to 16 + alpha channels, BN-ReLU, global average pooling
    and a linear classifier (as in the authors' PyTorch code)."""
    if (depth - 2) % 6:
        raise NasgraphError(f"PyramidNet depth {depth} is not 6n+2; hint: 110, 164, 200, ...")
    n = (depth - 2) // 6
    widths = pyramid_widths(16, alpha, 3 * n)
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    x = b.bn(b.conv(x, 16, 3, padding=1, bias=False, name="conv1"), name="bn1")
    for stage in range(3):
        with b.scope(f"layer{stage + 1}"):
            x = pyramid_stage(b, x, widths[stage * n:(stage + 1) * n],
                              stride=1 if stage == 0 else 2)
    x = b.relu(b.bn(x, name="bn_final"))
    x = b.flatten(b.gap(x, name="avgpool"))
    b.output(b.linear(x, num_classes, name="fc"))
    return b.build()


register("pyramidnet110_a48_cifar", family="pyramidnet", num_classes=10,
         input_shape=(3, 32, 32), min_input=(3, 8, 8))(
    partial(pyramidnet_cifar, "pyramidnet110_a48_cifar", 110, 48))
