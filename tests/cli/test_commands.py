"""`nasgraph info` and `nasgraph zoo` as a user runs them, in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import nasgraph

REQUIRED_KEYS = {"params", "macs", "flops", "depth", "multiplicity", "receptive_field",
                 "peak_memory_bytes", "input", "outputs", "nodes"}


def nasgraph_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nasgraph.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_info_json_for_resnet50():
    r = nasgraph_cli("info", "resnet50", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) >= REQUIRED_KEYS
    assert data["params"] == 25_557_032
    assert data["input"] == [3, 224, 224] and data["outputs"] == [[1000]]
    fc = next(n for n in data["nodes"] if n["id"] == "fc")
    assert {"params", "macs", "flops", "receptive_field", "shape"} <= set(fc)
    assert fc["params"] == 2048 * 1000 + 1000


def test_info_table_and_graph_file(tmp_path):
    path = tmp_path / "lenet.json"
    nasgraph.save(nasgraph.zoo.get("lenet5"), path)
    r = nasgraph_cli("info", str(path), "--input", "1x36x36")
    assert r.returncode == 0, r.stderr
    assert "61,706" not in r.stdout  # a larger input widens the first linear layer
    assert "c5" in r.stdout and "receptive field" in r.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["info", "resnet5"], "unknown zoo model 'resnet5'; hint: did you mean 'resnet50'?"),
    (["info", "resnet18", "--input", "3x224"], "--input '3x224': expected CxHxW"),
    (["info", "resnet18", "--input", "3x8x8"], None),
    (["info", "missing.json"], "missing.json: cannot read"),
])
def test_errors_are_one_line_with_exit_code_2(args, message):
    r = nasgraph_cli(*args)
    if message is None:
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert message in r.stderr


def test_bad_graph_file_names_the_node(tmp_path):
    data = nasgraph.zoo.get("lenet5").to_dict()
    data["nodes"][1]["attrs"]["kernel"] = [40, 40]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    r = nasgraph_cli("info", str(tmp_path / "bad.json"))
    assert r.returncode == 2
    assert "node 'c1' (conv2d): kernel 40x40" in r.stderr
    r = nasgraph_cli("info", str(tmp_path / "bad.json"), "--debug")
    assert "Traceback" in r.stderr


def test_zoo_lists_the_models():
    r = nasgraph_cli("zoo", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert {"lenet5", "resnet18", "resnet50"} <= set(rows)
    assert rows["resnet18"]["params"] == 11_689_512
