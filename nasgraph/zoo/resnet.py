"""ResNet (He et al. 2015): residual blocks make depth trainable; ResNeXt and wide ResNets
widen them. ImageNet variants exactly as torchvision builds them (v1.5: stride on the 3x3).
"""

from __future__ import annotations

from functools import partial

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import ResidualBlock, residual_stage
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]


def resnet(name: str, kind: str, layers: list[int], num_classes: int = 1000,
           input_shape: Shape = (3, 224, 224), groups: int = 1, width_per_group: int = 64,
           dilate: tuple[bool, bool, bool] = (False, False, False),
           classifier: bool = True) -> Graph:
    """An ImageNet ResNet with `layers` blocks per stage.

    `dilate` replaces the stride of stages 2-4 by dilation (for segmentation backbones);
    `classifier=False` ends at the last stage's features.
    """
    b = GraphBuilder(name)
    x = b.input(*input_shape)
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
    if classifier:
        x = b.flatten(b.gap(x, name="avgpool"))
        x = b.linear(x, num_classes, name="fc")
    b.output(x)
    return b.build()


_VARIANTS = {
    "resnet18": ("basic", [2, 2, 2, 2], {}),
    "resnet34": ("basic", [3, 4, 6, 3], {}),
    "resnet50": ("bottleneck", [3, 4, 6, 3], {}),
    "resnet101": ("bottleneck", [3, 4, 23, 3], {}),
    "resnet152": ("bottleneck", [3, 8, 36, 3], {}),
}

for _name, (_kind, _layers, _extra) in _VARIANTS.items():
    register(_name, family="resnet", num_classes=1000, input_shape=(3, 224, 224),
             reference=f"torchvision:{_name}", min_input=(3, 32, 32))(
        partial(resnet, _name, _kind, _layers, **_extra))
