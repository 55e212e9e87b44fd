"""DenseNet (Huang et al. 2017, "Densely Connected Convolutional Networks"): within a dense
block every layer receives the concatenated feature maps of all layers before it and adds
only a few new ones (the growth rate k = 32). Features are reused rather than relearned, so
the network is deep and accurate with few parameters: DenseNet-121 matches ResNet-50 with 8M
parameters instead of 25M. DenseNet-BC adds a 1x1 bottleneck in each layer and halves the
channels at every transition; these are torchvision's models.
"""

from __future__ import annotations

from functools import partial

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import DenseBlock, Transition, dense_block, transition
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]


def densenet(name: str, block_config: tuple[int, ...], growth_rate: int = 32,
             num_init_features: int = 64, bn_size: int = 4, compression: float = 0.5,
             num_classes: int = 1000, input_shape: Shape = (3, 224, 224)) -> Graph:
    """A DenseNet-BC for ImageNet: a 7x7 stem and max pool, dense blocks of `block_config`
    layers joined by transitions, BN-ReLU, global average pooling and a linear classifier."""
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    with b.scope("features"):
        # 3 x H x W -> 64 x H/4 x W/4
        x = b.conv(x, num_init_features, 7, stride=2, padding=3, bias=False, name="conv0")
        x = b.relu(b.bn(x, name="norm0"), name="relu0")
        x = b.maxpool(x, 3, stride=2, padding=1, name="pool0")
        for k, num_layers in enumerate(block_config, start=1):
            with b.scope(f"denseblock{k}"):
                x = dense_block(b, x, DenseBlock(num_layers=num_layers,
                                                 growth_rate=growth_rate, bn_size=bn_size))
            if k < len(block_config):
                with b.scope(f"transition{k}"):
                    x = transition(b, x, Transition(compression=compression))
        x = b.bn(x, name="norm5")
    x = b.flatten(b.gap(b.relu(x), name="avgpool"))
    b.output(b.linear(x, num_classes, name="classifier"))
    return b.build()


_VARIANTS = {
    "densenet121": (6, 12, 24, 16),
    "densenet169": (6, 12, 32, 32),
    "densenet201": (6, 12, 48, 32),
}

for _name, _blocks in _VARIANTS.items():
    register(_name, family="densenet", num_classes=1000, input_shape=(3, 224, 224),
             reference=f"torchvision:{_name}", min_input=(3, 29, 29))(
        partial(densenet, _name, _blocks))
