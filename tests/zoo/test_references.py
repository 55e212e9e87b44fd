"""Every zoo model with a reference implementation costs exactly what the reference costs.

Parametrized over the registry: a model registered with `reference=` is checked here the
moment it exists. Parameters are size-independent; MACs are compared at the entry's smallest
input (`min_input`) to keep the suite fast, which checks the same formulas.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasgraph import summarize, zoo
from tests.references import reference_model, with_reference


def _output(y):
    return y["out"] if isinstance(y, dict) else y


@pytest.mark.parametrize("name", with_reference())
def test_params_and_macs_equal_the_reference(name):
    entry = zoo.entry(name)
    shape = entry.min_input or entry.input_shape
    graph = zoo.get(name, input_shape=shape)
    model = reference_model(name)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = _output(model(torch.randn(1, *shape)))
    s = summarize(graph)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.macs == counter.get_total_flops() // 2
    assert [list(y.shape[1:])] == s.outputs


@pytest.mark.parametrize("name", with_reference())
def test_node_names_match_the_reference_modules(name):
    """Every weighted node is named like the reference module that holds its weights."""
    from nasgraph.ir import ops

    weighted = {n.param_key for n in zoo.get(name) if isinstance(
        n.op, ops.Conv2d | ops.Linear | ops.BatchNorm2d)}
    modules = {k.rpartition(".")[0] for k in reference_model(name).state_dict()}
    assert weighted <= modules, sorted(weighted - modules)[:5]
