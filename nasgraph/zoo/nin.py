"""Network in Network (Lin et al. 2013) replaces each linear filter by a small multilayer
perceptron slid over the image (the mlpconv layer, a conv followed by 1x1 convs), and the
fully connected classifier by global average pooling of one feature map per class. The
1x1 convolution it introduced became the channel-mixing workhorse of Inception, ResNet's
bottlenecks and MobileNet, and global average pooling the standard classifier head.
"""

from __future__ import annotations

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import MlpConv, mlpconv
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]


@register("nin_cifar", family="nin", num_classes=10, input_shape=(3, 32, 32),
          min_input=(3, 4, 4))
def nin_cifar(num_classes: int = 10, input_shape: Shape = (3, 32, 32)) -> Graph:
    """The paper's CIFAR-10 network, as its published Caffe model: three mlpconv layers,
    max then average pooling (Caffe rounds pooled sizes up), dropout, global average pool."""
    b = GraphBuilder("nin_cifar")
    x = b.input(*input_shape)
    with b.scope("mlpconv1"):  # 3 x 32 x 32 -> 96 x 32 x 32
        x = mlpconv(b, x, MlpConv(widths=(192, 160, 96), kernel=5))
    x = b.maxpool(x, 3, 2, ceil_mode=True, name="pool1")  # -> 96 x 16 x 16
    x = b.dropout(x, 0.5, name="drop1")
    with b.scope("mlpconv2"):
        x = mlpconv(b, x, MlpConv(widths=(192, 192, 192), kernel=5))
    x = b.avgpool(x, 3, 2, ceil_mode=True, name="pool2")  # -> 192 x 8 x 8
    x = b.dropout(x, 0.5, name="drop2")
    with b.scope("mlpconv3"):  # one feature map per class
        x = mlpconv(b, x, MlpConv(widths=(192, 192, num_classes), kernel=3))
    b.output(b.flatten(b.gap(x, name="pool3")))
    return b.build()
