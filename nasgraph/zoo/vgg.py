"""VGG (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image
Recognition"): only 3x3 convs, stacked two to four deep between 2x2 max pools, the width
doubling from 64 to 512. Two stacked 3x3 convs see as far as one 5x5 with fewer parameters
and an extra nonlinearity; the uniform design showed that depth (11 to 19 layers) is what
improves accuracy. The `_bn` variants add batch normalization after each conv, as
torchvision does.
"""

from __future__ import annotations

from functools import partial

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]

# Channels of each 3x3 conv, "M" for a 2x2 max pool: the paper's configurations A, B, D, E.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def vgg(name: str, config: list[int | str], batch_norm: bool, num_classes: int = 1000,
        input_shape: Shape = (3, 224, 224), dropout: float = 0.5) -> Graph:
    """A VGG network: `config`'s convs and pools, then three fully connected layers."""
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    index = 0  # position in torchvision's nn.Sequential, which names the weights
    with b.scope("features"):
        for layer in config:
            if layer == "M":
                x = b.maxpool(x, 2, stride=2, name=str(index))
                index += 1
                continue
            x = b.conv(x, int(layer), 3, padding=1, name=str(index))
            if batch_norm:
                index += 1
                x = b.bn(x, name=str(index))
            x = b.relu(x, name=str(index + 1))
            index += 2
    x = b.flatten(b.adaptive_avgpool(x, (7, 7), name="avgpool"))  # 512 x 7 x 7 -> 25088
    with b.scope("classifier"):
        x = b.dropout(b.relu(b.linear(x, 4096, name="0"), name="1"), dropout, name="2")
        x = b.dropout(b.relu(b.linear(x, 4096, name="3"), name="4"), dropout, name="5")
        x = b.linear(x, num_classes, name="6")
    b.output(x)
    return b.build()


for _name, _config in CONFIGS.items():
    for _bn in (False, True):
        _full = _name + ("_bn" if _bn else "")
        register(_full, family="vgg", num_classes=1000, input_shape=(3, 224, 224),
                 reference=f"torchvision:{_full}", min_input=(3, 32, 32))(
            partial(vgg, _full, _config, _bn))
