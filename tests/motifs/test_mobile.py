"""Mobile motifs against torchvision's own blocks, and their width/depth/multiplicity knobs."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models._utils import _make_divisible
from torchvision.models.efficientnet import MBConv, MBConvConfig
from torchvision.models.mobilenetv2 import InvertedResidual as TorchInvertedResidual
from torchvision.ops import SqueezeExcitation

from nasgraph import summarize
from nasgraph.analysis import multiplicity
from nasgraph.ir import Graph, GraphBuilder, ops
from nasgraph.motifs import (
    InvertedResidual,
    SeparableConv,
    inverted_residual,
    inverted_residual_stage,
    make_divisible,
    separable_conv,
    separable_stage,
    squeeze_excitation,
)


def build(motif, shape=(16, 12, 12), **kwargs) -> Graph:
    b = GraphBuilder()
    x = b.input(*shape)
    b.output(motif(b, x, **kwargs))
    return b.build()


def torch_costs(module: nn.Module, shape) -> tuple[int, int, tuple[int, ...]]:
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = module(torch.randn(1, *shape))
    return (sum(p.numel() for p in module.parameters()), counter.get_total_flops() // 2,
            tuple(y.shape[1:]))


def costs(graph: Graph) -> tuple[int, int, tuple[int, ...]]:
    s = summarize(graph)
    return s.params, s.macs, tuple(s.outputs[0])


def weighted(graph: Graph) -> set[str]:
    return {n.param_key for n in graph
            if isinstance(n.op, ops.Conv2d | ops.BatchNorm2d | ops.Linear)}


def count(graph: Graph, kind: str) -> int:
    return sum(n.kind == kind for n in graph)


# --------------------------------------------------------------------------- separable


@pytest.mark.parametrize(("out", "kernel", "stride"), [(32, 3, 1), (24, 3, 2), (8, 5, 2)])
def test_separable_conv_equals_depthwise_then_pointwise_in_torch(out, kernel, stride):
    c = 16
    reference = nn.Sequential(
        nn.Conv2d(c, c, kernel, stride, kernel // 2, groups=c, bias=False), nn.BatchNorm2d(c),
        nn.ReLU6(), nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU6())
    cfg = SeparableConv(out_channels=out, kernel=kernel, stride=stride, act="relu6")
    assert costs(build(separable_conv, cfg=cfg)) == torch_costs(reference, (c, 12, 12))


def test_separable_conv_costs_about_k_squared_times_less_than_a_full_conv():
    c, out, k = 64, 128, 3
    b = GraphBuilder()
    b.output(b.conv(b.input(c, 8, 8), out, k, padding=1, bias=False))
    full = summarize(b.build()).macs
    sep = summarize(build(separable_conv, (c, 8, 8),
                          cfg=SeparableConv(out_channels=out, kernel=k))).macs
    assert sep == 8 * 8 * (k * k * c + c * out)
    assert full / sep == pytest.approx(1 / (1 / out + 1 / k**2))


def test_xception_style_separable_conv_has_nothing_between_its_convs():
    cfg = SeparableConv(out_channels=32, depthwise_bn=False, act=None)
    g = build(separable_conv, cfg=cfg, names=("sep/conv1", None, "sep/pointwise", "bn"))
    assert [n.kind for n in g][1:-1] == ["conv2d", "conv2d", "batchnorm2d"]
    assert weighted(g) == {"sep.conv1", "sep.pointwise", "bn"}


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_separable_stage_repeats_depth_times_and_strides_once(depth):
    g = build(separable_stage, cfg=SeparableConv(out_channels=24, stride=2), depth=depth)
    depthwise = [n for n in g if n.kind == "conv2d" and n.op.groups > 1]
    assert len(depthwise) == depth
    assert [n.op.stride for n in depthwise] == [(2, 2)] + [(1, 1)] * (depth - 1)
    assert g.outputs[0].type.shape == (24, 6, 6)
    assert multiplicity(g) == 1  # MobileNet v1 has no shortcuts


# --------------------------------------------------------------------------- squeeze-excite


def test_squeeze_excitation_equals_torchvisions_and_doubles_the_paths():
    g = build(squeeze_excitation, squeeze_channels=4, act="silu")
    assert costs(g) == torch_costs(SqueezeExcitation(16, 4, activation=nn.SiLU), (16, 12, 12))
    assert weighted(g) <= {k.rpartition(".")[0] for k in SqueezeExcitation(16, 4).state_dict()}
    assert multiplicity(g) == 2


# --------------------------------------------------------------------------- inverted residual


@pytest.mark.parametrize(("inp", "out", "stride", "t"),
                         [(16, 16, 1, 6), (16, 24, 2, 6), (16, 16, 1, 1), (32, 16, 1, 1),
                          (24, 24, 2, 4)])
def test_inverted_residual_equals_torchvisions_mobilenet_v2_block(inp, out, stride, t):
    reference = TorchInvertedResidual(inp, out, stride, expand_ratio=t)
    cfg = InvertedResidual(out_channels=out, expand_ratio=t, stride=stride)
    b = GraphBuilder()
    x = b.input(inp, 12, 12)
    b.output(inverted_residual(b, x, cfg, body="conv", flat_projection=True))
    g = b.build()
    assert costs(g) == torch_costs(reference, (inp, 12, 12))
    assert weighted(g) <= {k.rpartition(".")[0] for k in reference.state_dict()}
    assert count(g, "add") == int(reference.use_res_connect)


@pytest.mark.parametrize(("inp", "out", "kernel", "stride", "t"),
                         [(16, 16, 3, 1, 6), (16, 24, 5, 2, 6), (32, 16, 3, 1, 1),
                          (40, 40, 5, 1, 6), (24, 24, 3, 1, 2.5)])
def test_mbconv_equals_torchvisions_efficientnet_block(inp, out, kernel, stride, t):
    reference = MBConv(MBConvConfig(t, kernel, stride, inp, out, 1), 0.0, nn.BatchNorm2d)
    cfg = InvertedResidual(out_channels=out, expand_ratio=t, kernel=kernel, stride=stride,
                           se_ratio=0.25, act="silu", divisor=8)
    g = build(inverted_residual, (inp, 12, 12), cfg=cfg)
    assert costs(g) == torch_costs(reference, (inp, 12, 12))
    assert weighted(g) <= {k.rpartition(".")[0] for k in reference.state_dict()}


@pytest.mark.parametrize("t", [1, 2, 4, 6])
def test_expansion_ratio_sets_the_width_of_the_depthwise_conv(t):
    g = build(inverted_residual, cfg=InvertedResidual(out_channels=16, expand_ratio=t))
    depthwise = next(n for n in g if n.kind == "conv2d" and n.op.groups > 1)
    assert depthwise.type.channels == depthwise.op.groups == 16 * t
    # ratio 1 leaves out the expansion conv: depthwise and projection remain
    assert count(g, "conv2d") == (2 if t == 1 else 3)


@pytest.mark.parametrize(("stride", "out", "skip", "se_ratio", "paths"),
                         [(1, 16, True, 0.0, 2), (1, 16, True, 0.25, 3), (1, 16, False, 0.25, 2),
                          (1, 16, False, 0.0, 1), (2, 16, True, 0.25, 2), (1, 24, True, 0.0, 1)])
def test_multiplicity_comes_from_the_residual_and_the_gate(stride, out, skip, se_ratio, paths):
    cfg = InvertedResidual(out_channels=out, stride=stride, skip=skip, se_ratio=se_ratio)
    g = build(inverted_residual, cfg=cfg)
    assert multiplicity(g) == paths
    assert count(g, "mul") == int(se_ratio > 0)


def test_squeeze_width_is_a_fraction_of_the_block_input():
    cfg = InvertedResidual(out_channels=40, se_ratio=0.25)
    g = build(inverted_residual, (40, 8, 8), cfg=cfg)
    fc1 = next(n for n in g if n.id.endswith("fc1"))
    assert fc1.type.channels == cfg.squeeze_channels(40) == 10
    assert InvertedResidual(out_channels=8, se_ratio=0.01).squeeze_channels(8) == 1


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_inverted_residual_stage_repeats_blocks_with_residuals_after_the_first(depth):
    cfg = InvertedResidual(out_channels=24, stride=2)
    g = build(inverted_residual_stage, cfg=cfg, depth=depth)
    assert g.outputs[0].type.shape == (24, 6, 6)
    assert count(g, "add") == depth - 1
    assert multiplicity(g) == 2 ** (depth - 1)
    assert {n.id.split("/")[0] for n in g if n.kind == "conv2d"} == {
        str(k) for k in range(depth)}


def test_inverted_residual_configs_are_frozen_and_validated():
    cfg = InvertedResidual(out_channels=16)
    with pytest.raises(ValidationError):
        cfg.stride = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        InvertedResidual(out_channels=0)
    with pytest.raises(ValidationError):
        SeparableConv(out_channels=8, kernel=0)
    assert cfg.model_copy(update={"stride": 2}) != cfg


def test_make_divisible_equals_torchvisions():
    for v in [x / 4 for x in range(1, 4000)]:
        for d in (1, 4, 8):
            assert make_divisible(v, d) == _make_divisible(v, d), (v, d)
