"""The mlpconv motif against torch: a conv then 1x1 convs, each with a ReLU."""

from __future__ import annotations

import pytest
from torch import nn

from nasgraph import summarize
from nasgraph.ir import GraphBuilder
from nasgraph.motifs import MlpConv, mlpconv


@pytest.mark.parametrize(("widths", "kernel", "stride"), [((7,), 3, 1), ((8, 5, 6), 5, 2)])
def test_mlpconv_widths_and_depth(widths, kernel, stride):
    b = GraphBuilder()
    cfg = MlpConv(widths=widths, kernel=kernel, stride=stride)
    y = mlpconv(b, b.input(4, 11, 11), cfg)
    b.output(y)
    s = summarize(b.build())
    layers = [nn.Conv2d(4, widths[0], kernel, stride)] + [
        nn.Conv2d(a, c, 1) for a, c in zip(widths, widths[1:], strict=False)]
    assert s.params == sum(p.numel() for m in layers for p in m.parameters())
    assert s.depth == cfg.depth == len(widths)
    assert y.type.shape == (widths[-1], (11 - 1) // stride + 1, (11 - 1) // stride + 1)
    assert sum(n.kind == "activation" for n in b.build()) == len(widths)


def test_mlpconv_with_batchnorm():
    b = GraphBuilder()
    b.output(mlpconv(b, b.input(3, 8, 8), MlpConv(widths=(4, 4), bn=True)))
    graph = b.build()
    assert [n.kind for n in graph].count("batchnorm2d") == 2
    assert not any(n.op.bias for n in graph if n.kind == "conv2d")
