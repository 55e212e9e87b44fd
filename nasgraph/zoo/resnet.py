"""ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition"): each block learns
a residual F(x) added to an identity shortcut, so that a deeper network can always fall back
on the shallower one it contains, and depth became trainable: 152 layers on ImageNet, over
a thousand on CIFAR-10. The ImageNet models are exactly torchvision's (v1.5: the stride on the
bottleneck's 3x3 conv); the CIFAR-10 models are the paper's 6n+2-layer networks with 16, 32
and 64 filters and parameter-free (zero-padded) shortcuts.
"""

from __future__ import annotations

from functools import partial

from nasgraph.ir import Graph, GraphBuilder, Tensor
from nasgraph.motifs import ResidualBlock, residual_stage
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]


def resnet_features(b: GraphBuilder, x: Tensor, kind: str, layers: list[int], groups: int = 1,
                    width_per_group: int = 64,
                    dilate: tuple[bool, bool, bool] = (False, False, False)) -> Tensor:
    """The stem and the four stages of an ImageNet ResNet, in the builder's current scope.

    `dilate` replaces the stride of stages 2-4 by dilation (for segmentation backbones).
    """
    # 3 x H x W -> 64 x H/4 x W/4
    x = b.conv(x, 64, 7, stride=2, padding=3, bias=False, name="conv1")
    x = b.relu(b.bn(x, name="bn1"))
    x = b.maxpool(x, 3, stride=2, padding=1, name="maxpool")
    dilation = 1
    for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        stride, first_dilation = (1 if stage == 0 else 2), dilation
        if stage > 0 and dilate[stage - 1]:  # trade this stage's stride for dilation
            dilation, stride = dilation * stride, 1
        cfg = ResidualBlock(kind=kind, planes=planes, stride=stride, groups=groups,
                            base_width=width_per_group, dilation=first_dilation)
        with b.scope(f"layer{stage + 1}"):
            x = residual_stage(b, x, cfg, depth, dilation=dilation)
    return x


def resnet(name: str, kind: str, layers: list[int], num_classes: int = 1000,
           input_shape: Shape = (3, 224, 224), groups: int = 1, width_per_group: int = 64,
           dilate: tuple[bool, bool, bool] = (False, False, False),
           classifier: bool = True) -> Graph:
    """An ImageNet ResNet with `layers` blocks per stage.

    `groups` and `width_per_group` make ResNeXt and wide ResNets (as torchvision's);
    `dilate` replaces the stride of stages 2-4 by dilation; `classifier=False` ends at the
    last stage's features.
    """
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    x = resnet_features(b, x, kind, layers, groups, width_per_group, dilate)
    if classifier:
        x = b.flatten(b.gap(x, name="avgpool"))
        x = b.linear(x, num_classes, name="fc")
    b.output(x)
    return b.build()


_VARIANTS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}

for _name, (_kind, _layers) in _VARIANTS.items():
    register(_name, family="resnet", num_classes=1000, input_shape=(3, 224, 224),
             reference=f"torchvision:{_name}", min_input=(3, 32, 32))(
        partial(resnet, _name, _kind, _layers))


def resnet_cifar(name: str, n: int, num_classes: int = 10,
                 input_shape: Shape = (3, 32, 32)) -> Graph:
    """The 6n+2-layer CIFAR-10 ResNet (He et al. 2015, section 4.2): a 3x3 conv, three
    stages of n basic blocks with 16, 32 and 64 filters (the last two starting at stride 2),
    global average pooling and a linear classifier. Shortcuts are option A: identity, or
    subsampling and zero channels where the shape changes, so they add no parameters."""
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    x = b.relu(b.bn(b.conv(x, 16, 3, padding=1, bias=False, name="conv1"), name="bn1"))
    for stage, planes in enumerate((16, 32, 64)):
        cfg = ResidualBlock(planes=planes, stride=1 if stage == 0 else 2, shortcut="pad")
        with b.scope(f"layer{stage + 1}"):
            x = residual_stage(b, x, cfg, n)
    x = b.flatten(b.gap(x, name="avgpool"))
    b.output(b.linear(x, num_classes, name="fc"))
    return b.build()


for _name, _n in {"resnet20_cifar": 3, "resnet56_cifar": 9}.items():
    register(_name, family="resnet", num_classes=10, input_shape=(3, 32, 32),
             min_input=(3, 8, 8))(partial(resnet_cifar, _name, _n))
