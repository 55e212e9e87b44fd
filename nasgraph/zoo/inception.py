"""Inception (Szegedy et al. 2014, "Going deeper with convolutions") runs convolutions of
several sizes side by side and concatenates them, with 1x1 convolutions first to cut the
channels each branch must read: a wider, deeper network for about the cost of a narrow one.
Inception v2/v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture") factorize the
large kernels into stacks of 3x3 and into 1 x n then n x 1 convolutions, and shrink the grid
with parallel strided conv and pool branches. Inception-v4 and Inception-ResNet (Szegedy et
al. 2016) make the modules uniform and add residual connections, scaled down to keep such
wide networks stable in training.
"""

from __future__ import annotations

from functools import partial

from nasgraph.ir import Graph, GraphBuilder, Tensor
from nasgraph.motifs import (
    ExpandedInception,
    FactorizedInception,
    GridReduction,
    InceptionResNetBlock,
    InceptionV1,
    conv_unit,
    inception_block,
    inception_resnet_block,
    inception_stage,
    inception_v4_stem,
)
from nasgraph.motifs.inception import INCEPTION_EPS
from nasgraph.zoo._registry import register

Shape = tuple[int, int, int]

conv = partial(conv_unit, eps=INCEPTION_EPS)


def _unit(b: GraphBuilder, x: Tensor, name: str, width: int, kernel: int, stride: int = 1,
          padding: int = 0) -> Tensor:
    with b.scope(name):
        return conv(b, x, width, kernel, stride=stride, padding=padding)


def _classifier(b: GraphBuilder, x: Tensor, num_classes: int, pool: str, fc: str,
                dropout: float | None = None) -> None:
    x = b.flatten(b.gap(x, name=pool))
    if dropout is not None:
        x = b.dropout(x, dropout, name="dropout")
    b.output(b.linear(x, num_classes, name=fc))


# (name, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj): the paper's table 1
_GOOGLENET = [
    ("inception3a", 64, 96, 128, 16, 32, 32), ("inception3b", 128, 128, 192, 32, 96, 64),
    ("inception4a", 192, 96, 208, 16, 48, 64), ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64), ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128), ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
]


@register("googlenet", family="inception", num_classes=1000, input_shape=(3, 224, 224),
          reference="torchvision:googlenet", min_input=(3, 15, 15))
def googlenet(num_classes: int = 1000, input_shape: Shape = (3, 224, 224)) -> Graph:
    """GoogLeNet (Inception v1) as torchvision builds it, without the auxiliary classifiers
    (which only train): its '5x5' branches are 3x3, as in torchvision's weights."""
    b = GraphBuilder("googlenet")
    x = b.input(*input_shape)
    x = _unit(b, x, "conv1", 64, 7, stride=2, padding=3)  # 64 x H/2 x W/2
    x = b.maxpool(x, 3, 2, ceil_mode=True, name="maxpool1")  # 64 x H/4 x W/4
    x = _unit(b, x, "conv2", 64, 1)
    x = _unit(b, x, "conv3", 192, 3, padding=1)
    x = b.maxpool(x, 3, 2, ceil_mode=True, name="maxpool2")  # 192 x H/8 x W/8
    pools = {"inception3b": ("maxpool3", 3), "inception4e": ("maxpool4", 2)}
    for name, *widths in _GOOGLENET:
        cfg = InceptionV1(**dict(zip(("ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5",
                                      "pool_proj"), widths, strict=True)), large_kernel=3)
        with b.scope(name):
            x = inception_block(b, x, cfg, names=("branch1", "branch2", "branch3", "branch4"))
        if name in pools:
            pool, kernel = pools[name]
            x = b.maxpool(x, kernel, 2, ceil_mode=True, name=pool)
    _classifier(b, x, num_classes, "avgpool", "fc", dropout=0.2)  # 1024 -> classes
    return b.build()


_V3_NAMES = {
    "a": ("branch1x1", "branch5x5", "branch3x3dbl", "branch_pool"),
    "b": ("branch3x3", "branch3x3dbl", "branch_pool"),
    "c": ("branch1x1", "branch7x7", "branch7x7dbl", "branch_pool"),
    "d": ("branch3x3", "branch7x7x3", "branch_pool"),
    "e": ("branch1x1", "branch3x3", "branch3x3dbl", "branch_pool"),
}


@register("inception_v3", family="inception", num_classes=1000, input_shape=(3, 299, 299),
          reference="torchvision:inception_v3", min_input=(3, 75, 75))
def inception_v3(num_classes: int = 1000, input_shape: Shape = (3, 299, 299)) -> Graph:
    """Inception v3 as torchvision builds it (without the auxiliary classifier)."""
    b = GraphBuilder("inception_v3")
    x = b.input(*input_shape)
    # 3 x 299 x 299 -> 192 x 35 x 35
    x = _unit(b, x, "Conv2d_1a_3x3", 32, 3, stride=2)
    x = _unit(b, x, "Conv2d_2a_3x3", 32, 3)
    x = _unit(b, x, "Conv2d_2b_3x3", 64, 3, padding=1)
    x = b.maxpool(x, 3, 2, name="maxpool1")
    x = _unit(b, x, "Conv2d_3b_1x1", 80, 1)
    x = _unit(b, x, "Conv2d_4a_3x3", 192, 3)
    x = b.maxpool(x, 3, 2, name="maxpool2")
    blocks = [(f"Mixed_5{s}", "a", FactorizedInception(
        ch1x1=64, mid=(48, 64), mid_kernel=5, deep=(64, 96, 96), pool_proj=p))
        for s, p in (("b", 32), ("c", 64), ("d", 64))]  # 35 x 35
    blocks.append(("Mixed_6a", "b", GridReduction(convs=((384,), (64, 96, 96)))))
    blocks += [(f"Mixed_6{s}", "c", FactorizedInception(
        ch1x1=192, mid=(c, c, 192), deep=(c, c, c, c, 192), pool_proj=192, kernel=7,
        asymmetric=True)) for s, c in (("b", 128), ("c", 160), ("d", 160), ("e", 192))]
    blocks.append(("Mixed_7a", "d", GridReduction(convs=((192, 320), (192, 192, 192, 192)),
                                                  kernel=7, asymmetric=True)))
    blocks += [(f"Mixed_7{s}", "e", ExpandedInception(
        ch1x1=320, mid=(384, 384), deep=(448, 384, 384), pool_proj=192)) for s in "bc"]
    for name, kind, cfg in blocks:
        with b.scope(name):
            x = inception_block(b, x, cfg, names=_V3_NAMES[kind], flat=True, first=1)
    # 2048 x 8 x 8 -> classes (torchvision drops out before flattening: the same thing)
    _classifier(b, x, num_classes, "avgpool", "fc", dropout=0.5)
    return b.build()


@register("inception_v4", family="inception", num_classes=1000, input_shape=(3, 299, 299),
          reference="timm:inception_v4", min_input=(3, 75, 75))
def inception_v4(num_classes: int = 1000, input_shape: Shape = (3, 299, 299)) -> Graph:
    """Inception-v4 as timm builds it (ported from TensorFlow's weights)."""
    b = GraphBuilder("inception_v4")
    x = b.input(*input_shape)
    pool = {"count_include_pad": False}
    with b.scope("features"):
        x = inception_v4_stem(b, x)  # 384 x 35 x 35
        a = FactorizedInception(ch1x1=96, mid=(64, 96), deep=(64, 96, 96), pool_proj=96,
                                **pool)
        x = inception_stage(b, x, a, 4, start=6)
        with b.scope("10"):  # -> 1024 x 17 x 17
            x = inception_block(b, x, GridReduction(convs=((384,), (192, 224, 256))))
        b_ = FactorizedInception(ch1x1=384, mid=(192, 224, 256),
                                 deep=(192, 192, 224, 224, 256), pool_proj=128, kernel=7,
                                 asymmetric=True, **pool)
        x = inception_stage(b, x, b_, 7, start=11)
        with b.scope("18"):  # -> 1536 x 8 x 8
            x = inception_block(b, x, GridReduction(convs=((192, 192), (256, 256, 320, 320)),
                                                    kernel=7, asymmetric=True))
        c = ExpandedInception(ch1x1=256, mid=(384, 256), deep=(384, 448, 512, 256),
                              pool_proj=256, asymmetric=True, **pool)
        x = inception_stage(b, x, c, 3, start=19)
    _classifier(b, x, num_classes, "global_pool", "last_linear")
    return b.build()


@register("inception_resnet_v2", family="inception", num_classes=1000,
          input_shape=(3, 299, 299), reference="timm:inception_resnet_v2",
          min_input=(3, 75, 75))
def inception_resnet_v2(num_classes: int = 1000, input_shape: Shape = (3, 299, 299)) -> Graph:
    """Inception-ResNet-v2 as timm builds it (ported from TensorFlow's weights)."""
    b = GraphBuilder("inception_resnet_v2")
    x = b.input(*input_shape)
    # 3 x 299 x 299 -> 192 x 35 x 35, Inception v3's stem
    x = _unit(b, x, "conv2d_1a", 32, 3, stride=2)
    x = _unit(b, x, "conv2d_2a", 32, 3)
    x = _unit(b, x, "conv2d_2b", 64, 3, padding=1)
    x = b.maxpool(x, 3, 2, name="maxpool_3a")
    x = _unit(b, x, "conv2d_3b", 80, 1)
    x = _unit(b, x, "conv2d_4a", 192, 3)
    x = b.maxpool(x, 3, 2, name="maxpool_5a")
    with b.scope("mixed_5b"):  # -> 320 x 35 x 35
        x = inception_block(b, x, FactorizedInception(
            ch1x1=96, mid=(48, 64), mid_kernel=5, deep=(64, 96, 96), pool_proj=64,
            count_include_pad=False))
    stages = [
        ("repeat", 10, InceptionResNetBlock(convs=((32,), (32, 32), (32, 48, 64)),
                                            scale=0.17), "mixed_6a",
         GridReduction(convs=((384,), (256, 256, 384)))),  # -> 1088 x 17 x 17
        ("repeat_1", 20, InceptionResNetBlock(convs=((192,), (128, 160, 192)), kernel=7,
                                              asymmetric=True, scale=0.1), "mixed_7a",
         GridReduction(convs=((256, 384), (256, 288), (256, 288, 320)))),  # -> 2080 x 8 x 8
    ]
    for name, depth, block, reduction_name, reduction in stages:
        with b.scope(name):
            x = inception_stage(b, x, block, depth)
        with b.scope(reduction_name):
            x = inception_block(b, x, reduction)
    block8 = InceptionResNetBlock(convs=((192,), (192, 224, 256)), asymmetric=True, scale=0.2)
    with b.scope("repeat_2"):
        x = inception_stage(b, x, block8, 9)
    with b.scope("block8"):  # the last one unscaled and without its ReLU
        x = inception_resnet_block(b, x, block8.model_copy(update={"scale": 1.0,
                                                                   "act": False}))
    x = _unit(b, x, "conv2d_7b", 1536, 1)
    _classifier(b, x, num_classes, "global_pool", "classif")
    return b.build()
