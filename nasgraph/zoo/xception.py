"""Xception (Chollet 2016, "Xception: Deep Learning with Depthwise Separable Convolutions")
read the Inception module as a point on a line: a 1x1 convolution splits the channels into a
few groups that 3x3 convolutions then filter separately, and the extreme of that line is one
group per channel, a depthwise-separable convolution. Xception replaces every Inception
module by a stack of them with a residual shortcut around it: 36 convolutional layers in 14
modules, with about as many parameters as Inception v3 and a higher ImageNet accuracy,
which the paper credits to using those parameters more efficiently.
"""

from __future__ import annotations

from nasgraph.ir import Graph, GraphBuilder, Tensor
from nasgraph.motifs import SeparableConv, separable_conv
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]

# Blocks: out channels, separable convs, stride, start with ReLU, grow on the first conv.
_BLOCKS = [(128, 2, 2, False, True), (256, 2, 2, True, True), (728, 2, 2, True, True)] + [
    (728, 3, 1, True, True)] * 8 + [(1024, 2, 2, True, False)]


def xception_block(b: GraphBuilder, x: Tensor, out_channels: int, reps: int, stride: int = 1,
                   start_with_relu: bool = True, grow_first: bool = True) -> Tensor:
    """`reps` times ReLU -> separable 3x3 -> BN, a 3x3 max pool when strided, plus a shortcut
    (a strided 1x1 conv and BN where the shape changes), in the current scope.

    Nodes are named like timm's legacy Xception `Block`: `rep/<k>` in its Sequential order,
    `skip` and `skipbn` for the projection.
    """
    shortcut = x
    if out_channels != x.channels or stride != 1:
        shortcut = b.conv(x, out_channels, 1, stride=stride, bias=False, name="skip")
        shortcut = b.bn(shortcut, name="skipbn")
    in_channels = x.channels
    k = 0  # index in timm's Sequential `rep`, which holds the ReLUs too
    with b.scope("rep"):
        for i in range(reps):
            # grow_first widens on the first conv, otherwise on the last
            last = i == reps - 1
            width = out_channels if grow_first or last else in_channels
            if i > 0 or start_with_relu:
                x = b.relu(x, name=str(k))
                k += 1
            cfg = SeparableConv(out_channels=width, depthwise_bn=False, act=None)
            x = separable_conv(b, x, cfg, names=(f"{k}/conv1", None, f"{k}/pointwise",
                                                 str(k + 1)))
            k += 2
        if stride != 1:
            x = b.maxpool(x, 3, stride=stride, padding=1, name=str(k))
    return b.add([x, shortcut])


def xception(name: str = "xception", num_classes: int = 1000,
             input_shape: Shape = (3, 299, 299)) -> Graph:
    """Xception exactly as timm's `legacy_xception` (the Keras port) builds it."""
    b = GraphBuilder(name)
    x = b.input(*input_shape)
    # entry flow: 3 x 299 x 299 -> 32 x 149 x 149 -> 64 x 147 x 147 (no padding)
    x = b.relu(b.bn(b.conv(x, 32, 3, stride=2, bias=False, name="conv1"), name="bn1"),
               name="act1")
    x = b.relu(b.bn(b.conv(x, 64, 3, bias=False, name="conv2"), name="bn2"), name="act2")
    for k, (out, reps, stride, start_with_relu, grow_first) in enumerate(_BLOCKS, start=1):
        with b.scope(f"block{k}"):
            x = xception_block(b, x, out, reps, stride, start_with_relu, grow_first)
    # exit flow: 1024 -> 1536 -> 2048 channels, separable convs with BN and ReLU after
    for k, width in ((3, 1536), (4, 2048)):
        cfg = SeparableConv(out_channels=width, depthwise_bn=False, act=None)
        x = separable_conv(b, x, cfg, names=(f"conv{k}/conv1", None, f"conv{k}/pointwise",
                                             f"bn{k}"))
        x = b.relu(x, name=f"act{k}")
    x = b.flatten(b.gap(x, name="global_pool"))
    b.output(b.linear(x, num_classes, name="fc"))
    return b.build()


# Keras documents 71 x 71 as Xception's smallest input.
register("xception", family="xception", num_classes=1000, input_shape=(3, 299, 299),
         reference="timm:legacy_xception", min_input=(3, 71, 71))(xception)
