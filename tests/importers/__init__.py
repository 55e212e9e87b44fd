"""Tests of the frontends (nasgraph.importers), and what both test files share: the
torchvision models they import, built with random weights and random BN statistics (so
that folding BN is tested, not skipped by torch's identity initialization), and the
float32 comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

# name -> (input height = width, extra keyword arguments); batch 2 everywhere
TORCHVISION: dict[str, tuple[int, dict]] = {
    "resnet18": (64, {}),
    "mobilenet_v2": (64, {}),
    "mobilenet_v3_small": (64, {}),
    "squeezenet1_0": (64, {}),
    "vgg11": (32, {}),
    "googlenet": (64, {"aux_logits": False, "init_weights": False}),
    "efficientnet_b0": (64, {}),
    "regnet_x_400mf": (64, {}),
    "mnasnet0_5": (64, {}),
    "alexnet": (64, {}),
    "shufflenet_v2_x0_5": (64, {}),  # channel split (ChannelSlice) and shuffle
    "convnext_tiny": (64, {}),  # LayerNorm over channels; layer scale folded into the convs
    "resnet50": (64, {}),
    "densenet121": (64, {}),
    "inception_v3": (75, {"aux_logits": False, "init_weights": False}),
    "regnet_y_400mf": (64, {}),
    "mobilenet_v3_large": (64, {}),
    "resnext50_32x4d": (64, {}),
    "efficientnet_v2_s": (64, {}),
}
# over ~20 s per test on 2 cores (export, lowering, numba compile)
SLOW = {"convnext_tiny", "resnet50", "densenet121", "inception_v3", "regnet_y_400mf",
        "mobilenet_v3_large", "resnext50_32x4d", "efficientnet_v2_s"}


def model_params(names: list[str] | None = None) -> list:
    """pytest params over `names` (default: all of TORCHVISION), the slow ones marked."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
            for n in (names or list(TORCHVISION))]


def torchvision_model(name: str, num_classes: int = 10) -> nn.Module:
    """A torchvision classifier with random weights and random BN statistics, in eval mode."""
    import torchvision

    size, kwargs = TORCHVISION.get(name, (64, {}))
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                         **kwargs)
    randomize_batch_norms(model)
    return model.eval()


def randomize_batch_norms(model: nn.Module) -> None:
    """BN statistics and affine parameters drawn at random (torch starts them at 0 and 1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
                m.num_batches_tracked.fill_(7)


def example_input(name: str, batch: int = 2) -> torch.Tensor:
    size = TORCHVISION.get(name, (64, {}))[0]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    """Equal up to float32 rounding, scaled to the output's magnitude."""
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(ref).max()))


def lowered(graph, state: dict[str, np.ndarray]) -> nn.Module:
    """`lower(graph)` with `state` loaded strictly, in eval mode."""
    from nasgraph.backends.torch import lower

    module = lower(graph, seed=0)
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return module.eval()
