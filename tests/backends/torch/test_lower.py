"""The torch lowering: covers every op, runs random DAGs, and IS the reference models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings

from nasgraph import GraphBuilder, ops, zoo
from nasgraph.backends.torch import lower
from tests.strategies import graphs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_dags_lower_and_produce_the_inferred_shapes(g):
    m = lower(g).eval()
    x = torch.randn(2, *g.inputs[0].type.shape)
    ys = m(x)
    ys = ys if isinstance(ys, tuple) else (ys,)
    assert [tuple(y.shape[1:]) for y in ys] == [o.type.shape for o in g.outputs]


def test_a_training_step_lowers_the_loss():
    torch.manual_seed(0)
    g = zoo.get("resnet18", num_classes=4, input_shape=(3, 32, 32))
    m = lower(g).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in m.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_channel_shuffle_is_torchs():
    """The lowering's view-transpose-reshape (which ONNX can express) is torch's own op."""
    b = GraphBuilder()
    x = b.input(12, 5, 6)
    b.output(b.node(ops.ChannelShuffle(groups=3), [x]))
    x = torch.randn(2, 12, 5, 6)
    assert torch.equal(lower(b.build())(x), F.channel_shuffle(x, 3))
