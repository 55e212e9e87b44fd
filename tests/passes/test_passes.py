"""Every pass preserves outputs (checked against the torch lowering of the original graph),
and the memory plan's peak is the analysis' figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from nasgraph import zoo
from nasgraph.analysis import peak_memory_bytes
from nasgraph.backends.torch import lower
from nasgraph.errors import NasgraphError
from nasgraph.ir import GraphBuilder
from nasgraph.passes import (
    INFERENCE,
    drop_identities,
    fold_batchnorm,
    fuse_epilogues,
    optimize,
    plan_memory,
)
from nasgraph.passes.memory import live_ranges
from tests.backends.numba.test_executor import randomized
from tests.strategies import graphs

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _torch_outputs(m, x):
    with torch.no_grad():
        y = m(torch.from_numpy(x))
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


def _assert_same(a, b):
    for p, q in zip(a, b, strict=True):
        assert np.abs(p - q).max() <= 1e-4 * max(1.0, float(np.abs(q).max()))


@pytest.mark.parametrize("upto", list(INFERENCE))
@SETTINGS
@given(g=graphs())
def test_each_pass_of_the_pipeline_preserves_outputs(upto, g):
    """The pipeline run through pass `upto` computes what the graph did, in eval mode."""
    m = randomized(g)
    x = np.random.default_rng(0).standard_normal((2, *g.inputs[0].type.shape), np.float32)
    names = list(INFERENCE)
    g2, state = optimize(g, m.state_dict(), names[:names.index(upto) + 1])
    _assert_same(_torch_outputs(lower(g2, state).eval(), x), _torch_outputs(m, x))


def test_the_pipeline_names_its_passes():
    with pytest.raises(NasgraphError, match=r"unknown pass 'fold_bn'; the passes: "
                                            r"drop_identities, fold_batchnorm"):
        optimize(zoo.get("lenet5"), {}, ["fold_bn"])


def test_merge_residual_biases_leaves_the_downsample_convs_none():
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    g2, state = optimize(g, lower(g).state_dict())
    plain = [n for n in g2 if n.kind == "conv2d"]
    assert [n.id for n in plain] == [f"layer{k}/0/downsample/0" for k in (2, 3, 4)]
    assert not any(n.op.bias for n in plain)
    assert not any(k.startswith("layer2.0.downsample") and k.endswith("bias") for k in state)


def test_fold_batchnorm_removes_every_bn_after_a_conv():
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    g2, state = fold_batchnorm(g, lower(g).state_dict())
    assert not any(n.kind == "batchnorm2d" for n in g2)
    assert not any(".bn" in k or "downsample.1" in k for k in state)


def test_fuse_epilogues_fuses_resnet_blocks():
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    g2 = fuse_epilogues(fold_batchnorm(g, lower(g).state_dict())[0])
    kinds = [n.kind for n in g2]
    assert "add" not in kinds and "activation" not in kinds
    assert sum(n.op.residual for n in g2 if n.kind == "fused_conv2d") == 8


def test_drop_identities_keeps_one_a_consumer_needs():
    b = GraphBuilder()
    x = b.input(2, 4, 4)
    b.output(b.concat([x, b.identity(b.dropout(x))]))
    assert [n.kind for n in drop_identities(b.build())] == ["input", "identity", "concat",
                                                            "output"]


@SETTINGS
@given(graphs())
def test_memory_plan_peak_is_the_analysis_figure_and_slots_never_overlap(g):
    plan = plan_memory(g)
    # (In-place concat saves copies but can raise the peak: the concat's buffer lives from
    # its first producer on. So the plan's peak is compared with the in-place analysis only.)
    assert plan.peak_bytes == peak_memory_bytes(g, concat_in_place=True)
    ranges = live_ranges(g, concat_in_place=True)
    for s, (a0, a1) in ranges.items():
        assert plan.slot_bytes[plan.slot[s]] >= g[s].type.nbytes
        for t, (b0, b1) in ranges.items():
            if s != t and plan.slot[s] == plan.slot[t]:
                assert a1 < b0 or b1 < a0  # shared only by tensors never live together


def test_concat_parts_are_written_in_place():
    b = GraphBuilder()
    x = b.input(3, 8, 8)
    y = b.concat([b.conv(x, 4, 1), b.conv(x, 5, 1)])
    b.output(y)
    g = b.build()
    plan = plan_memory(g)
    convs = [n.id for n in g if n.kind == "conv2d"]
    assert [plan.owner[c] for c in convs] == [y.id, y.id]
    assert [plan.channel_offset[c] for c in convs] == [0, 4]
    # input 3x8x8 + concat 9x8x8: the parts take no memory of their own
    assert plan.peak_bytes == peak_memory_bytes(g, concat_in_place=True) == 4 * (192 + 576)
    assert peak_memory_bytes(g) == 4 * (256 + 320 + 576)  # input freed after conv 2
