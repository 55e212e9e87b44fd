"""Graph construction, JSON round trip, and every GraphError a file can trigger."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
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
    assert str(e.value).startswith("model.json") and "\n" not in str(e.value)


def test_invalid_json_names_line_and_column():
    with pytest.raises(GraphError, match=r"model.json, line 2, column \d+: invalid JSON"):
        Graph.from_json('{"schema": "nasgraph.graph",\n "nodes": [,]}', source="model.json")


def test_graph_needs_an_output():
    with pytest.raises(GraphError, match="no output node"):
        Graph([("x", ops.Input(channels=1, height=1, width=1), [])])


# ---------------------------------------------------------------- strict JSON attributes

STRICT = {
    "string for an int": ("stage1/block0/proj", "out_channels", "8",
                          r"attribute 'out_channels': should be a valid integer \(got '8'\)"),
    "bool for an int": ("stage1/block0/proj", "groups", True,
                        r"attribute 'groups': should be a valid integer \(got True\)"),
    "fraction for an int": ("stage1/block0/proj", "out_channels", 8.5,
                            r"attribute 'out_channels': should be a valid integer \(got 8.5\)"),
    "int for a bool": ("stage1/block0/proj", "bias", 1,
                       r"attribute 'bias': should be a valid boolean \(got 1\)"),
    "string for a pair": ("stage1/block0/conv", "padding", "1",
                          r"attribute 'padding': should be a valid array or 'same' \(got '1'\)"),
    "NaN": ("stage1/block0/bn", "eps", float("nan"),
            r"attribute 'eps': should be a finite number \(got nan\)"),
    "infinity": ("stage1/block0/bn", "momentum", float("inf"),
                 r"attribute 'momentum': should be a finite number \(got inf\)"),
    "unknown attribute": ("stage1/block0/bn", "epsilon", 1e-3,
                          r"unknown attribute 'epsilon'; hint: batchnorm2d takes eps, momentum"),
    "nested lists": ("stage1/block0/proj", "kernel", [[[[1]]]] * 2,
                     r"attribute 'kernel': should be a valid integer \(got \[\[\[\[1\]\]\], "
                     r"\[\[\[1\]\]\]\]\)"),
    "lists nested past the parser's depth": (
        "stage1/block0/proj", "kernel", json.loads("[" * 300 + "]" * 300),
        r"attributes nested too deeply"),
}


@pytest.mark.parametrize("case", list(STRICT))
def test_json_attributes_are_strict_and_finite(case):
    node_id, field, value, pattern = STRICT[case]
    text = edit(lambda d: _set(node(d, node_id)["attrs"], field, value))
    kind = node(base(), node_id)["op"]
    with pytest.raises(GraphError) as e:
        Graph.from_json(text, source="model.json")
    assert re.fullmatch(rf"model.json: node '{node_id}' \({kind}\): {pattern}", str(e.value))


def test_a_missing_attribute_is_named():
    text = edit(lambda d: node(d, "stage1/block0/proj")["attrs"].pop("out_channels"))
    with pytest.raises(GraphError, match=r"\(conv2d\): attribute 'out_channels' is required$"):
        Graph.from_json(text, source="model.json")


def test_json_arrays_and_integers_still_load_into_tuples_and_floats():
    def weights(d: dict) -> None:
        node(d, "stage1/block0/add")["attrs"]["weights"] = [1, 0.5]
        node(d, "stage1/block0/bn")["attrs"]["eps"] = 1

    g = Graph.from_json(edit(weights))
    assert g["stage1/block0/add"].op.weights == (1.0, 0.5)
    assert g["stage1/block0/bn"].op.eps == 1.0
    assert g["stage1/block0/conv"].op.kernel == (3, 3)


def test_python_callers_stay_lenient_but_never_take_nan():
    b = GraphBuilder()
    x = b.input(3, 8, 8)
    y = b.conv(x, np.int64(4), [3, 1], padding=(1, 0))
    b.output(y)
    assert b.build()["conv"].op == ops.Conv2d(out_channels=4, kernel=(3, 1), padding=(1, 0))
    with pytest.raises(GraphError, match=r"^node 'dropout' \(dropout\): attribute 'p': should be "
                                         r"a finite number \(got nan\); inputs: 4x8x8$"):
        b.dropout(y, float("nan"))


# ---------------------------------------------------------------- files that are not graphs

HEADER = b'{"schema": "nasgraph.graph", "version": 1, '


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty, not a graph JSON"),
    (b" \n", "empty, not a graph JSON"),
    (b"[" * 100_000 + b"]" * 100_000, r"invalid JSON \(nested too deeply\)"),
    (HEADER + b'"name": "caf\xe9", "nodes": []}',
     rf"not UTF-8 text \(byte 0xe9 at offset {len(HEADER) + 12}\); hint"),
    (b"[]", "expected an object at the top, got list"),
    (b'{"version": 1, "nodes": []}', "not a nasgraph graph"),
    (b'{"schema": "nasgraph.graph", "nodes": []}',
     "'version' must be a positive integer, got None"),
    (HEADER.replace(b"1", b"true") + b'"nodes": []}', "'version' must be a positive integer"),
    (HEADER.replace(b"1", b"99") + b'"nodes": []}', "schema version 99 is newer"),
    (HEADER + b'"name": "g"}', "'nodes' must be a list"),
    (HEADER + b'"nodes": [{"id": "x", "op": "input", "attrs": {"channels": ' + b"9" * 5000
     + b"}}]}", r"invalid JSON \(Exceeds the limit"),
    (HEADER + b'"name": "a\\nb", "nodes": []}', r"graph name 'a\\nb' is not one line of text"),
    (HEADER + b'"nodes": [{"id": "x\\u0000", "op": "input", "attrs": {"channels": 1}}]}',
     r"node id 'x\\x00' is not of the form"),
])
def test_bad_graph_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "model.json"
    path.write_bytes(content)
    with pytest.raises(GraphError, match=message) as e:
        nasgraph.load(path)
    assert str(e.value).startswith(f"{path}") and "\n" not in str(e.value)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + small_graph().to_json().encode())
    assert nasgraph.load(path) == small_graph()


# ---------------------------------------------------------------- names and ids


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "nul\x00", "a\x0bb", "a\x1cb", "a\x85b",
                                  "a\u2028b", "a\u2029b", "\x1b[31mred", "\ud800"])
def test_a_graph_name_is_one_line_of_text(name):
    with pytest.raises(GraphError, match=r"^graph name .* is not one line of text; hint"):
        Graph(small_graph().nodes, name=name)
    with pytest.raises(GraphError, match="is not one line of text"):
        GraphBuilder(name)


def test_a_graph_name_may_be_any_printable_text():
    name = 'résumé 日本 "x""" \\ # [bold]'
    g = Graph(small_graph().nodes, name=name)
    assert Graph.from_json(g.to_json()) == g and g.name == name


@pytest.mark.parametrize("node_id", ["a\nb", "conv\n", "x\x00", "a b", 'a"', "a.b", "a//b",
                                     "/a", "a/", "é", "a\u2028"])
def test_a_node_id_is_plain_names_joined_by_slashes(node_id):
    with pytest.raises(GraphError) as e:
        Graph([(node_id, ops.Input(channels=1), []), ("out", ops.Output(), [node_id])])
    assert str(e.value).startswith(f"node id {node_id!r} is not of the form 'name/name/...'")


# ---------------------------------------------------------------- writing


def test_save_into_a_directory_is_one_error_and_leaves_nothing(tmp_path):
    folder = tmp_path / "g.json"
    folder.mkdir()
    with pytest.raises(GraphError, match=rf"^{re.escape(str(folder))}: is a directory; hint"):
        nasgraph.save(small_graph(), folder)
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"] and not any(folder.iterdir())


def test_save_under_a_file_is_one_error_and_leaves_nothing(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(GraphError, match=r"file.txt/g.json: cannot create the folder .*file.txt"):
        nasgraph.save(small_graph(), tmp_path / "file.txt" / "g.json")
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_save_replaces_an_older_file(tmp_path):
    path = tmp_path / "g.json"
    path.write_text("old")
    nasgraph.save(small_graph(), path)
    assert nasgraph.load(path) == small_graph()
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


def test_fingerprint_ignores_names_branch_order_and_what_inference_folds():
    from nasgraph import zoo

    def block(names, swap, bn):
        b = GraphBuilder()
        x = b.input(3, 8, 8)
        a = b.conv(x, 4, 1, name=names[0], bias=not bn)
        if bn:
            a = b.bn(a)
        c = b.conv(b.dropout(x), 4, 3, padding=1, name=names[1])
        b.output(b.concat([c, a] if swap else [a, c]))
        return b.build()

    base = block(["p", "q"], False, bn=True).fingerprint()
    assert block(["r", "s"], True, bn=True).fingerprint() == base
    assert block(["p", "q"], False, bn=False).fingerprint() == base  # BN folded: a bias
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert g.fingerprint() != base
    assert g.fingerprint() == zoo.get("resnet18", num_classes=10,
                                      input_shape=(3, 32, 32)).fingerprint()
    assert g.fingerprint() != zoo.get("resnet34", num_classes=10,
                                      input_shape=(3, 32, 32)).fingerprint()
    assert g.fingerprint() != zoo.get("resnet18", num_classes=10,
                                      input_shape=(3, 64, 64)).fingerprint()


def test_a_pickled_graph_hashes_anew_in_another_process():
    # a graph computes its hash once, from str hashes that differ between processes
    # (PYTHONHASHSEED): the cached value must not travel with it to a worker
    import os
    import pickle
    import subprocess
    import sys

    g = nasgraph.zoo.get("lenet5")
    before = hash(g)
    data = pickle.dumps(g)
    assert hash(pickle.loads(data)) == before and pickle.loads(data) == g
    script = ("import pickle, sys; g = pickle.loads(sys.stdin.buffer.read()); "
              "print(hash(g) == hash((g.name, tuple(g._nodes.values()))))")
    out = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == b"True"
