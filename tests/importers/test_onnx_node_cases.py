"""ONNX's own node tests (`onnx.backend.test.case.node`, generated offline by the onnx
package) against `from_onnx`: every 2-D float case of the ops a CNN is made of either
computes ONNX's expected output, through the torch lowering and the numba executor, or is
refused with a NasgraphError that says why. A wrong number fails.

A node test feeds its weights as graph inputs; a model stores them as initializers, so each
case's inputs after the first (the data) become initializers with the case's values.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from nasgraph.backends import numba as nb
from nasgraph.backends.torch import lower
from nasgraph.errors import NasgraphError
from nasgraph.importers import from_onnx

OPS = ("conv", "maxpool", "averagepool", "globalaveragepool", "batchnorm", "gemm", "flatten",
       "concat", "add", "mul")


def _cases() -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        cases = collect_testcases()
    chosen = []
    for case in cases:
        stem = case.name.removeprefix("test_")
        if case.kind != "node" or not any(stem == op or stem.startswith(op + "_")
                                          for op in OPS):
            continue
        if "1d" in stem or "3d" in stem or "expanded" in stem:
            continue  # not 2-D, or a function's expansion into other ops
        inputs, _ = case.data_sets[0]
        if inputs[0].dtype == np.float32:
            chosen.append(pytest.param(case, id=stem))
    return chosen


CASES = _cases()


def test_the_cases_cover_every_op():
    assert {op for op in OPS if any(p.id.startswith(op) for p in CASES)} == set(OPS)
    assert len(CASES) >= 50


@pytest.mark.parametrize("case", CASES)
def test_an_onnx_node_case_matches_or_is_refused(case, tmp_path):
    inputs, outputs = case.data_sets[0]
    model = copy.deepcopy(case.model)
    graph = model.graph
    for spec, value in list(zip(graph.input, inputs, strict=False))[1:]:
        graph.initializer.append(numpy_helper.from_array(value, spec.name))
    del graph.input[1:]
    path = tmp_path / f"{case.name}.onnx"
    onnx.save(model, path)
    try:
        g, state = from_onnx(path)
    except NasgraphError as e:
        message = str(e)
        assert "\n" not in message and len(message) > 20, message  # one line, with a reason
        return
    x, want = inputs[0], outputs[0]
    with torch.no_grad():
        got = lower(g, state).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=case.rtol, atol=case.atol)
    got = nb.compile(g, state)(x)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=case.rtol,
                               atol=max(case.atol, 1e-6))
