"""Inception motifs: each block against the torchvision or timm module it reproduces (params,
MACs, output shape, weight names), and the width, depth and multiplicity parameters doing
what they say."""

from __future__ import annotations

from functools import partial
from importlib import import_module

import pytest
import torch
from timm.layers import ConvNormAct
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasgraph import summarize
from nasgraph.analysis import multiplicity
from nasgraph.errors import GraphError
from nasgraph.ir import GraphBuilder, ops
from nasgraph.motifs import (
    Branch,
    ConvLayer,
    ExpandedInception,
    FactorizedInception,
    GridReduction,
    InceptionModule,
    InceptionResNetBlock,
    InceptionV1,
    PoolLayer,
    inception_block,
    inception_resnet_block,
    inception_stage,
    inception_v4_stem,
)

# the modules, not the model functions of the same names that the packages export
tv_googlenet = import_module("torchvision.models.googlenet")
tv_v3 = import_module("torchvision.models.inception")
timm_v4 = import_module("timm.models.inception_v4")
timm_irv2 = import_module("timm.models.inception_resnet_v2")


def block_graph(cfg, shape, build=inception_block, **naming):
    b = GraphBuilder("block")
    x = b.input(*shape)
    b.output(build(b, x, cfg, **naming))
    return b.build()


def assert_same_as(graph, module: nn.Module, shape):
    """Params, MACs, output shape and weight names equal those of the torch module."""
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = module(torch.randn(1, *shape))
    s = summarize(graph)
    assert s.params == sum(p.numel() for p in module.parameters())
    assert s.macs == counter.get_total_flops() // 2
    assert s.outputs == [list(y.shape[1:])]
    weighted = {n.param_key for n in graph
                if isinstance(n.op, ops.Conv2d | ops.BatchNorm2d | ops.Linear)}
    assert weighted == {k.rpartition(".")[0] for k in module.state_dict()}


# as timm's models build their blocks: explicit padding only, BN eps 1e-3
TIMM_CONV = partial(ConvNormAct, padding=0, norm_kwargs={"eps": 1e-3})
V3 = {"flat": True, "first": 1}


@pytest.mark.parametrize("widths", [(64, 96, 128, 16, 32, 32), (5, 3, 7, 2, 4, 6)])
def test_inception_v1_is_torchvision_googlenets_module(widths):
    cfg = InceptionV1(**dict(zip(("ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5",
                                  "pool_proj"), widths, strict=True)), large_kernel=3)
    names = ("branch1", "branch2", "branch3", "branch4")
    assert_same_as(block_graph(cfg, (12, 9, 9), names=names),
                   tv_googlenet.Inception(12, *widths), (12, 9, 9))


@pytest.mark.parametrize("pool_features", [32, 7])
def test_factorized_5x5_is_torchvision_inception_a(pool_features):
    cfg = FactorizedInception(ch1x1=64, mid=(48, 64), mid_kernel=5, deep=(64, 96, 96),
                              pool_proj=pool_features)
    names = ("branch1x1", "branch5x5", "branch3x3dbl", "branch_pool")
    assert_same_as(block_graph(cfg, (16, 7, 7), names=names, **V3),
                   tv_v3.InceptionA(16, pool_features), (16, 7, 7))


@pytest.mark.parametrize("c7", [128, 9])
def test_factorized_nxn_is_torchvision_inception_c(c7):
    cfg = FactorizedInception(ch1x1=192, mid=(c7, c7, 192), deep=(c7, c7, c7, c7, 192),
                              pool_proj=192, kernel=7, asymmetric=True)
    names = ("branch1x1", "branch7x7", "branch7x7dbl", "branch_pool")
    assert_same_as(block_graph(cfg, (24, 9, 9), names=names, **V3),
                   tv_v3.InceptionC(24, c7), (24, 9, 9))


def test_expanded_bank_and_reductions_are_torchvision_inception_e_b_d():
    e = ExpandedInception(ch1x1=320, mid=(384, 384), deep=(448, 384, 384), pool_proj=192)
    assert_same_as(block_graph(e, (32, 5, 5), names=(
        "branch1x1", "branch3x3", "branch3x3dbl", "branch_pool"), **V3),
        tv_v3.InceptionE(32), (32, 5, 5))
    r = GridReduction(convs=((384,), (64, 96, 96)))
    assert_same_as(block_graph(r, (16, 11, 11), names=(
        "branch3x3", "branch3x3dbl", "branch_pool"), **V3), tv_v3.InceptionB(16), (16, 11, 11))
    d = GridReduction(convs=((192, 320), (192, 192, 192, 192)), kernel=7, asymmetric=True)
    assert_same_as(block_graph(d, (16, 11, 11), names=(
        "branch3x3", "branch7x7x3", "branch_pool"), **V3), tv_v3.InceptionD(16), (16, 11, 11))


@pytest.mark.parametrize(("cfg", "module", "shape"), [
    (FactorizedInception(ch1x1=96, mid=(64, 96), deep=(64, 96, 96), pool_proj=96,
                         count_include_pad=False), timm_v4.InceptionA, (384, 5, 5)),
    (FactorizedInception(ch1x1=384, mid=(192, 224, 256), deep=(192, 192, 224, 224, 256),
                         pool_proj=128, kernel=7, asymmetric=True, count_include_pad=False),
     timm_v4.InceptionB, (1024, 3, 3)),
    (ExpandedInception(ch1x1=256, mid=(384, 256), deep=(384, 448, 512, 256), pool_proj=256,
                       asymmetric=True, count_include_pad=False),
     timm_v4.InceptionC, (1536, 3, 3)),
    (GridReduction(convs=((384,), (192, 224, 256))), timm_v4.ReductionA, (384, 7, 7)),
    (GridReduction(convs=((192, 192), (256, 256, 320, 320)), kernel=7, asymmetric=True),
     timm_v4.ReductionB, (1024, 7, 7)),
], ids=["A", "B", "C", "reduction_a", "reduction_b"])
def test_inception_v4_modules_are_timms(cfg, module, shape):
    assert_same_as(block_graph(cfg, shape), module(conv_block=TIMM_CONV), shape)


def test_inception_v4_stem_is_timms_features_0_to_5():
    b = GraphBuilder("stem")
    y = inception_v4_stem(b, b.input(3, 299, 299))
    b.output(y)
    model = timm_v4.InceptionV4()
    assert str(y.type) == "384x35x35"
    stem = b.build().replace_input(3, 75, 75)
    assert_same_as(stem, nn.Sequential(*model.features[:6]), (3, 75, 75))


@pytest.mark.parametrize(("cfg", "module", "shape"), [
    (InceptionResNetBlock(convs=((32,), (32, 32), (32, 48, 64)), scale=0.17),
     partial(timm_irv2.Block35, scale=0.17), (320, 5, 5)),
    (InceptionResNetBlock(convs=((192,), (128, 160, 192)), kernel=7, asymmetric=True,
                          scale=0.1), partial(timm_irv2.Block17, scale=0.1), (1088, 3, 3)),
    (InceptionResNetBlock(convs=((192,), (192, 224, 256)), asymmetric=True, scale=1.0,
                          act=False), partial(timm_irv2.Block8, no_relu=True), (2080, 3, 3)),
], ids=["block35", "block17", "block8"])
def test_inception_resnet_blocks_are_timms(cfg, module, shape):
    graph = block_graph(cfg, shape, build=inception_resnet_block)
    assert_same_as(graph, module(conv_block=TIMM_CONV), shape)
    add = next(n for n in graph if n.kind == "add")
    assert add.op.weights == (cfg.scale, 1.0)
    assert [n.kind for n in graph][-2:] == (["activation", "output"] if cfg.act
                                             else ["add", "output"])


def test_inception_resnet_output_matches_timm_numerically():
    """The scale multiplies the branches, not the shortcut, and the ReLU follows the sum."""
    torch.manual_seed(0)
    block = timm_irv2.Block35(scale=0.17).eval()
    x = torch.randn(1, 320, 4, 4)
    branches = torch.cat([block.branch0(x), block.branch1(x), block.branch2(x)], 1)
    expected = torch.relu(x + 0.17 * block.conv2d(branches))
    torch.testing.assert_close(block(x), expected)
    cfg = InceptionResNetBlock(convs=((32,), (32, 32), (32, 48, 64)), scale=0.17)
    graph = block_graph(cfg, (320, 4, 4), build=inception_resnet_block)
    add = next(n for n in graph if n.kind == "add")
    assert graph.predecessors(add.id)[1].kind == "input"  # weight 1.0 on the shortcut


# ----------------------------------------------------------------- shape rules and dimensions


@pytest.mark.parametrize("size", [(7, 7), (10, 13), (1, 1)])
def test_modules_keep_the_grid_and_reductions_halve_it(size):
    h, w = size
    keep = [InceptionV1(ch1x1=4, ch3x3red=3, ch3x3=5, ch5x5red=2, ch5x5=6, pool_proj=7),
            FactorizedInception(ch1x1=4, mid=(3, 5), deep=(2, 6, 8), pool_proj=7),
            FactorizedInception(ch1x1=4, mid=(3, 5, 6), deep=(2, 6, 8, 9, 3), pool_proj=7,
                                kernel=7, asymmetric=True),
            ExpandedInception(ch1x1=4, mid=(3, 5), deep=(2, 6, 8), pool_proj=7)]
    for cfg in keep:
        y = block_graph(cfg, (10, h, w)).outputs[0].type
        assert (y.channels, y.height, y.width) == (cfg.out_channels(10), h, w)
    if min(size) >= 3:
        r = GridReduction(convs=((5,), (3, 4, 6)))
        y = block_graph(r, (10, h, w)).outputs[0].type
        assert (y.channels, y.height, y.width) == (5 + 6 + 10, (h - 3) // 2 + 1,
                                                   (w - 3) // 2 + 1)


def test_channels_follow_the_widths():
    cfg = FactorizedInception(ch1x1=11, mid=(3, 13), deep=(2, 5, 17), pool_proj=19)
    graph = block_graph(cfg, (8, 6, 6))
    concat = graph.outputs[0].inputs[0]
    assert [graph[i].type.channels for i in graph[concat].inputs] == [11, 13, 17, 19]
    assert graph.outputs[0].type.channels == 60 == cfg.out_channels(8)
    e = ExpandedInception(ch1x1=11, mid=(3, 13), deep=(2, 5, 17), pool_proj=19)
    assert block_graph(e, (8, 6, 6)).outputs[0].type.channels == 11 + 26 + 34 + 19


@pytest.mark.parametrize(("cfg", "k"), [
    (InceptionV1(ch1x1=4, ch3x3red=3, ch3x3=5, ch5x5red=2, ch5x5=6, pool_proj=7), 4),
    (InceptionV1(ch1x1=0, ch3x3red=3, ch3x3=5, ch5x5red=2, ch5x5=0, pool_proj=7), 2),
    (FactorizedInception(ch1x1=4, mid=(3, 5), deep=(2, 6, 8), pool_proj=7), 4),
    (FactorizedInception(ch1x1=4, deep=(2, 6, 8), pool_proj=0), 2),
    (ExpandedInception(ch1x1=4, mid=(3, 5), deep=(2, 6, 8), pool_proj=7), 6),
    (GridReduction(convs=((5,), (3, 4), (3, 4, 6))), 4),
    (InceptionModule(branches=tuple(Branch(layers=(ConvLayer(out_channels=c),))
                                    for c in (1, 2, 3, 4, 5))), 5),
], ids=["v1", "v1_two_dropped", "factorized", "factorized_two_dropped", "expanded",
        "reduction", "general"])
def test_multiplicity_counts_the_branches(cfg, k):
    graph = block_graph(cfg, (8, 9, 9))
    assert multiplicity(graph) == cfg.multiplicity == k
    assert len(graph[graph.outputs[0].inputs[0]].inputs) == len(cfg.branches)


def test_the_residual_shortcut_adds_a_path():
    cfg = InceptionResNetBlock(convs=((4,), (4, 4), (4, 4, 4)), scale=0.2)
    graph = block_graph(cfg, (16, 5, 5), build=inception_resnet_block)
    assert multiplicity(graph) == cfg.multiplicity == 4
    assert graph.outputs[0].type == graph["input"].type


@pytest.mark.parametrize("length", [1, 2, 4])
def test_depth_is_the_longest_chain_and_the_repeats(length):
    cfg = FactorizedInception(ch1x1=4, mid=(3, 5), deep=(2,) + (6,) * length, pool_proj=7)
    assert summarize(block_graph(cfg, (8, 9, 9))).depth == 1 + length
    b = GraphBuilder("stage")
    b.output(inception_stage(b, b.input(8, 9, 9), cfg, depth=3, start=6))
    graph = b.build()
    assert summarize(graph).depth == 3 * (1 + length)
    assert [s for s in graph.scopes() if "/" not in s] == ["6", "7", "8"]
    assert multiplicity(graph) == 4 ** 3


def test_names_nested_and_flat():
    cfg = InceptionModule(branches=(
        Branch(layers=(ConvLayer(out_channels=4),)),
        Branch(layers=(PoolLayer(kind="avg"), ConvLayer(out_channels=4))),
        Branch(layers=(ConvLayer(out_channels=4),), fan_out=(
            ConvLayer(out_channels=2, kernel=(1, 3)), ConvLayer(out_channels=2, kernel=(3, 1)))),
    ))
    nested = {n.id for n in block_graph(cfg, (8, 5, 5)) if n.kind == "conv2d"}
    assert nested == {"branch0/conv", "branch1/1/conv", "branch2_0/conv", "branch2_1a/conv",
                      "branch2_1b/conv"}
    assert "branch1/0" in {n.id for n in block_graph(cfg, (8, 5, 5))}
    flat = {n.id for n in block_graph(cfg, (8, 5, 5), names=("p", "q", "r"), flat=True,
                                      first=1) if n.kind == "conv2d"}
    assert flat == {"p/conv", "q/conv", "r_1/conv", "r_2a/conv", "r_2b/conv"}


def test_bad_configs_fail_with_one_clear_error():
    with pytest.raises(ValueError, match="at least one"):
        _ = InceptionV1(ch1x1=0, ch3x3red=1, ch3x3=0, ch5x5red=1, ch5x5=0,
                        pool_proj=0).branches
    with pytest.raises(GraphError, match="2 names for 4 branches"):
        block_graph(FactorizedInception(ch1x1=4, mid=(3, 5), deep=(2, 6), pool_proj=7),
                    (8, 5, 5), names=("a", "b"))
    with pytest.raises(ValueError, match="fan-out width"):
        ExpandedInception(ch1x1=4, mid=(3,), pool_proj=1)
