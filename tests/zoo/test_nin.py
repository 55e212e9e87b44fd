"""Network in Network for CIFAR-10 against an independent torch definition.

The reference is written here from the paper's published Caffe model for CIFAR-10 (Lin,
Chen and Yan, "Network In Network", ICLR 2014; the model zoo's cifar10_nin prototxt, gist
mavenlin/e56253735ef32c3c296d): conv1 192 5x5 pad 2, cccp1 160, cccp2 96, pool1 max 3/2,
dropout, conv2 192 5x5 pad 2, cccp3 192, cccp4 192, pool2 average 3/2, dropout, conv3 192
3x3 pad 1, cccp5 192, cccp6 10, pool3 average 8 (global). Every conv has a bias and a ReLU;
Caffe rounds pooled sizes up (torch's ceil_mode).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasgraph import summarize, zoo


def caffe_nin(num_classes: int = 10) -> nn.Sequential:
    def mlpconv(c_in, widths, kernel, padding):
        layers = [nn.Conv2d(c_in, widths[0], kernel, padding=padding), nn.ReLU()]
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(a, b, 1), nn.ReLU()]
        return layers

    return nn.Sequential(
        *mlpconv(3, (192, 160, 96), 5, 2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Dropout(0.5),
        *mlpconv(96, (192, 192, 192), 5, 2), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Dropout(0.5),
        *mlpconv(192, (192, 192, num_classes), 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ).eval()


@pytest.mark.parametrize("shape", [(3, 32, 32), zoo.entry("nin_cifar").min_input])
def test_nin_cifar_matches_the_caffe_model(shape):
    reference = caffe_nin()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = reference(torch.randn(1, *shape))
    s = summarize(zoo.get("nin_cifar", input_shape=shape))
    assert s.params == sum(p.numel() for p in reference.parameters()) == 966_986
    assert s.macs == counter.get_total_flops() // 2
    assert s.outputs == [list(y.shape[1:])] == [[10]]


def test_pool2_leaves_the_8x8_map_the_caffe_model_pools_with_kernel_8():
    g = zoo.get("nin_cifar")
    assert g["pool2"].type.shape == (192, 8, 8)
    assert g["pool1"].type.shape == (96, 16, 16)  # 15 x 15 if the pools rounded down


def test_the_last_mlpconv_has_one_map_per_class():
    assert summarize(zoo.get("nin_cifar", num_classes=100)).outputs == [[100]]
    assert zoo.get("nin_cifar", num_classes=100)["mlpconv3/conv2"].type.channels == 100
