"""Reusable building blocks: functions that add a parametrized motif to a GraphBuilder.

Each exposes the three search dimensions where they apply: width (channels), depth
(repeats) and multiplicity (parallel paths: branches, cardinality, shortcuts).
"""

from nasgraph.motifs.conv import conv_unit, same_padding
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
from nasgraph.motifs.residual import ResidualBlock, residual_block, residual_stage

__all__ = [
    "Branch", "ConvLayer", "ExpandedInception", "FactorizedInception", "GridReduction",
    "InceptionModule", "InceptionResNetBlock", "InceptionV1", "InceptionV4Stem",
    "InvertedResidual", "MlpConv", "PoolLayer", "ResidualBlock", "SeparableConv", "conv_unit",
    "inception_block", "inception_resnet_block", "inception_stage", "inception_v4_stem",
    "inverted_residual", "inverted_residual_stage", "make_divisible", "mlpconv",
    "residual_block", "residual_stage", "same_padding", "separable_conv", "separable_stage",
    "squeeze_excitation",
]
