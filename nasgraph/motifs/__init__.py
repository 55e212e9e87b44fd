"""Reusable building blocks: functions that add a parametrized motif to a GraphBuilder.

Each exposes the three search dimensions where they apply: width (channels), depth
(repeats) and multiplicity (parallel paths: branches, cardinality, shortcuts).
"""

from nasgraph.motifs.conv import conv_unit, same_padding
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
from nasgraph.motifs.residual import ResidualBlock, residual_block, residual_stage

__all__ = ["InvertedResidual", "ResidualBlock", "SeparableConv", "conv_unit",
           "inverted_residual", "inverted_residual_stage", "make_divisible", "residual_block",
           "residual_stage", "same_padding", "separable_conv", "separable_stage",
           "squeeze_excitation"]
