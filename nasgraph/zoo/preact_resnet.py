"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks"):
moving batch normalization and ReLU before each conv leaves the shortcut a pure identity
from any block to any later one, so signals and gradients pass unchanged through the whole
network. With it a 1001-layer ResNet trains easily and reaches 4.6% error on CIFAR-10.
"""

from __future__ import annotations

from functools import partial

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import ResidualBlock, residual_stage
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]


def preact_resnet(name: str, kind: str, planes: tuple[int, ...], layers: list[int],
                  stem: int, final_act: bool, num_classes: int = 10,
                  input_shape: Shape = (3, 32, 32)) -> Graph:
    """A CIFAR pre-activation ResNet: a 3x3 conv to `stem` channels, then one stage per
    entry of `planes` and `layers` (the first at stride 1, the others at 2), optionally
    BN-ReLU (`final_act`), global average pooling and a linear classifier."""
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    x = b.conv(x, stem, 3, padding=1, bias=False, name="conv1")
    for stage, (width, depth) in enumerate(zip(planes, layers, strict=True)):
        cfg = ResidualBlock(kind=kind, planes=width, stride=1 if stage == 0 else 2,
                            preact=True)
        with b.scope(f"layer{stage + 1}"):
            x = residual_stage(b, x, cfg, depth)
    if final_act:
        x = b.relu(b.bn(x, name="bn"))
    x = b.flatten(b.gap(x, name="avgpool"))
    b.output(b.linear(x, num_classes, name="linear"))
    return b.build()


# ResNet-18 with pre-activation basic blocks as the widely used CIFAR-10 code has it
# (kuangliu/pytorch-cifar): 64 to 512 channels, and no BN-ReLU before the pooling.
register("preact_resnet18", family="preact_resnet", num_classes=10, input_shape=(3, 32, 32),
         min_input=(3, 8, 8))(
    partial(preact_resnet, "preact_resnet18", "basic", (64, 128, 256, 512), [2, 2, 2, 2],
            64, False))

# The paper's ResNet-1001: 9n+2 layers with n = 111 bottlenecks per stage, outputs of 64,
# 128 and 256 channels, and BN-ReLU after the last block.
register("preact_resnet1001_cifar", family="preact_resnet", num_classes=10,
         input_shape=(3, 32, 32), min_input=(3, 8, 8))(
    partial(preact_resnet, "preact_resnet1001_cifar", "bottleneck", (16, 32, 64),
            [111, 111, 111], 16, True))
