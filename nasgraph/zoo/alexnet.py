"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks"): five conv layers and three fully connected ones, trained on
two GPUs with ReLUs, dropout and data augmentation, won ILSVRC 2012 by a wide margin and
started the deep learning era in vision. This is torchvision's single-tower version from
Krizhevsky's "One weird trick" (2014), with 64-192-384-256-256 filters.
"""

from __future__ import annotations

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]

# (out channels, kernel, stride, padding) of each conv; "M": a 3x3/2 max pool
_FEATURES = [(64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1),
             (256, 3, 1, 1), "M"]


@register("alexnet", family="alexnet", num_classes=1000, input_shape=(3, 224, 224),
          reference="torchvision:alexnet", min_input=(3, 63, 63))
def alexnet(num_classes: int = 1000, input_shape: Shape = (3, 224, 224),
            dropout: float = 0.5) -> Graph:
    b = GraphBuilder("alexnet")
    x = b.input(*input_shape)
    index = 0  # position in torchvision's nn.Sequential, which names the weights
    with b.scope("features"):
        for layer in _FEATURES:
            if layer == "M":
                x = b.maxpool(x, 3, stride=2, name=str(index))
                index += 1
            else:
                channels, kernel, stride, padding = layer
                x = b.conv(x, channels, kernel, stride=stride, padding=padding,
                           name=str(index))
                x = b.relu(x, name=str(index + 1))
                index += 2
    x = b.flatten(b.adaptive_avgpool(x, (6, 6), name="avgpool"))  # 256 x 6 x 6 -> 9216
    with b.scope("classifier"):
        x = b.dropout(x, dropout, name="0")
        x = b.relu(b.linear(x, 4096, name="1"), name="2")
        x = b.dropout(x, dropout, name="3")
        x = b.relu(b.linear(x, 4096, name="4"), name="5")
        x = b.linear(x, num_classes, name="6")
    b.output(x)
    return b.build()
