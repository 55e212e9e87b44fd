"""Reusable building blocks: functions that add a parametrized motif to a GraphBuilder.

Each exposes the three search dimensions where they apply: width (channels), depth
(repeats) and multiplicity (parallel paths: branches, cardinality, shortcuts).
"""

from nasgraph.motifs.conv import conv_unit, same_padding
from nasgraph.motifs.dense import DenseBlock, Transition, dense_block, dense_layer, transition
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
    "DenseBlock", "Fire", "PyramidBlock", "ResidualBlock", "SegmentationHead", "Transition",
    "conv_unit", "dense_block", "dense_layer", "fire", "pad_shortcut", "pyramid_block",
    "pyramid_stage", "pyramid_widths", "residual_block", "residual_stage", "same_padding",
    "segmentation_head", "transition",
]
