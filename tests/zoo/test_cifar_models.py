"""The CIFAR-10 models, which torchvision lacks: their parameter counts against the published
papers and, exactly, params and MACs against independent torch definitions written here the
way the papers' public code builds them.

MACs are compared at 8 x 8 inputs to keep the suite fast; every definition below pools
globally, so the same formulas hold at 32 x 32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nasgraph import summarize, zoo
from nasgraph.ir import ops


def torch_costs(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, MACs) as torch counts them: flop_counter reports 2 per MAC."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = model(torch.randn(1, *shape))
    assert y.shape == (1, 10)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def ours(name: str, shape: tuple[int, int, int] = (3, 8, 8)) -> tuple[int, int]:
    s = summarize(zoo.get(name, input_shape=shape))
    return s.params, s.macs


def weights_without_bn(name: str) -> int:
    graph = zoo.get(name)
    return summarize(graph).params - sum(
        2 * n.type.channels for n in graph if isinstance(n.op, ops.BatchNorm2d))


class Head(nn.Module):
    """Optional BN-ReLU, global average pooling and the linear classifier."""

    def __init__(self, channels: int, final_act: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels) if final_act else None
        self.fc = nn.Linear(channels, 10)

    def forward(self, x):
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------- He et al. 2015, option A


class OptionABlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2
        self.stride = stride

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, ::self.stride, ::self.stride]
        shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


def cifar_resnet(n: int) -> nn.Module:
    layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for stage, cout in enumerate((16, 32, 64)):
        for k in range(n):
            layers.append(OptionABlock(cin, cout, 2 if stage and not k else 1))
            cin = cout
    return nn.Sequential(*layers, Head(64, final_act=False))


@pytest.mark.parametrize(("name", "n", "published"), [
    ("resnet20_cifar", 3, 0.27),  # He et al. 2015, Table 6: ResNet-20, 0.27M
    ("resnet56_cifar", 9, 0.85),  # He et al. 2015, Table 6: ResNet-56, 0.85M
])
def test_cifar_resnets(name, n, published):
    params, macs = ours(name)
    assert round(params / 1e6, 2) == published
    assert (params, macs) == torch_costs(cifar_resnet(n), (3, 8, 8))


# ------------------------------------------------------- He et al. 2016, identity mappings


class PreActBlock(nn.Module):
    """Basic or bottleneck pre-activation block, as kuangliu/pytorch-cifar defines them."""

    def __init__(self, cin: int, planes: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        cout = planes * (4 if bottleneck else 1)
        shapes = ([(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, cout, 1, 1)]
                  if bottleneck else [(cin, planes, 3, stride), (planes, planes, 3, 1)])
        self.bns = nn.ModuleList(nn.BatchNorm2d(i) for i, _, _, _ in shapes)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, k // 2, bias=False)
                                   for i, o, k, s in shapes)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bns[0](x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.convs[0](out)
        for bn, conv in zip(self.bns[1:], self.convs[1:], strict=True):
            out = conv(F.relu(bn(out)))
        return out + shortcut


def preact_resnet(planes, blocks, stem, bottleneck, final_act) -> nn.Module:
    layers, cin = [nn.Conv2d(3, stem, 3, 1, 1, bias=False)], stem
    for stage, (p, n) in enumerate(zip(planes, blocks, strict=True)):
        for k in range(n):
            layers.append(PreActBlock(cin, p, 2 if stage and not k else 1, bottleneck))
            cin = p * (4 if bottleneck else 1)
    return nn.Sequential(*layers, Head(cin, final_act))


def test_preact_resnet18_matches_the_common_cifar_code():
    # kuangliu/pytorch-cifar's PreActResNet18: no BN-ReLU before pooling; 11,171,146 params
    reference = preact_resnet((64, 128, 256, 512), (2, 2, 2, 2), 64, False, False)
    params, macs = ours("preact_resnet18")
    assert params == 11_171_146
    assert (params, macs) == torch_costs(reference, (3, 8, 8))


def test_preact_resnet1001_matches_the_paper():
    # He et al. 2016, Table 2 (CIFAR-10): ResNet-1001, 10.2M params. The paper's figure is
    # the conv and linear weights; BN's scale and shift add 149,216 more.
    assert round(weights_without_bn("preact_resnet1001_cifar") / 1e6, 1) == 10.2
    reference = preact_resnet((16, 32, 64), (111, 111, 111), 16, True, True)
    assert ours("preact_resnet1001_cifar")[0] == sum(p.numel() for p in reference.parameters())


def test_preact_bottleneck_resnet_macs():
    # MACs on ResNet-164 (n = 18), the paper's shallower sibling (1.7M params, Table 2), so
    # that the flop counter need not walk a thousand layers.
    from nasgraph.zoo.preact_resnet import preact_resnet as build

    s = summarize(build("resnet164", "bottleneck", (16, 32, 64), [18] * 3, 16, True,
                        input_shape=(3, 8, 8)))
    assert round(s.params / 1e6, 1) == 1.7
    reference = preact_resnet((16, 32, 64), (18, 18, 18), 16, True, True)
    assert (s.params, s.macs) == torch_costs(reference, (3, 8, 8))


# ------------------------------------------------------ Zagoruyko & Komodakis 2016, WRN


class WideBlock(nn.Module):
    """The wide-residual-networks basic block: BN-ReLU-conv, BN-ReLU-dropout-conv."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(0.3)
        self.project = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        shortcut = x if self.project is None else self.project(o)
        o = self.conv2(self.drop(F.relu(self.bn2(self.conv1(o)))))
        return o + shortcut


def test_wrn_28_10_matches_the_paper():
    # Zagoruyko & Komodakis 2016, Table 4 (CIFAR-10): WRN-28-10, 36.5M params
    params, macs = ours("wrn_28_10_cifar")
    assert round(params / 1e6, 1) == 36.5
    layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)], 16
    for stage, cout in enumerate((160, 320, 640)):
        for k in range(4):
            layers.append(WideBlock(cin, cout, 2 if stage and not k else 1))
            cin = cout
    reference = nn.Sequential(*layers, Head(640, final_act=True))
    assert (params, macs) == torch_costs(reference, (3, 8, 8))


# --------------------------------------------------------------- Han et al. 2017, PyramidNet


class PyramidBlock(nn.Module):
    """The authors' basic pyramidal unit: BN-conv-BN-ReLU-conv-BN, shortcut average-pooled
    and zero-padded."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout))
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 else nn.Identity()
        self.extra = cout - cin

    def forward(self, x):
        out = self.body(x)
        shortcut = self.pool(x)
        zeros = shortcut.new_zeros(shortcut.shape[0], self.extra, *shortcut.shape[2:])
        return out + torch.cat([shortcut, zeros], 1)


def test_pyramidnet110_a48_matches_the_paper():
    # Han et al. 2017, Table 4 (CIFAR): PyramidNet alpha=48, 110 layers, "1.7M" params.
    # The authors' code builds 1,772,706: the paper truncates to one decimal.
    params, macs = ours("pyramidnet110_a48_cifar")
    assert int(params / 1e5) / 10 == 1.7
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)]
    width, cin, n = 16.0, 16, 18
    for stage in range(3):
        for k in range(n):
            width += 48 / (3 * n)  # as the authors' code accumulates it
            layers.append(PyramidBlock(cin, int(round(width)), 2 if stage and not k else 1))
            cin = int(round(width))
    reference = nn.Sequential(*layers, Head(cin, final_act=True))
    assert cin == 64
    assert (params, macs) == torch_costs(reference, (3, 8, 8))
    assert params == 1_772_706
