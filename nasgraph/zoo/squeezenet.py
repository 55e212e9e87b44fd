"""SqueezeNet (Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer
parameters and <0.5MB model size"): fire modules squeeze the channels with 1x1 convs before
expanding them with a mix of 1x1 and 3x3 convs, pooling is delayed so that most layers see
large feature maps, and a 1x1 conv with global pooling replaces the fully connected layers.
It reaches AlexNet's accuracy with 1.2M parameters. Version 1.1 (torchvision's) starts with
a 3x3 conv and pools earlier, for 2.4x less computation at the same accuracy.
"""

from __future__ import annotations

from functools import partial

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import Fire, fire
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]

# stem (channels, kernel), then fire modules as (squeeze, expand) and "M" for a 3x3/2 pool
_VERSIONS: dict[str, tuple[tuple[int, int], list]] = {
    "squeezenet1_0": ((96, 7), ["M", (16, 64), (16, 64), (32, 128), "M", (32, 128), (48, 192),
                                (48, 192), (64, 256), "M", (64, 256)]),
    "squeezenet1_1": ((64, 3), ["M", (16, 64), (16, 64), "M", (32, 128), (32, 128), "M",
                                (48, 192), (48, 192), (64, 256), (64, 256)]),
}


def squeezenet(name: str, num_classes: int = 1000, input_shape: Shape = (3, 224, 224),
               dropout: float = 0.5) -> Graph:
    """SqueezeNet `name` ("squeezenet1_0" or "squeezenet1_1"), as torchvision builds it."""
    (channels, kernel), layers = _VERSIONS[name]
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    with b.scope("features"):
        x = b.relu(b.conv(x, channels, kernel, stride=2, name="0"), name="1")
        for index, layer in enumerate(layers, start=2):
            if layer == "M":
                x = b.maxpool(x, 3, stride=2, ceil_mode=True, name=str(index))
                continue
            with b.scope(str(index)):
                x = fire(b, x, Fire(squeeze=layer[0], expand=layer[1]))
    with b.scope("classifier"):  # a 1x1 conv per class, then global pooling
        x = b.dropout(x, dropout, name="0")
        x = b.relu(b.conv(x, num_classes, 1, name="1"), name="2")
        x = b.gap(x, name="3")
    b.output(b.flatten(x))
    return b.build()


for _name, _min in {"squeezenet1_0": 21, "squeezenet1_1": 17}.items():
    register(_name, family="squeezenet", num_classes=1000, input_shape=(3, 224, 224),
             reference=f"torchvision:{_name}", min_input=(3, _min, _min))(
        partial(squeezenet, _name))
