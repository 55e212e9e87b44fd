"""Fully convolutional networks (Long, Shelhamer & Darrell 2015, "Fully Convolutional
Networks for Semantic Segmentation"): a classification network whose fully connected layers
become convolutions labels every pixel at once, for inputs of any size, and upsampling
brings the coarse class scores back to the input's resolution. torchvision's FCN-ResNet50
keeps more resolution by replacing the strides of the last two stages with dilation (output
stride 8) and ends in a small conv head and a bilinear upsample.
"""

from __future__ import annotations

from nasgraph.ir import Graph, GraphBuilder
from nasgraph.motifs import SegmentationHead, segmentation_head
from nasgraph.zoo._registry import register
from nasgraph.zoo.resnet import resnet_features

Shape = tuple[int, int, int]


@register("fcn_resnet50", family="fcn", num_classes=21, input_shape=(3, 520, 520),
          reference="torchvision.segmentation:fcn_resnet50", min_input=(3, 32, 32))
def fcn_resnet50(num_classes: int = 21, input_shape: Shape = (3, 520, 520)) -> Graph:
    """FCN with a dilated ResNet-50 backbone: `num_classes` x H x W scores for an input of
    H x W (Pascal VOC's 21 classes by default)."""
    b = GraphBuilder("fcn_resnet50")
    x = b.input(*input_shape)
    with b.scope("backbone"):  # 2048 x H/8 x W/8
        x = resnet_features(b, x, "bottleneck", [3, 4, 6, 3], dilate=(False, True, True))
    y = segmentation_head(b, x, SegmentationHead(num_classes=num_classes),
                          size=(input_shape[1], input_shape[2]))
    b.output(y)
    return b.build()
