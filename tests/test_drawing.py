"""Pictures drawn by the real `dot` program, read back as XML (SVG) and checked against the
graph: one drawn node per (merged) op or collapsed block, one cluster per block, the right
tensor shape on every edge, totals that add up to nasgraph.summarize."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import nasgraph
from nasgraph import GraphBuilder, RenderError, zoo
from nasgraph.drawing import drawn_inputs, plan, render, to_dot

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


class Picture:
    """The nodes, clusters and edges of an SVG drawn by dot, by their SVG ids."""

    def __init__(self, path: Path) -> None:
        root = ET.parse(path).getroot()
        self.nodes: dict[str, ET.Element] = {}
        self.clusters: dict[str, ET.Element] = {}
        self.edges: dict[str, str] = {}  # id -> label
        for g in root.iter(SVG + "g"):
            classes = (g.get("class") or "").split()
            if "node" in classes:
                self.nodes[g.get("id")] = g
            elif "cluster" in classes:
                self.clusters[g.get("id")] = g
            elif "edge" in classes:
                self.edges[g.get("id")] = "".join(t.text or "" for t in g.iter(SVG + "text"))

    def classes(self, node_id: str) -> set[str]:
        return set(self.nodes[node_id].get("class").split())

    def tooltip(self, node_id: str) -> str:
        return next(a.get(XLINK + "title") for a in self.nodes[node_id].iter(SVG + "a"))

    def texts(self, node_id: str) -> list[str]:
        return [t.text or "" for t in self.nodes[node_id].iter(SVG + "text")]


def draw(graph, tmp_path, name="g.svg", **options) -> Picture:
    path = render(graph, tmp_path / name, **options)
    return Picture(path)


def merged_away(graph) -> set[str]:
    """Nodes drawn inside their predecessor's node: bn after a conv, an activation after a
    conv, bn or linear, when the predecessor feeds only them within one scope."""
    gone = set()
    for n in graph:
        if len(n.inputs) != 1:
            continue
        p = graph[n.inputs[0]]
        joins = (n.kind == "batchnorm2d" and p.kind == "conv2d") or (
            n.kind == "activation" and p.kind in ("conv2d", "batchnorm2d", "linear"))
        if joins and p.scope == n.scope and len(graph.successors(p.id)) == 1:
            gone.add(n.id)
    return gone


def totals(picture: Picture) -> tuple[int, int]:
    params = macs = 0
    for node_id in picture.nodes:
        tip = picture.tooltip(node_id)
        if m := re.search(r"params ([\d,]+)", tip):
            params += int(m[1].replace(",", ""))
        if m := re.search(r"MACs ([\d,]+)", tip):
            macs += int(m[1].replace(",", ""))
    return params, macs


def check_edges(graph, picture: Picture) -> None:
    """Every edge is named tensor->consumer and labelled with the tensor's shape."""
    assert picture.edges
    for edge_id, label in picture.edges.items():
        tensor, _, _ = edge_id.partition("->")
        assert label == str(graph[tensor].type), edge_id


# --------------------------------------------------------------------------- every zoo model


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_expanded(name, tmp_path):
    graph = zoo.get(name)
    picture = draw(graph, tmp_path)
    gone = merged_away(graph)
    assert set(picture.nodes) == {n.id for n in graph if n.id not in gone}
    assert set(picture.clusters) == {s + "/" for s in graph.scopes()}
    check_edges(graph, picture)
    s = nasgraph.summarize(graph)
    assert totals(picture) == (s.params, s.macs)


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_collapsed(name, tmp_path):
    graph = zoo.get(name)
    depth = plan(graph, collapse=True, repeat=False).depth
    picture = draw(graph, tmp_path, collapse=True, repeat=False)
    levels = {s: s.count("/") + 1 for s in graph.scopes()}
    blocks = {n for n in picture.nodes if "block" in picture.classes(n)}
    assert blocks == {s + "/" for s, k in levels.items() if k == depth}
    assert set(picture.clusters) == {s + "/" for s, k in levels.items() if k < depth}
    check_edges(graph, picture)
    s = nasgraph.summarize(graph)
    assert totals(picture) == (s.params, s.macs)
    # with repeats drawn once, the totals still count every block
    assert totals(draw(graph, tmp_path, "r.svg", collapse=True)) == (s.params, s.macs)


# --------------------------------------------------------------------------- known pictures


def test_resnet18_counted_by_hand(tmp_path):
    graph = zoo.get("resnet18")
    # input, conv+bn+relu, maxpool; 8 blocks of conv+bn+relu, conv+bn, add, relu, 3 of them
    # with a conv+bn projection; avgpool, flatten, fc, output
    picture = draw(graph, tmp_path)
    assert len(picture.nodes) == 3 + 8 * 4 + 3 + 4
    assert len(picture.clusters) == 4 + 8 + 3
    assert picture.texts("conv1") == ["conv 7x7/2, 64", "bn + relu"]
    assert picture.edges["layer1/1/relu_1->layer2/0/conv1"] == "64x56x56"
    assert picture.edges["layer1/1/relu_1->layer2/0/downsample/0"] == "64x56x56"
    assert picture.edges["flatten->fc"] == "512"
    assert "conv" in picture.classes("layer2/0/conv1")
    assert {"merge", "add"} <= picture.classes("layer2/0/add")

    # collapsed at the blocks: layer1's two identical blocks drawn once, "x 2"
    picture = draw(graph, tmp_path, "c.svg", collapse=True, depth=2)
    assert len(picture.nodes) == 7 + 7 and len(picture.clusters) == 4
    assert picture.texts("layer1/0/") == ["layer1/0..1 \u00d7 2",
                                          "params 148k \u00b7 MACs 462M", "4 paths"]
    assert picture.texts("layer2/0/")[2] == "2 paths"
    assert picture.edges["maxpool->layer1/0/"] == "64x56x56"
    assert picture.edges["layer1/1/relu_1->layer2/0/"] == "64x56x56"
    assert picture.edges["layer4/1/relu_1->avgpool"] == "512x7x7"


def test_collapsing_picks_a_depth_that_fits_a_page():
    p = plan(zoo.get("resnet152"), collapse=True)
    assert p.depth == 2
    titles = [u.title for u in p.units if u.kind == "block"]
    assert titles == ["layer1/0", "layer1/1..2", "layer2/0", "layer2/1..7", "layer3/0",
                      "layer3/1..35", "layer4/0", "layer4/1..2"]
    assert plan(zoo.get("resnet152"), collapse=True, depth=1).units[3].title == "layer1"


def test_googlenet_first_inception_block_input(tmp_path):
    if "googlenet" not in zoo.names():
        pytest.skip("googlenet is not in the zoo")
    graph = zoo.get("googlenet")
    picture = draw(graph, tmp_path)
    into = {e: label for e, label in picture.edges.items()
            if not e.partition("->")[0].startswith("inception3a/")
            and e.partition("->")[2].startswith("inception3a/")}
    assert into and set(into.values()) == {"192x28x28"}
    picture = draw(graph, tmp_path, "c.svg", collapse=True, depth=1)
    assert "inception3a/" in picture.nodes
    assert {label for e, label in picture.edges.items() if e.endswith("->inception3a/")} == \
        {"192x28x28"}


@pytest.mark.parametrize("name", ["densenet121", "densenet201"])
def test_densenet_collapses_to_its_blocks(name, tmp_path):
    if name not in zoo.names():
        pytest.skip(f"{name} is not in the zoo")
    graph = zoo.get(name)
    picture = draw(graph, tmp_path, collapse=True)
    assert len(picture.nodes) <= 40
    dense = [n for n in picture.nodes if "block" in picture.classes(n) and "dense" in n]
    assert len(dense) >= 4


# --------------------------------------------------------------------------- options


def small_net():
    b = GraphBuilder("small")
    x = b.input(3, 16, 16)
    with b.scope("stem"):
        x = b.relu(b.bn(b.conv(x, 8, 3, padding=1, bias=False)))
    with b.scope("dense"):
        feats = [x]
        for k in range(4):
            with b.scope(f"layer{k}"):
                y = b.concat(feats) if len(feats) > 1 else x
                y = b.conv(b.relu(b.bn(y)), 4, 3, padding=1)
            feats.append(y)
        x = b.concat(feats, name="cat")
    x = b.linear(b.flatten(b.gap(x)), 10)
    x = b.act(x, "sigmoid")
    b.output(x)
    return b.build()


def test_dense_concatenations_are_drawn_incrementally(tmp_path):
    graph = small_net()
    drawn = drawn_inputs(graph)
    assert drawn["dense/layer2/concat"] == ("dense/layer1/concat", "dense/layer1/conv")
    assert drawn["dense/cat"] == ("dense/layer3/concat", "dense/layer3/conv")
    picture = draw(graph, tmp_path)
    assert picture.edges["dense/layer1/concat->dense/layer2/concat"] == "12x16x16"
    assert "stem/relu->dense/cat" not in picture.edges
    check_edges(graph, picture)


def test_merge_off_draws_every_op(tmp_path):
    graph = small_net()
    assert len(draw(graph, tmp_path, merge=False).nodes) == len(graph)
    picture = draw(graph, tmp_path, "m.svg")
    assert set(picture.nodes) == {n.id for n in graph} - merged_away(graph)
    assert picture.texts("linear") == ["linear 10", "sigmoid"]
    assert picture.texts("dense/layer1/bn") == ["bn", "relu"]


def test_depth_limits_the_clusters(tmp_path):
    graph = small_net()
    picture = draw(graph, tmp_path, depth=1)
    assert set(picture.clusters) == {"stem/", "dense/"}
    assert set(picture.nodes) == {n.id for n in graph} - merged_away(graph)


def test_show_adds_shape_params_and_macs(tmp_path):
    picture = draw(zoo.get("lenet5"), tmp_path, show="shape,params,macs")
    texts = picture.texts("c1")
    assert texts[0].startswith("conv 5x5, 6")
    assert "out 6x28x28" in texts and "params 156" in texts and "MACs 118k" in texts


def test_show_latency_sums_a_merged_units_members(tmp_path):
    graph = zoo.get("resnet18")
    # the conv's time, and 2 ms more in its BN: a merged node shows the sum of its members
    picture = draw(graph, tmp_path, show="latency",
                   latency={"conv1": 0.25, "bn1": 2.0, "fc": 0.0123})
    assert "2.25 ms" in picture.texts("conv1")
    assert "12 \u00b5s" in picture.texts("fc")


def test_direction_and_determinism(tmp_path):
    graph = zoo.get("resnet18")
    assert "rankdir=LR" in to_dot(graph, direction="LR")
    a = render(graph, tmp_path / "a.svg", collapse=True)
    b = render(zoo.get("resnet18"), tmp_path / "b.svg", collapse=True)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(("options", "message"), [
    ({"direction": "up"}, "direction 'up'"),
    ({"show": "flops"}, "show 'flops'"),
    ({"show": "latency"}, "show 'latency' needs the nodes' times"),
    ({"depth": 0}, "depth 0"),
])
def test_bad_options(options, message, tmp_path):
    with pytest.raises(RenderError, match=message):
        render(small_net(), tmp_path / "x.svg", **options)


def test_formats(tmp_path):
    graph = zoo.get("lenet5")
    assert render(graph, tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert render(graph, tmp_path / "x.pdf").read_bytes()[:4] == b"%PDF"
    assert render(graph, tmp_path / "x.dot").read_text().startswith("digraph lenet5")
    with pytest.raises(RenderError, match="unknown picture format '.jpg'"):
        render(graph, tmp_path / "x.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.dot", "x.pdf", "x.png"]


def test_top_level_render_is_the_drawing_function(tmp_path):
    assert nasgraph.render is render
    assert nasgraph.render(zoo.get("lenet5"), tmp_path / "l.svg").exists()


# --------------------------------------------------------------------------- command line


def nasgraph_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nasgraph.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_cli_renders_a_zoo_model_and_a_graph_file(tmp_path):
    r = nasgraph_cli("render", "resnet50", "--collapse", "-o", str(tmp_path / "r.svg"))
    assert r.returncode == 0, r.stderr
    assert "layer3/1/" in Picture(tmp_path / "r.svg").nodes
    nasgraph.save(zoo.get("lenet5"), tmp_path / "lenet.json")
    r = nasgraph_cli("render", str(tmp_path / "lenet.json"), "-o", str(tmp_path / "l.png"),
                     "--no-merge", "--direction", "LR", "--show", "shape")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_without_dot_writes_the_dot_file(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no dot on this PATH
    r = nasgraph_cli("render", "lenet5", "-o", str(tmp_path / "l.svg"), env=env)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "install graphviz" in r.stderr
    assert (tmp_path / "l.dot").read_text().startswith("digraph")
    assert not (tmp_path / "l.svg").exists()
    r = nasgraph_cli("render", "lenet5", "-o", str(tmp_path / "m.dot"), env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.dot").exists()
