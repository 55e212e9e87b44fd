"""Fuzzing the command line as an attacker would: mutated graph JSON files and mutated options.

Whatever the input, a command either works (exit 0) or says what is wrong in one line on
stderr with exit code 2: never a traceback, never a second line, never a file left behind.
The commands run in this process (typer's CliRunner), so a hundred inputs take seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nasgraph import GraphBuilder
from nasgraph.cli import app

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _tiny() -> dict:
    b = GraphBuilder("tiny")
    x = b.input(1, 8, 8)
    y = b.relu(b.bn(b.conv(x, 4, 3, padding=1, bias=False)))
    z = b.conv(x, 4, 1)
    y = b.maxpool(b.add([y, z]), 2)
    b.output(b.linear(b.flatten(b.gap(b.concat([y, b.avgpool(y, 3, stride=1, padding=1)]))), 3))
    return json.loads(b.build().to_json())


TINY = _tiny()

# JSON values of every type, hostile ones among them: wrong types, strings that look like
# numbers, huge and negative numbers, NaN, control characters and quotes in strings
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["8", "3x3", "", "relu", '"""', "x\nimport os", "\x00", "..", "é"])
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every path (a tuple of keys and indices) into a JSON document."""
    paths = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            paths += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            paths += _paths(v, (*prefix, i))
    return paths


ALL_PATHS = _paths(TINY)[1:]


def _with(doc: object, path: tuple, change: str, value: object) -> object:
    """`doc` with the item at `path` replaced, deleted, or duplicated (`change`)."""
    if not path:
        return value
    doc = json.loads(json.dumps(doc))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if change == "replace":
        parent[last] = value
    elif change == "delete":
        del parent[last]
    elif isinstance(parent, list):  # duplicate: a second node with the same id, say
        parent.insert(last, parent[last])
    else:
        parent[f"{last}_extra"] = value
    return doc


@st.composite
def mutated_graph_files(draw: st.DrawFn) -> bytes:
    """A graph JSON with one mutation: a value, the structure, or the encoding."""
    kind = draw(st.sampled_from(["value", "value", "value", "structure", "encoding"]))
    if kind == "encoding":
        text = json.dumps(TINY).encode()
        how = draw(st.sampled_from(["utf16", "invalid", "truncate", "nest", "bom", "empty"]))
        cut = draw(st.integers(0, len(text)))
        return {
            "utf16": json.dumps(TINY).encode("utf-16"),
            "invalid": text[:cut] + b"\xff\xfe\x80" + text[cut:],
            "truncate": text[:cut],
            "nest": b"[" * 100_000 + b"]" * 100_000,
            "bom": b"\xef\xbb\xbf" + text,
            "empty": b"",
        }[how]
    path = draw(st.sampled_from(ALL_PATHS))
    change = "replace" if kind == "value" else draw(st.sampled_from(
        ["delete", "duplicate", "replace"]))
    doc = _with(TINY, path, change, draw(json_values))
    # allow_nan: Python's json writes NaN and Infinity, which a hand-edited file may hold
    return json.dumps(doc, allow_nan=True).encode()


def _check(result, folder: Path, before: set[str]) -> None:
    """Exit 0, or exit 2 with one line on stderr and nothing new in `folder`."""
    assert result.exit_code in (0, 2), (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr + result.stdout
    if result.exit_code == 2:
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") <= 1, \
            result.stderr
        assert {p.name for p in folder.iterdir()} == before, "a failed command left a file"


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@FUZZ
@given(data=mutated_graph_files())
def test_mutated_graph_files_are_run_or_refused_in_one_line(runner, tmp_path, data):
    folder = tmp_path / "fuzz"
    folder.mkdir(exist_ok=True)
    for leftover in folder.iterdir():
        leftover.unlink()
    graph = folder / "graph.json"
    graph.write_bytes(data)
    _check(runner.invoke(app, ["info", str(graph), "--json"]), folder, {"graph.json"})
    result = runner.invoke(app, ["export", str(graph), "-o", str(folder / "model.py")])
    _check(result, folder, {"graph.json"})
    if result.exit_code == 0:  # what was exported must be a valid module of the same graph
        assert (folder / "model.py").is_file()


# Options of `nasgraph search` and values a user (or a script) might pass them by mistake.
SEARCH_OPTIONS = ["--budget", "--max-params", "--max-memory", "--trials", "--timeout",
                  "--epochs", "--final-epochs", "--final-seeds", "--study", "--storage",
                  "--objective", "--sampler", "--seed", "--workers", "--device", "--dataset"]
BAD_VALUES = ["-3", "0", "-0", "nan", "inf", "1e999", "0.0001", "", " ", "..", "../../x",
              "a/b", "x" * 300, "\x00", "é", "3.5", "1e3", "0x10", "--trials", "notaurl",
              "sqlite:////nonexistent/dir/db", "imagefolder:/nonexistent@abc", "mnist",
              "cuda:99", "100000000000000000000"]


@FUZZ
@given(option=st.sampled_from(SEARCH_OPTIONS),
       value=st.sampled_from(BAD_VALUES) | st.text(max_size=12))
def test_bad_search_options_are_refused_in_one_line(runner, tmp_path, option, value):
    # a dataset that does not exist: every value that passes the option checks still stops
    # the search before any training, with one line and nothing written
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    args = ["search", "residual", "--dataset", "mnist:/nonexistent", "--runs-dir", str(runs),
            "--trials", "1", "--epochs", "1", option, value]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (args, result.stdout, result.stderr)
    _check(result, runs, set())


@FUZZ
@given(option=st.sampled_from(["--batch", "--threads", "--iters", "--input", "--backend",
                               "--device"]),
       value=st.sampled_from(BAD_VALUES) | st.integers(-5, 0).map(str))
def test_bad_run_options_are_refused_in_one_line(runner, tmp_path, option, value):
    result = runner.invoke(app, ["run", "lenet5", option, value])
    _check(result, tmp_path, set())


def test_nan_in_a_float_attribute_is_refused(tmp_path):
    doc = json.loads(json.dumps(TINY))
    bn = next(n for n in doc["nodes"] if n["op"] == "batchnorm2d")
    bn["attrs"]["eps"] = math.nan
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(doc, allow_nan=True))
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and "eps" in result.stderr, result.stderr
