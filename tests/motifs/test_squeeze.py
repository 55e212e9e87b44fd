"""The fire module against torchvision's, and what its widths and branches do."""

from __future__ import annotations

from torchvision.models.squeezenet import Fire as TorchFire

from nasgraph import summarize
from nasgraph.analysis import multiplicity
from nasgraph.ir import ops
from nasgraph.motifs import Fire, fire
from tests.motifs._build import alone


def module(cfg: Fire, channels: int = 96):
    return alone(lambda b, x: fire(b, x, cfg), (channels, 13, 13))


def test_matches_torchvision():
    g = module(Fire(squeeze=16, expand=64))
    reference = TorchFire(96, 16, 64, 64)
    assert summarize(g).params == sum(p.numel() for p in reference.parameters())
    weighted = {n.param_key for n in g if isinstance(n.op, ops.Conv2d)}
    assert weighted == {k.rpartition(".")[0] for k in reference.state_dict()}


def test_shape_width_and_branches():
    cfg = Fire(squeeze=8, expand=20, kernels=(1, 3, 5))
    g = module(cfg)
    assert g.outputs[0].type.shape == (60, 13, 13) == (cfg.out_channels, 13, 13)
    assert g["squeeze"].type.channels == 8
    assert g["expand5x5"].op.kernel == (5, 5) and g["expand5x5"].op.pad == (2, 2)
    assert multiplicity(g) == 3
    assert multiplicity(module(Fire(squeeze=8, expand=20, kernels=(3,)))) == 1
