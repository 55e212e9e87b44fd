"""The latency model: what its keys tell apart (and that they match what the numba executor
decides), its per-machine cache, the prediction as the sum of its table rows plus the fitted
overheads, the least-squares fit, and `nasgraph latency`. No test asserts a time: the
targets' timings are replaced by fixed numbers where a value is checked."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import nasgraph.cli.latency  # noqa: F401  (registers `nasgraph latency` on the app)
from nasgraph import zoo
from nasgraph.backends import numba as numba_backend
from nasgraph.cli import app
from nasgraph.ir import GraphBuilder
from nasgraph.latency import machine as machine_mod
from nasgraph.latency.model import LatencyModel
from nasgraph.latency.table import LatencyCacheWarning, LatencyTable, fit_overheads
from nasgraph.latency.targets import NumbaTarget, isolated, numba_context, optimized


def convs(stride: int = 1, before: bool = False):
    """input 16x8x8 (-> 3x3 conv -> relu) -> the 1x1 conv `pw` of `stride` -> output."""
    b = GraphBuilder("g")
    x = b.input(16, 8, 8)
    if before:
        x = b.relu(b.conv(x, 16, 3, padding=1, name="pre"))
    b.output(b.conv(x, 16, 1, stride=stride, name="pw"))
    return b.build()


def fixed_times(model: LatencyModel, seconds: float = 1e-3) -> dict[str, int]:
    """Replace the target's node timing by `seconds` x (1, 2, 3, ...) in plan order;
    returns how many times it was called, under "calls"."""
    calls = {"calls": 0}

    def node_times(plan, batch, wanted):
        calls["calls"] += 1
        return {i: seconds * (k + 1) for k, i in enumerate(plan.keys) if i in wanted}

    model.target.node_times = node_times
    return calls


# ------------------------------------------------------------------ keys


def test_a_conv_of_another_stride_gets_another_key():
    t = NumbaTarget()
    assert t.plan(convs(1), 1).keys["pw"] != t.plan(convs(2), 1).keys["pw"]


def test_the_same_conv_in_another_strategy_gets_another_key():
    # the 1x1 conv reads NHWC from a tiled conv in one graph (tiled), NCHW in the other (gemm)
    t = NumbaTarget()
    with_pre, alone = (t.plan(convs(1, before), 1) for before in (True, False))
    key_pre, key_alone = json.loads(with_pre.keys["pw"]), json.loads(alone.keys["pw"])
    assert key_pre[:6] == key_alone[:6]  # same op, attributes, shapes, batch, threads
    assert key_pre[6]["strategy"] != key_alone[6]["strategy"]
    assert with_pre.keys["pw"] != alone.keys["pw"]


def test_batch_and_threads_are_in_the_key():
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    keys = {(b, t): NumbaTarget(t).plan(g, b).keys["layer1/0/conv1"]
            for b, t in [(1, 1), (2, 1), (1, 2)]}
    assert len(set(keys.values())) == 3


@pytest.mark.parametrize(("name", "shape"), [("resnet18", (3, 32, 32)),
                                             ("mobilenet_v2", (3, 32, 32)),
                                             ("densenet121", (3, 32, 32))])
@pytest.mark.parametrize("batch", [1, 8])
def test_the_numba_keys_hold_what_the_executor_decides(name, shape, batch):
    g = zoo.get(name, num_classes=10, input_shape=shape)
    executor = numba_backend.compile(g, threads=2)
    opt = optimized(g)
    assert [(n.id, n.op) for n in opt] == [(n.id, n.op) for n in executor.graph]
    runs_on, context = numba_context(opt, batch, 2)
    assert runs_on == executor.threads_for(batch)
    strategies = executor.strategies(batch)
    assert {i: c["strategy"] for i, c in context.items() if c["strategy"]} == strategies
    assert {i: c["out_pad"] for i, c in context.items() if c["out_pad"] >= 0} == executor.nhwc


def test_an_isolated_node_keeps_its_inputs_and_op():
    g = optimized(zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32)))
    node = next(n for n in g if n.kind == "fused_conv2d" and len(n.inputs) == 2)
    one = isolated(g, node)
    assert [str(n.type) for n in one.inputs] == [str(g[i].type) for i in node.inputs]
    assert one["node"].op == node.op and one["node"].type == node.type


# ------------------------------------------------------------------ cache


def test_the_cache_round_trips_and_is_not_measured_again(tmp_path):
    path = tmp_path / "table.json"
    g = zoo.get("lenet5")
    first = LatencyModel("numba", 1, cache=path)
    fixed_times(first)
    predicted = first.predict(g)
    assert path.is_file()
    again = LatencyModel("numba", 1, cache=path)
    calls = fixed_times(again)
    assert again.table.entries == first.table.entries
    assert again.predict(g).total_ms == predicted.total_ms
    assert calls["calls"] == 0


def test_the_cache_file_is_keyed_by_machine_threads_and_versions(monkeypatch, tmp_path):
    base = machine_mod.machine("numba", 1)
    paths = {machine_mod.cache_path(base, tmp_path),
             machine_mod.cache_path(machine_mod.machine("numba", 2), tmp_path),
             machine_mod.cache_path({**base, "libraries": {"numba": "0.0"}}, tmp_path)}
    monkeypatch.setattr(machine_mod, "cpu_model", lambda: "Another CPU")
    paths.add(machine_mod.cache_path(machine_mod.machine("numba", 1), tmp_path))
    assert len(paths) == 4


def test_another_machines_table_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "t.json"
    LatencyTable({"cpu": "other"}, {"k": 1.0}).save(path)
    with pytest.warns(LatencyCacheWarning, match="another machine"):
        table = LatencyTable.load(path, {"cpu": "this"})
    assert table.entries == {}


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": "nasgraph.latency-table", '
                                  '"version": 1, "machine": {}, "entries": {"k": "fast"}, '
                                  '"overhead": {}}'])
def test_a_corrupted_cache_is_ignored_with_a_warning_and_rewritten(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.warns(LatencyCacheWarning, match="ignored"):
        model = LatencyModel("numba", 1, cache=path)
    model.table.machine = {}  # the third text's machine
    assert model.table.entries == {}
    fixed_times(model)
    model.predict(zoo.get("lenet5"))
    assert json.loads(path.read_text())["entries"]  # rewritten, readable


# ------------------------------------------------------------------ prediction and fit


def test_a_prediction_is_its_rows_plus_the_fitted_overheads():
    model = LatencyModel("numba", 1, cache=False)
    fixed_times(model)
    model.table.graph_s, model.table.node_s = 2e-3, 5e-5
    g = zoo.get("lenet5")
    p = model.predict(g)
    plan = model.plan(g)
    assert [r.node for r in p.per_node] == list(plan.keys)
    assert [r.ms for r in p.per_node] == pytest.approx([k + 1.0 for k in range(len(plan.keys))])
    assert p.kernels == len(plan.keys)
    assert p.total_ms == pytest.approx(2.0 + 0.05 * p.kernels + sum(r.ms for r in p.per_node))


def test_nodes_without_a_kernel_count_no_per_node_overhead():
    model = LatencyModel("numba", 1, cache=False)
    model.target.node_times = lambda plan, batch, wanted: {i: 0.0 if plan.graph[i].kind ==
                                                          "flatten" else 1e-3 for i in wanted}
    model.table.node_s = 1e-3
    p = model.predict(zoo.get("lenet5"))
    assert p.kernels == len(p.per_node) - 1
    assert p.total_ms == pytest.approx(2 * p.kernels)


def test_node_times_are_per_node_as_written_with_fused_nodes_left_out():
    model = LatencyModel("numba", 1, cache=False)
    fixed_times(model)
    g = zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))
    times = model.node_times(g)
    rows = model.predict(g).per_node
    assert set(times) <= {n.id for n in g}
    assert times["conv1"] == pytest.approx(next(r.ms for r in rows if r.node == "conv1"))
    # BN and ReLU are fused into the conv before them: their time is the conv's
    assert not {n.id for n in g if n.kind in ("batchnorm2d", "activation")} & set(times)
    assert sum(times.values()) == pytest.approx(sum(r.ms for r in rows if r.node in g))


def test_a_prediction_without_measuring_names_the_missing_nodes():
    model = LatencyModel("numba", 1, cache=False)
    with pytest.raises(ValueError, match="not in the numba latency table"):
        model.predict(zoo.get("lenet5"), measure_missing=False)


def test_the_fit_recovers_known_overheads():
    rng = np.random.default_rng(0)
    sums, nodes = rng.uniform(1e-4, 1e-2, 40), rng.integers(5, 200, 40)
    measured = sums + 3e-4 + 2e-6 * nodes
    assert fit_overheads(sums, nodes, measured) == pytest.approx((3e-4, 2e-6), rel=1e-6)
    noisy = measured * rng.uniform(0.99, 1.01, 40)
    graph_s, node_s = fit_overheads(sums, nodes, noisy)
    assert graph_s == pytest.approx(3e-4, rel=0.2) and node_s == pytest.approx(2e-6, rel=0.2)


def test_the_worst_under_prediction_of_a_calibration_is_the_predictions_margin():
    model = LatencyModel("numba", 1, cache=False)
    fixed_times(model, 1e-4)
    graphs = [zoo.get("lenet5"), zoo.get("lenet5", input_shape=(1, 36, 36)),
              zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))]
    slow = graphs[1].fingerprint()

    def measure(plan, batch, iters):  # 1 ms a call, and one graph 0.5 ms slower still
        extra = 5e-4 if plan.source.fingerprint() == slow else 0.0
        return sum(model.table.entries[k] for k in plan.keys.values()) + 1e-3 + extra

    model.target.measure = measure
    rows = model.calibrate(graphs)
    worst = max(r.measured_ms / r.predicted_ms - 1 for r in rows)
    assert worst > 0 and model.table.error == pytest.approx(worst)
    p = model.predict(graphs[0])
    assert p.upper_ms == pytest.approx(p.total_ms * (1 + worst))


def test_one_node_count_fits_a_graph_overhead_only():
    assert fit_overheads([1.0, 2.0], [3, 3], [1.5, 2.5]) == pytest.approx((0.5, 0.0))


def test_calibrate_fits_the_overheads_of_the_measured_graphs():
    model = LatencyModel("numba", 1, cache=False)
    fixed_times(model, 1e-4)
    graphs = [zoo.get("lenet5"), zoo.get("resnet18", num_classes=10, input_shape=(3, 32, 32))]

    def measure(plan, batch, iters):  # what the graph's nodes take, plus 1 ms + 10 us a node
        n = len(plan.keys)
        return sum(model.table.entries[k] for k in plan.keys.values()) + 1e-3 + 1e-5 * n

    model.target.measure = measure
    rows = model.calibrate(graphs)
    assert (model.table.graph_s, model.table.node_s) == pytest.approx((1e-3, 1e-5))
    assert model.table.graphs == 2
    assert LatencyTable.from_json(model.table.to_json(), model.table.machine).graphs == 2
    assert [r.predicted_ms for r in rows] == pytest.approx([r.measured_ms for r in rows])
    assert [r.relative_error for r in rows] == pytest.approx([0, 0], abs=1e-9)


# ------------------------------------------------------------------ the command


def invoke(*args: str):
    return CliRunner().invoke(app, ["latency", *args])


@pytest.mark.parametrize("target", ["numba", "torch-cpu", "onnxruntime"])
def test_json_has_the_prediction_and_a_row_per_node(tmp_path, target):
    r = invoke("lenet5", "--target", target, "--cache", str(tmp_path / "t.json"), "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["predicted_ms"] > 0 and out["target"] == target and "measured_ms" not in out
    assert {row["node"] for row in out["nodes"]} >= {"c1", "s2", "f6"}
    assert {"node", "kind", "ms", "key"} <= set(out["nodes"][0])


def test_measure_adds_the_measured_latency(tmp_path):
    r = invoke("lenet5", "--input", "1x28x28", "--batch", "2", "--measure", "--iters", "3",
               "--cache", str(tmp_path / "t.json"), "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["measured_ms"] > 0 and out["batch"] == 2


def test_the_table_and_the_measurement_print_as_text(tmp_path):
    r = invoke("lenet5", "--measure", "--iters", "3", "--cache", str(tmp_path / "t.json"))
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "predicted" in r.stdout and "measured" in r.stdout and "c1" in r.stdout


def test_a_corrupted_cache_is_one_warning_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{not json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = invoke("lenet5", "--cache", str(path), "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert r.stderr.startswith("warning: latency cache") and r.stderr.count("\n") == 1
    assert json.loads(r.stdout)["predicted_ms"] > 0


def test_an_unknown_target_is_one_line_and_exit_code_2():
    r = invoke("lenet5", "--target", "tpu")
    assert r.exit_code == 2 and r.stderr.startswith("error: --target 'tpu'")
    assert r.stderr.strip().count("\n") == 0


def test_saving_keeps_the_entries_another_process_saved(tmp_path):
    path = tmp_path / "t.json"
    identity = {"target": "numba", "threads": 1}
    mine, theirs = LatencyTable(identity, {"a": 1.0}), LatencyTable(identity, {"b": 2.0})
    theirs.save(path)
    mine.save(path)
    assert LatencyTable.load(path, identity).entries == {"a": 1.0, "b": 2.0}


def test_torch_cuda_without_a_device_is_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = invoke("lenet5", "--target", "torch-cuda", "--cache", "/nonexistent/never/t.json")
    assert r.exit_code == 2 and "no CUDA device" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_a_batch_past_memory_is_refused_before_measuring(monkeypatch):
    from nasgraph import latency

    monkeypatch.setattr(latency, "available_memory", lambda device: (10**9, "available"))
    r = invoke("lenet5", "--batch", "4096", "--input", "1x1024x1024")
    assert r.exit_code == 2 and "--batch 4096" in r.stderr


def test_a_key_several_nodes_share_is_one_entry_their_mean():
    b = GraphBuilder("twice")
    x = b.input(8, 8, 8)
    b.output(b.maxpool(b.maxpool(x, 1, name="p1"), 1, name="p2"))
    model = LatencyModel("numba", 1, cache=False)
    asked = []

    def node_times(plan, batch, wanted):  # as numba's: every node of the graph
        asked.append(set(wanted))
        return {"p1": 1e-3, "p2": 3e-3}

    model.target.node_times = node_times
    p = model.predict(b.build())
    assert p.per_node[0].key == p.per_node[1].key and len(asked[0]) == 1
    assert [r.ms for r in p.per_node] == pytest.approx([2.0, 2.0])


def test_info_and_render_show_each_nodes_predicted_latency(monkeypatch, tmp_path):
    monkeypatch.setenv("NASGRAPH_LATENCY_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["info", "lenet5", "--latency", "numba:1", "--json"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["latency_target"] == "numba:1" and out["latency_ms"] > 0
    rows = {row["id"]: row["latency_ms"] for row in out["nodes"]}
    assert rows["c1"] > 0 and sum(v for v in rows.values() if v) <= out["latency_ms"]
    r = CliRunner().invoke(app, ["render", "lenet5", "--show", "latency",
                                 "-o", str(tmp_path / "lenet5.dot")])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "\u00b5s" in (tmp_path / "lenet5.dot").read_text()  # lenet5's kernels take µs
    r = CliRunner().invoke(app, ["info", "lenet5", "--latency", "tpu"])
    assert r.exit_code == 2 and r.stderr.startswith("error: --latency 'tpu'")
