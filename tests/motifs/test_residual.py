"""Residual and pyramidal blocks: shape rules, and what width, depth and multiplicity do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasgraph import summarize
from nasgraph.analysis import multiplicity
from nasgraph.errors import GraphError
from nasgraph.ir import ops
from nasgraph.motifs import (
    PyramidBlock,
    ResidualBlock,
    pyramid_block,
    pyramid_widths,
    residual_block,
    residual_stage,
)
from tests.motifs._build import alone


def block(cfg: ResidualBlock, shape=(16, 8, 8)):
    return alone(lambda b, x: residual_block(b, x, cfg), shape)


@pytest.mark.parametrize(("cfg", "out"), [
    (ResidualBlock(planes=16), (16, 8, 8)),
    (ResidualBlock(planes=32, stride=2), (32, 4, 4)),
    (ResidualBlock(planes=32, stride=2, shortcut="pad"), (32, 4, 4)),
    (ResidualBlock(kind="bottleneck", planes=8, stride=2), (32, 4, 4)),
    (ResidualBlock(planes=16, widen=4, preact=True, dropout=0.3), (64, 8, 8)),
    (ResidualBlock(planes=16, widen=2, stride=2, preact=True, shortcut="pad"), (32, 4, 4)),
])
def test_shape_rule(cfg, out):
    assert block(cfg).outputs[0].type.shape == out == (cfg.out_channels, 8 // cfg.stride,
                                                      8 // cfg.stride)


def test_pad_shortcut_is_option_a_without_parameters():
    a = block(ResidualBlock(planes=32, stride=2, shortcut="pad"))
    b = block(ResidualBlock(planes=32, stride=2))
    projection = 16 * 32 + 2 * 32  # 1x1 conv and its BN
    assert summarize(a).params == summarize(b).params - projection
    pad = a["pad"].op
    assert (pad.before, pad.after) == (8, 8)
    assert a["subsample"].op == ops.MaxPool2d(kernel=1, stride=2)
    x = torch.arange(2 * 16 * 8 * 8.0).reshape(2, 16, 8, 8)  # the pool is x[:, :, ::2, ::2]
    assert torch.equal(nn.MaxPool2d(1, 2)(x), x[:, :, ::2, ::2])


def test_widen_multiplies_the_width():
    narrow = block(ResidualBlock(planes=16, preact=True))
    wide = block(ResidualBlock(planes=16, widen=4, preact=True))
    assert wide["conv1"].type.channels == 4 * narrow["conv1"].type.channels == 64
    # a wide bottleneck is torchvision's wide_resnet: base width 64 * widen
    assert (block(ResidualBlock(kind="bottleneck", planes=16, widen=2), (64, 8, 8))
            == block(ResidualBlock(kind="bottleneck", planes=16, base_width=128), (64, 8, 8)))


def test_dropout_sits_between_the_convs_of_a_wide_block():
    g = block(ResidualBlock(planes=16, widen=2, preact=True, dropout=0.3))
    (drop,) = [n for n in g if isinstance(n.op, ops.Dropout)]
    assert drop.op.p == 0.3
    assert g.predecessors("conv2")[0].id == drop.id
    assert g.predecessors(drop.id)[0].id == "relu_1"
    assert not any(isinstance(n.op, ops.Dropout) for n in block(ResidualBlock(planes=16)))
    post = block(ResidualBlock(kind="bottleneck", planes=4, dropout=0.2))
    assert isinstance(post.predecessors("conv3")[0].op, ops.Dropout)


def test_groups_are_the_cardinality():
    g = block(ResidualBlock(kind="bottleneck", planes=16, groups=8, base_width=4), (64, 8, 8))
    assert g["conv2"].op.groups == 8
    assert g["conv2"].type.channels == 16 * 4 // 64 * 8  # torchvision's inner width


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_depth_repeats_blocks_and_each_doubles_the_paths(depth):
    g = alone(lambda b, x: residual_stage(b, x, ResidualBlock(planes=16), depth), (16, 8, 8))
    assert sum(isinstance(n.op, ops.Add) for n in g) == depth
    assert multiplicity(g) == 2 ** depth
    assert summarize(g).depth == 2 * depth


def test_pyramid_widths_grow_linearly_to_start_plus_alpha():
    widths = pyramid_widths(16, 48, 54)
    assert widths[-1] == 64 and widths == sorted(widths)
    assert pyramid_widths(16, 48, 6) == [24, 32, 40, 48, 56, 64]


def test_pyramid_block_pools_and_pads_its_shortcut():
    g = alone(lambda b, x: pyramid_block(b, x, PyramidBlock(out_channels=20, stride=2)),
              (16, 8, 8))
    assert g.outputs[0].type.shape == (20, 4, 4)
    assert g["downsample"].op == ops.AvgPool2d(kernel=2, stride=2, ceil_mode=True)
    assert (g["pad"].op.before, g["pad"].op.after) == (0, 4)
    assert multiplicity(g) == 2
    # BN-conv-BN-ReLU-conv-BN, every weight in the residual branch
    assert summarize(g).params == 2 * 16 + 16 * 20 * 9 + 2 * 20 + 20 * 20 * 9 + 2 * 20


def test_pyramid_block_refuses_to_narrow():
    with pytest.raises(GraphError, match="narrows 16 to 8"):
        alone(lambda b, x: pyramid_block(b, x, PyramidBlock(out_channels=8)), (16, 8, 8))
