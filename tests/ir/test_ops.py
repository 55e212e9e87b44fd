"""Every op's type rule, costs and weights against the equivalent torch module (walks the
registry)."""

from __future__ import annotations

import math
from typing import get_args, get_origin

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.convnext import LayerNorm2d

from nasgraph.errors import ShapeError
from nasgraph.ir import OPS, TensorType, ops


def T(c: int, h: int = 1, w: int = 1) -> TensorType:
    return TensorType(channels=c, height=h, width=w)


def V(n: int) -> TensorType:
    return TensorType.vector(n)


ACT = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(),
       "silu": nn.SiLU(), "hardswish": nn.Hardswish(), "gelu": nn.GELU()}

class ConvAddAct(nn.Conv2d):
    """`act(conv(x) + residual)`, what a FusedConv2d computes."""

    def __init__(self, *args, act=torch.relu, **kwargs):
        super().__init__(*args, **kwargs)
        self.act = act

    def forward(self, x, *residual):
        return self.act(super().forward(x) + sum(residual))


# kind -> [(op, input types, torch equivalent: module or function of the input tensors)]
CASES: dict[str, list[tuple[ops.Op, list[TensorType], object]]] = {
    "input": [(ops.Input(channels=3, height=7, width=9), [], None)],
    "output": [(ops.Output(), [T(5, 3, 3)], nn.Identity())],
    "conv2d": [
        (ops.Conv2d(out_channels=8, kernel=3, stride=2, padding=1), [T(4, 11, 13)],
         nn.Conv2d(4, 8, 3, 2, 1)),
        (ops.Conv2d(out_channels=6, kernel=(1, 7), padding=(0, 3), bias=False), [T(4, 9, 9)],
         nn.Conv2d(4, 6, (1, 7), padding=(0, 3), bias=False)),
        (ops.Conv2d(out_channels=6, kernel=(7, 1), padding="same"), [T(3, 9, 10)],
         nn.Conv2d(3, 6, (7, 1), padding="same")),
        (ops.Conv2d(out_channels=4, kernel=3, dilation=2, padding=2, stride=(1, 2)),
         [T(2, 10, 10)], nn.Conv2d(2, 4, 3, (1, 2), 2, dilation=2)),
        (ops.Conv2d(out_channels=12, kernel=3, groups=3, padding=1), [T(6, 8, 8)],
         nn.Conv2d(6, 12, 3, padding=1, groups=3)),
        (ops.Conv2d(out_channels=8, kernel=3, groups=8, stride=2, padding=1, bias=False),
         [T(8, 7, 7)], nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False)),
    ],
    "fused_conv2d": [
        (ops.FusedConv2d(out_channels=8, kernel=3, padding=1, act="relu", residual=True),
         [T(4, 6, 6), T(8, 6, 6)], ConvAddAct(4, 8, 3, padding=1)),
        (ops.FusedConv2d(out_channels=6, kernel=1, groups=2, bias=False, act="silu"),
         [T(4, 5, 5)], ConvAddAct(4, 6, 1, groups=2, bias=False, act=F.silu)),
    ],
    "batchnorm2d": [(ops.BatchNorm2d(), [T(7, 4, 5)], nn.BatchNorm2d(7))],
    "activation": [(ops.Activation(fn=fn), [T(3, 4, 4)], m) for fn, m in ACT.items()],
    "maxpool2d": [
        (ops.MaxPool2d(kernel=3, stride=2, padding=1), [T(3, 10, 10)], nn.MaxPool2d(3, 2, 1)),
        (ops.MaxPool2d(kernel=3, stride=2, ceil_mode=True), [T(3, 10, 10)],
         nn.MaxPool2d(3, 2, ceil_mode=True)),
        (ops.MaxPool2d(kernel=2), [T(3, 9, 7)], nn.MaxPool2d(2)),
    ],
    "avgpool2d": [
        (ops.AvgPool2d(kernel=3, stride=1, padding=1, count_include_pad=False), [T(3, 6, 6)],
         nn.AvgPool2d(3, 1, 1, count_include_pad=False)),
        (ops.AvgPool2d(kernel=(2, 3), stride=2, ceil_mode=True), [T(2, 9, 9)],
         nn.AvgPool2d((2, 3), 2, ceil_mode=True)),
    ],
    "adaptive_avgpool2d": [
        (ops.AdaptiveAvgPool2d(size=(6, 6)), [T(3, 13, 6)], nn.AdaptiveAvgPool2d((6, 6))),
        (ops.AdaptiveAvgPool2d(size=(7, 7)), [T(3, 2, 2)], nn.AdaptiveAvgPool2d((7, 7))),
    ],
    "global_avgpool": [(ops.GlobalAvgPool(), [T(5, 6, 7)], nn.AdaptiveAvgPool2d(1))],
    "concat": [(ops.Concat(), [T(2, 5, 5), T(3, 5, 5), T(1, 5, 5)],
                lambda *xs: torch.cat(xs, dim=1))],
    "add": [(ops.Add(), [T(4, 3, 3), T(4, 3, 3)], lambda a, b: a + b),
            (ops.Add(weights=(0.2, 1.0, 1.0)), [T(4, 3, 3)] * 3,
             lambda a, b, c: 0.2 * a + b + c)],
    "mul": [(ops.Mul(), [T(4, 5, 5), T(4, 1, 1)], lambda a, b: a * b),
            (ops.Mul(), [T(4, 1, 1), T(4, 5, 5)], lambda a, b: a * b),
            (ops.Mul(), [T(4, 5, 5), T(4, 5, 5)], lambda a, b: a * b)],
    "flatten": [(ops.Flatten(), [T(3, 4, 5)], nn.Flatten())],
    "linear": [(ops.Linear(out_features=7), [V(12)], nn.Linear(12, 7)),
               (ops.Linear(out_features=3, bias=False), [V(5)], nn.Linear(5, 3, bias=False))],
    "dropout": [(ops.Dropout(p=0.3), [T(3, 4, 4)], nn.Dropout(0.3))],
    "identity": [(ops.Identity(), [T(3, 4, 4)], nn.Identity())],
    "upsample": [
        (ops.Upsample(scale=2), [T(3, 4, 5)], nn.Upsample(scale_factor=2)),
        (ops.Upsample(size=(9, 11), mode="bilinear"), [T(3, 4, 5)],
         nn.Upsample(size=(9, 11), mode="bilinear")),
        (ops.Upsample(scale=1.5, mode="bilinear", align_corners=True), [T(2, 5, 5)],
         nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True)),
    ],
    "channel_pad": [(ops.ChannelPad(before=1, after=3), [T(2, 3, 3)],
                     lambda x: F.pad(x, (0, 0, 0, 0, 1, 3)))],
    "channel_shuffle": [(ops.ChannelShuffle(groups=3), [T(6, 4, 5)],
                         lambda x: F.channel_shuffle(x, 3))],
    "channel_slice": [(ops.ChannelSlice(start=1, stop=4), [T(6, 4, 5)], lambda x: x[:, 1:4])],
    "layernorm2d": [(ops.LayerNorm2d(eps=1e-6), [T(8, 4, 5)], LayerNorm2d(8, eps=1e-6))],
}


def test_every_registered_op_has_cases():
    assert set(CASES) == set(OPS), "add a row to CASES for each new op"


def _flat_cases():
    for kind, rows in CASES.items():
        for k, (op, ins, ref) in enumerate(rows):
            yield pytest.param(op, ins, ref, id=f"{kind}-{k}")


@pytest.mark.parametrize(("op", "inputs", "reference"), list(_flat_cases()))
def test_type_and_costs_match_torch(op, inputs, reference):
    out = op.infer(inputs)
    if reference is None:  # the input op: its type is its attributes
        assert out.shape == (op.channels, op.height, op.width)
        return
    xs = [torch.randn(2, *t.shape) for t in inputs]
    with FlopCounterMode(display=False) as counter:
        y = reference.eval()(*xs) if isinstance(reference, nn.Module) else reference(*xs)
    assert tuple(y.shape[1:]) == out.shape
    params = sum(p.numel() for p in reference.parameters()) \
        if isinstance(reference, nn.Module) else 0
    assert op.params(inputs) == params
    state = reference.state_dict() if isinstance(reference, nn.Module) else {}
    specs = op.weight_specs(inputs)
    assert {k: w.shape for k, w in specs.items()} == {k: tuple(t.shape) for k, t in state.items()}
    assert {k: w.dtype for k, w in specs.items()} == {k: str(t.dtype).removeprefix("torch.")
                                                      for k, t in state.items()}
    assert {k for k, w in specs.items() if w.trainable} == (
        {k for k, _ in reference.named_parameters()} if state else set())
    # flop_counter counts 2 per MAC of conv and matmul layers, for the whole batch of 2
    assert op.macs(inputs, out) == counter.get_total_flops() // 2 // 2
    assert op.flops(inputs, out) >= 2 * op.macs(inputs, out)


@pytest.mark.parametrize(("op", "inputs", "message"), [
    (ops.Linear(out_features=3), [T(4, 2, 2)], "insert a Flatten"),
    (ops.Conv2d(out_channels=4, kernel=5), [T(3, 3, 3)], "larger than its padded input"),
    (ops.Conv2d(out_channels=4, groups=2), [T(3, 8, 8)], "does not divide the 3 input"),
    (ops.MaxPool2d(kernel=4), [T(3, 3, 3)], "larger than its padded input"),
    (ops.Concat(), [T(2, 4, 4), T(2, 5, 4)], "spatial mismatch"),
    (ops.Add(), [T(2, 4, 4), T(3, 4, 4)], "channel mismatch"),
    (ops.Mul(), [T(2, 4, 4), T(2, 2, 2)], "cannot multiply"),
    (ops.BatchNorm2d(), [V(4)], "needs a C x H x W input"),
])
def test_type_rule_rejects(op, inputs, message):
    with pytest.raises(ShapeError, match=message):
        op.infer(inputs)


@pytest.mark.parametrize(("cls", "attrs"), [
    (ops.Conv2d, {"out_channels": 0}),
    (ops.Conv2d, {"out_channels": 4, "kernel": (0, 3)}),
    (ops.Conv2d, {"out_channels": 4, "padding": -1}),
    (ops.Conv2d, {"out_channels": 4, "stride": 2, "padding": "same"}),
    (ops.Conv2d, {"out_channels": 6, "groups": 4}),
    (ops.MaxPool2d, {"kernel": 2, "padding": 2}),
    (ops.Upsample, {}),
    (ops.Dropout, {"p": 1.0}),
])
def test_bad_attributes_are_rejected(cls, attrs):
    with pytest.raises(ValueError):
        cls(**attrs)


def test_specs_are_frozen_hashable_and_normalized():
    a, b = ops.Conv2d(out_channels=4, kernel=3), ops.Conv2d(out_channels=4, kernel=(3, 3))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(ValueError):
        a.out_channels = 5
    assert a.model_copy(update={"out_channels": 5}).out_channels == 5


def _float_fields():
    """(op, attribute, whether it is a tuple) for every float attribute of every op kind."""

    def args(t):
        return [t, *(a for x in get_args(t) for a in args(x))]

    for kind, rows in CASES.items():
        op = rows[0][0]
        for field, info in type(op).model_fields.items():
            if float in args(info.annotation):
                is_tuple = tuple in map(get_origin, args(info.annotation))
                yield pytest.param(op, field, is_tuple, id=f"{kind}.{field}")


@pytest.mark.parametrize(("op", "field", "is_tuple"), list(_float_fields()))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_float_attribute_refuses_nan_and_infinity(op, field, is_tuple, bad):
    with pytest.raises(ValidationError, match="finite number"):
        type(op)(**{**op.model_dump(), field: (1.0, bad) if is_tuple else bad})


def test_float_attributes_are_walked():
    assert {p.id for p in _float_fields()} == {"batchnorm2d.eps", "batchnorm2d.momentum",
                                               "dropout.p", "upsample.scale", "add.weights",
                                               "layernorm2d.eps"}
