"""The numba executor agrees with the torch lowering on every op, random DAGs and the zoo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasgraph import zoo
from nasgraph.backends import numba as nb
from nasgraph.backends.numba.executor import BINDERS, VIEWS
from nasgraph.backends.torch import lower
from nasgraph.errors import NasgraphError
from nasgraph.ir import OPS, GraphBuilder
from tests.strategies import graphs


def randomized(graph, seed=0):
    """The torch reference of `graph` in eval mode, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    m = lower(graph).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m


def assert_agree(graph, batch=2, seed=0, **kwargs):
    m = randomized(graph, seed)
    x = np.random.default_rng(seed).standard_normal(
        (batch, *graph.inputs[0].type.shape)).astype(np.float32)
    got = nb.compile(graph, m.state_dict(), **kwargs)(x)
    with torch.no_grad():
        want = m(torch.from_numpy(x))
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want, strict=True):
        w = w.numpy()
        assert g.shape == w.shape
        scale = max(1.0, float(np.abs(w).max()))
        assert float(np.abs(g - w).max()) <= 1e-4 * scale


def test_every_registered_op_has_a_kernel():
    assert set(OPS) <= set(BINDERS) | VIEWS | {"concat"}


@pytest.mark.parametrize("optimize", [True, False])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs(), batch=st.integers(1, 3))
def test_random_dags_agree_with_torch(g, batch, optimize):
    assert_agree(g, batch=batch, optimize=optimize)


def _small(name):
    e = zoo.entry(name)
    shape = e.min_input or e.input_shape
    if e.family == "resnet":
        shape = (3, 32, 32)
    return zoo.get(name, num_classes=10, input_shape=shape)


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_models_agree_with_torch(name):
    assert_agree(_small(name))


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_give_the_same_result(threads):
    g = _small("resnet18")
    m = randomized(g)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    a = nb.compile(g, m.state_dict(), threads=threads)(x)
    b = nb.compile(g, m.state_dict(), threads=1, batch=1)(x)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_depthwise_dilated_and_strided_convs_agree():
    b = GraphBuilder("dw")
    x = b.input(6, 11, 9)
    y = b.conv(x, 12, (3, 5), stride=2, padding=(1, 2), dilation=2, groups=6)
    y = b.conv(b.relu(y), 12, (1, 7), padding=(0, 3), groups=3)
    b.output(b.upsample(y, size=(7, 13), mode="bilinear"))
    assert_agree(b.build(), batch=3)


def test_wrong_input_shape_names_the_graph():
    g = _small("lenet5")
    run = nb.compile(g, lower(g).state_dict())
    with pytest.raises(NasgraphError, match="lenet5"):
        run(np.zeros((1, 3, 5, 5), np.float32))


def test_run_numba_reports_shapes_memory_and_time():
    r = nb.run_numba(_small("lenet5"), batch=3, bench=True, repeats=2)
    assert r["outputs"] == [[3, 10]] and r["median_s"] > 0 and r["peak_memory_bytes"] > 0
