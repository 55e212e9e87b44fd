"""Graph construction, JSON round trip, and every GraphError a file can trigger."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings

import nasgraph
from nasgraph.errors import GraphError, ShapeError
from nasgraph.ir import Graph, GraphBuilder, ops
from nasgraph.ir.graph import SCHEMA_VERSION
from tests.strategies import graphs


def small_graph() -> Graph:
    b = GraphBuilder("small")
    x = b.input(3, 16, 16)
    with b.scope("stage1"):
        with b.scope("block0"):
            y = b.relu(b.bn(b.conv(x, 8, 3, padding=1, bias=False, name="conv")))
            z = b.conv(x, 8, 1, name="proj")
            y = b.add([y, z])
        w = b.concat([y, b.maxpool(y, 3, stride=1, padding=1)])
    b.output(b.linear(b.flatten(b.gap(w)), 10))
    return b.build()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_dags_round_trip_through_json(g):
    again = Graph.from_json(g.to_json())
    assert again == g
    assert again.to_json() == g.to_json()


def test_save_and_load(tmp_path):
    g = small_graph()
    nasgraph.save(g, tmp_path / "g.json")
    assert nasgraph.load(tmp_path / "g.json") == g
    assert not list(tmp_path.glob(".*tmp"))


def test_navigation_and_scopes():
    g = small_graph()
    order = g.topological_order()
    for node in g:
        assert all(order.index(i) < order.index(node.id) for i in node.inputs)
    assert [n.id for n in g.predecessors("stage1/block0/add")] == [
        "stage1/block0/relu", "stage1/block0/proj"]
    assert {n.id for n in g.successors("input")} == {"stage1/block0/conv", "stage1/block0/proj"}
    assert g.scopes() == ["stage1", "stage1/block0"]
    sub = g.subgraph("stage1/block0")
    assert [n.kind for n in sub.inputs] == ["input"]
    assert [n.inputs for n in sub.outputs] == [("stage1/block0/add",)]
    assert len(sub.scope("stage1")) == 5  # conv, bn, relu, proj, add
    assert g.to_networkx().number_of_edges() == sum(len(n.inputs) for n in g)


def test_subgraph_of_a_classifier_takes_a_flat_input():
    g = nasgraph.zoo.get("alexnet")
    sub = g.subgraph("classifier")
    assert sub.inputs[0].type == g["flatten"].type
    assert sub.inputs[0].type.flat and sub.inputs[0].type.shape == (9216,)


def test_nodes_given_out_of_order_are_sorted_stably():
    defs = [("out", ops.Output(), ["b"]), ("b", ops.Activation(), ["a"]),
            ("a", ops.Input(channels=1, height=2, width=2), [])]
    assert Graph(defs).topological_order() == ["a", "b", "out"]


def test_replace_input_reinfers_types():
    g = small_graph().replace_input(3, 32, 32)
    assert g["stage1/concat"].type.shape == (16, 32, 32)


def test_builder_fails_at_the_line_that_made_the_mistake():
    b = GraphBuilder()
    x = b.input(3, 8, 8)
    y = b.conv(x, 4, 3, stride=2, padding=1)
    with pytest.raises(ShapeError, match=r"node 'add' \(add\): channel mismatch.*4x4x4"):
        b.add([x, y])
    with pytest.raises(GraphError, match=r"node 'conv_1' \(conv2d\): attribute 'groups'"):
        b.conv(x, 4, 3, groups=0)
    with pytest.raises(GraphError, match="already exists"):
        b.relu(x, name="conv")


# ---------------------------------------------------------------- errors from files


def base() -> dict:
    return small_graph().to_dict()


def edit(fn) -> str:
    data = copy.deepcopy(base())
    fn(data)
    return json.dumps(data)


def node(data: dict, node_id: str) -> dict:
    return next(n for n in data["nodes"] if n["id"] == node_id)


def _set(d: dict, key: str, value: object) -> None:
    d[key] = value


BAD = {
    "unknown op": (lambda d: _set(node(d, "stage1/block0/bn"), "op", "batchnorm"),
                   r"'stage1/block0/bn'.*unknown op 'batchnorm'.*did you mean 'batchnorm2d'"),
    "cycle": (lambda d: _set(node(d, "stage1/block0/proj"), "inputs", ["stage1/block0/add"]),
              r"'stage1/block0/(proj|add)' \((conv2d|add)\) is on a cycle"),
    "dangling input": (lambda d: _set(node(d, "stage1/block0/add"), "inputs",
                                      ["stage1/block0/relu", "stage1/block0/porj"]),
                       r"'stage1/block0/add' \(add\): input 'stage1/block0/porj' .*dangling"),
    "duplicate input": (lambda d: _set(node(d, "stage1/block0/add"), "inputs",
                                       ["stage1/block0/relu", "stage1/block0/relu"]),
                        r"'stage1/block0/add' \(add\): input .* twice"),
    "duplicate id": (lambda d: d["nodes"].append(dict(node(d, "stage1/block0/bn"))),
                     r"'stage1/block0/bn' is defined twice"),
    "add channel mismatch": (
        lambda d: _set(node(d, "stage1/block0/proj")["attrs"], "out_channels", 9),
        r"'stage1/block0/add' \(add\): channel mismatch.*8x16x16.*9x16x16.*hint"),
    "concat spatial mismatch": (
        lambda d: _set(node(d, "stage1/maxpool")["attrs"], "stride", [2, 2]),
        r"'stage1/concat' \(concat\): spatial mismatch.*8x16x16.*8x8x8"),
    "kernel larger than padded input": (
        lambda d: _set(node(d, "stage1/block0/conv")["attrs"], "kernel", [19, 19]),
        r"'stage1/block0/conv' \(conv2d\): kernel 19x19.*larger than its padded input 16x16"),
    "groups not dividing": (
        lambda d: _set(node(d, "stage1/block0/proj")["attrs"], "groups", 2),
        r"'stage1/block0/proj' \(conv2d\).*groups=2 does not divide the 3 input channels"),
    "non-positive size": (
        lambda d: _set(node(d, "stage1/block0/conv")["attrs"], "out_channels", 0),
        r"'stage1/block0/conv' \(conv2d\): attribute 'out_channels'"),
    "wrong JSON type": (
        lambda d: _set(node(d, "stage1/block0/conv")["attrs"], "kernel", "three"),
        r"'stage1/block0/conv' \(conv2d\): attribute 'kernel'"),
    "inputs not a list": (lambda d: _set(node(d, "stage1/block0/bn"), "inputs", "conv"),
                          r"'stage1/block0/bn' \(batchnorm2d\): 'inputs' must be a list"),
    "newer schema": (lambda d: _set(d, "version", SCHEMA_VERSION + 1),
                     r"schema version 2 is newer.*upgrade"),
    "edited shape": (lambda d: _set(node(d, "stage1/concat"), "shape", [17, 16, 16]),
                     r"'stage1/concat' \(concat\): stored shape \[17, 16, 16\] differs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_raise_one_clear_graph_error(case):
    fn, pattern = BAD[case]
    with pytest.raises(GraphError, match=pattern) as e:
        Graph.from_json(edit(fn), source="model.json")
    assert isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


def test_invalid_json_names_line_and_column():
    with pytest.raises(GraphError, match=r"model.json, line 2, column \d+: invalid JSON"):
        Graph.from_json('{"schema": "nasgraph.graph",\n "nodes": [,]}', source="model.json")


def test_graph_needs_an_output():
    with pytest.raises(GraphError, match="no output node"):
        Graph([("x", ops.Input(channels=1, height=1, width=1), [])])
