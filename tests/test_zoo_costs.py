"""The foundation's promise: zoo graphs cost exactly what torchvision's models cost."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasgraph import summarize, zoo


def torch_costs(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, MACs) as torch counts them: flop_counter reports 2 per MAC."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *shape))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnets_match_torchvision(name):
    s = summarize(zoo.get(name))
    assert (s.params, s.macs) == torch_costs(getattr(torchvision.models, name)(), (3, 224, 224))


def test_resnet50_matches_the_published_figures():
    s = summarize(zoo.get("resnet50"))
    assert s.params == 25_557_032  # torchvision's ResNet50_Weights.IMAGENET1K_V1.meta
    assert round(s.macs / 1e9, 3) == 4.089  # meta["_ops"], GFLOPS in its sense (MACs)


def test_reduced_input_and_classes_still_match_torchvision():
    s = summarize(zoo.get("resnet18", num_classes=10, input_shape=(3, 64, 48)))
    assert (s.params, s.macs) == torch_costs(torchvision.models.resnet18(num_classes=10),
                                             (3, 64, 48))


def test_lenet5_matches_an_independent_torch_definition():
    reference = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84),
        nn.Tanh(), nn.Linear(84, 10))
    s = summarize(zoo.get("lenet5"))
    assert (s.params, s.macs) == torch_costs(reference, (1, 32, 32))
    assert s.params == 61_706
