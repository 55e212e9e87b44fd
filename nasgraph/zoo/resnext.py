"""ResNeXt (Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural
Networks"): the 3x3 conv of each bottleneck is split into `cardinality` parallel groups, a
grouped convolution. At equal parameters and MACs, more and thinner paths beat a wider or
deeper network, which made cardinality a third dimension of design beside width and depth.
The models are torchvision's, named `resnext<depth>_<cardinality>x<width per group>d`.
"""

from __future__ import annotations

from functools import partial

from nasgraph.zoo._registry import register
from nasgraph.zoo.resnet import resnet

_VARIANTS = {
    "resnext50_32x4d": ([3, 4, 6, 3], 32, 4),
    "resnext101_32x8d": ([3, 4, 23, 3], 32, 8),
}

for _name, (_layers, _groups, _width) in _VARIANTS.items():
    register(_name, family="resnext", num_classes=1000, input_shape=(3, 224, 224),
             reference=f"torchvision:{_name}", min_input=(3, 32, 32))(
        partial(resnet, _name, "bottleneck", _layers, groups=_groups,
                width_per_group=_width))
