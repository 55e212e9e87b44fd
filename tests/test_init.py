"""`init_state`: torch's initializations in numpy, with torch's shapes, on both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import nasgraph
from nasgraph import init_state, zoo
from nasgraph.backends.torch import MODULES, lower
from nasgraph.ir import GraphBuilder, TensorType, ops
from tests.strategies import graphs


def _layer(op: ops.Op, inputs: list[TensorType]) -> dict[str, np.ndarray]:
    """init_state of a graph holding `op` alone, keyed by weight name."""
    b = GraphBuilder()
    x = b.input(inputs[0].channels, inputs[0].height, inputs[0].width)
    x = b.flatten(x) if inputs[0].flat else x
    b.output(b.node(op, [x], name="layer"))
    return {k.removeprefix("layer."): v for k, v in init_state(b.build(), seed=1).items()}


def _assert_moments(w: np.ndarray, std: float) -> None:
    # the sample mean of n draws is within 5 standard errors; the sample std within 1%
    assert abs(float(w.mean())) < 5 * std / math.sqrt(w.size)
    assert float(w.std()) == pytest.approx(std, rel=0.01)


@pytest.mark.parametrize("groups", [1, 4])
def test_convs_are_he_normal_by_fan_out(groups):
    op = ops.Conv2d(out_channels=512, kernel=3, groups=groups)
    w = _layer(op, [TensorType(channels=256, height=8, width=8)])
    assert w["weight"].dtype == np.float32 and w["weight"].shape == (512, 256 // groups, 3, 3)
    # torch's fan_out leaves groups out: kaiming_normal_(mode="fan_out") on this weight
    _, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(512, 256 // groups, 3, 3))
    _assert_moments(w["weight"], math.sqrt(2 / fan_out))
    assert not w["bias"].any()


def test_linear_layers_are_uniform_by_fan_in():
    w = _layer(ops.Linear(out_features=1000), [TensorType.vector(2048)])
    bound = 1 / math.sqrt(2048)
    for name in ("weight", "bias"):
        assert w[name].dtype == np.float32
        assert -bound <= w[name].min() < -0.9 * bound and 0.9 * bound < w[name].max() < bound
    _assert_moments(w["weight"], bound / math.sqrt(3))


def test_batchnorm_starts_as_the_identity():
    w = _layer(ops.BatchNorm2d(), [TensorType(channels=5, height=2, width=2)])
    assert {k: v.tolist() for k, v in w.items()} == {
        "weight": [1.0] * 5, "bias": [0.0] * 5, "running_mean": [0.0] * 5,
        "running_var": [1.0] * 5, "num_batches_tracked": 0}
    assert w["num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize(("op", "shape"), [
    (ops.Conv2d(out_channels=12, kernel=(1, 7), groups=3), (6, 9, 9)),
    (ops.Conv2d(out_channels=8, kernel=3, groups=8), (8, 5, 5)),
    (ops.FusedConv2d(out_channels=4, kernel=5), (2, 9, 9)),
])
def test_conv_fans_are_torchs(op, shape):
    (spec,) = [s for s in op.weight_specs([TensorType(channels=shape[0], height=shape[1],
                                                      width=shape[2])]).values() if s.fan]
    _, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(spec.shape))
    assert spec.fan == fan_out


def test_linear_fan_is_torchs():
    specs = ops.Linear(out_features=3).weight_specs([TensorType.vector(11)])
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(specs["weight"].shape))
    assert specs["weight"].fan == specs["bias"].fan == fan_in


def test_a_seed_gives_the_same_weights_and_another_seed_others():
    g = zoo.get("lenet5")
    a, b, c = init_state(g, 3), init_state(g, 3), init_state(g, 4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["c1.weight"], c["c1.weight"])


def _torch_state(graph):
    """Key -> (shape, dtype, is a parameter) of the modules the torch lowering builds for
    `graph`, made on the meta device: torch's own constructors, without init_state."""
    state = {}
    with torch.device("meta"):
        for node in graph:
            if node.kind in MODULES:
                module = MODULES[node.kind](node, graph)
                params = {name for name, _ in module.named_parameters()}
                for name, t in module.state_dict().items():
                    state[f"{node.param_key}.{name}"] = (
                        tuple(t.shape), str(t.dtype).removeprefix("torch."), name in params)
    return state


def _ours(graph, state):
    specs = graph.weight_specs()
    return {k: (v.shape, str(v.dtype), specs[k][1].trainable) for k, v in state.items()}


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_specs_are_the_torch_modules(name):
    # every zoo model: keys, shapes, dtypes and which are parameters, as torch builds them
    g = zoo.get(name)
    want = _torch_state(g)
    specs = {k: (s.shape, s.dtype, s.trainable) for k, (_, s) in g.weight_specs().items()}
    assert specs == want


@pytest.mark.parametrize("name", ["lenet5", "resnet20_cifar", "mobilenet_v2", "googlenet"])
def test_init_state_has_the_torch_modules_keys_shapes_and_dtypes(name):
    g = zoo.get(name, num_classes=10)
    assert _ours(g, init_state(g)) == _torch_state(g)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs())
def test_init_state_of_random_dags_has_the_torch_modules_state(g):
    assert _ours(g, init_state(g)) == _torch_state(g)


def test_lower_loads_init_state():
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    m = lower(g, seed=3)
    state = init_state(g, 3)
    assert m.state_dict().keys() == state.keys()
    assert all(np.array_equal(t.numpy(), state[k]) for k, t in m.state_dict().items())
    assert all(p.requires_grad for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == nasgraph.summarize(g).params


def test_torch_manual_seed_fixes_lower():
    g = zoo.get("lenet5")
    torch.manual_seed(5)
    a = lower(g).state_dict()
    torch.manual_seed(5)
    b = lower(g).state_dict()
    c = lower(g).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(b["c1.weight"], c["c1.weight"])
