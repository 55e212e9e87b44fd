"""Dense blocks and transitions against torchvision's own, and the dense connectivity."""

from __future__ import annotations

import pytest
from torchvision.models.densenet import _DenseBlock, _Transition

from nasgraph import summarize
from nasgraph.analysis import multiplicity
from nasgraph.ir import ops
from nasgraph.motifs import DenseBlock, Transition, dense_block, transition
from tests.motifs._build import alone


def block(cfg: DenseBlock, channels: int = 24):
    return alone(lambda b, x: dense_block(b, x, cfg), (channels, 6, 6))


@pytest.mark.parametrize(("layers", "growth", "bn_size"), [(1, 8, 4), (4, 12, 4), (6, 32, 2)])
def test_block_matches_torchvision(layers, growth, bn_size):
    g = block(DenseBlock(num_layers=layers, growth_rate=growth, bn_size=bn_size))
    reference = _DenseBlock(layers, 24, bn_size, growth, drop_rate=0)
    assert summarize(g).params == sum(p.numel() for p in reference.parameters())
    weighted = {n.param_key for n in g if isinstance(n.op, ops.Conv2d | ops.BatchNorm2d)}
    assert weighted == {k.rpartition(".")[0] for k in reference.state_dict()}


@pytest.mark.parametrize("layers", [1, 3, 5])
def test_width_and_depth(layers):
    cfg = DenseBlock(num_layers=layers, growth_rate=10)
    g = block(cfg)
    assert g.outputs[0].type.shape == (24 + 10 * layers, 6, 6) == (cfg.out_channels(24), 6, 6)
    assert summarize(g).depth == 2 * layers
    assert summarize(block(cfg.model_copy(update={"bn_size": None}))).depth == layers


@pytest.mark.parametrize("layers", [1, 3, 5])
def test_window_sets_the_dense_connectivity(layers):
    full = block(DenseBlock(num_layers=layers))
    chain = block(DenseBlock(num_layers=layers, window=1))
    assert multiplicity(full) == 2 ** layers  # every subset of layers is a path
    assert multiplicity(chain) == layers + 1  # a chain, each output concatenated
    assert block(DenseBlock(num_layers=layers, window=layers)) == full
    assert chain.outputs[0].type == full.outputs[0].type


def test_transition_compresses_and_pools():
    g = alone(lambda b, x: transition(b, x, Transition(compression=0.5)), (25, 6, 6))
    assert g.outputs[0].type.shape == (12, 3, 3)
    reference = _Transition(25, 12)
    assert summarize(g).params == sum(p.numel() for p in reference.parameters())
    assert Transition(compression=1.0).out_channels(25) == 25
