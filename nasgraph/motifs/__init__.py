"""Reusable building blocks: functions that add a parametrized motif to a GraphBuilder.

Each exposes the three search dimensions where they apply: width (channels), depth
(repeats) and multiplicity (parallel paths: branches, cardinality, shortcuts).
"""

from nasgraph.motifs.conv import conv_unit, same_padding
from nasgraph.motifs.dense import DenseBlock, Transition, dense_block, dense_layer, transition
from nasgraph.motifs.inception import (
    Branch,
    ConvLayer,
    ExpandedInception,
    FactorizedInception,
    GridReduction,
    InceptionModule,
    InceptionResNetBlock,
    InceptionV1,
    InceptionV4Stem,
    PoolLayer,
    inception_block,
    inception_resnet_block,
    inception_stage,
    inception_v4_stem,
)
from nasgraph.motifs.mobile import (
    InvertedResidual,
    SeparableConv,
    inverted_residual,
    inverted_residual_stage,
    make_divisible,
    separable_conv,
    separable_stage,
    squeeze_excitation,
)
from nasgraph.motifs.nin import MlpConv, mlpconv
from nasgraph.motifs.residual import (
    PyramidBlock,
    ResidualBlock,
    pad_shortcut,
    pyramid_block,
    pyramid_stage,
    pyramid_widths,
    residual_block,
    residual_stage,
)
from nasgraph.motifs.segmentation import SegmentationHead, segmentation_head
from nasgraph.motifs.squeeze import Fire, fire

__all__ = [
    "Branch", "ConvLayer", "DenseBlock", "ExpandedInception", "FactorizedInception", "Fire",
    "GridReduction", "InceptionModule", "InceptionResNetBlock", "InceptionV1",
    "InceptionV4Stem", "InvertedResidual", "MlpConv", "PoolLayer", "PyramidBlock",
    "ResidualBlock", "SegmentationHead", "SeparableConv", "Transition", "conv_unit",
    "dense_block", "dense_layer", "fire", "inception_block", "inception_resnet_block",
    "inception_stage", "inception_v4_stem", "inverted_residual", "inverted_residual_stage",
    "make_divisible", "mlpconv", "pad_shortcut", "pyramid_block", "pyramid_stage",
    "pyramid_widths", "residual_block", "residual_stage", "same_padding", "segmentation_head",
    "separable_conv", "separable_stage", "squeeze_excitation", "transition",
]
