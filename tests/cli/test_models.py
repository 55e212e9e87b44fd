"""`nasgraph info`, `zoo`, `render` and `export` on bad input, in process (typer's CliRunner):
one line on stderr, exit code 2, no traceback, and no file left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from nasgraph import zoo
from nasgraph.backends.torch import lower
from nasgraph.cli import app

runner = CliRunner()


def invoke(*args: object, **kwargs: object) -> Result:
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def one_line_error(*args: object) -> str:
    """The message of a command that must fail cleanly: exit code 2, one line, no traceback."""
    r = invoke(*args)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0].removeprefix("error: ")


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def lenet_json(**changes: object) -> str:
    data = zoo.get("lenet5").to_dict()
    data.update(changes)
    return json.dumps(data)


def _attr(node_id: str, field: str, value: object) -> str:
    data = zoo.get("lenet5").to_dict()
    next(n for n in data["nodes"] if n["id"] == node_id)["attrs"][field] = value
    return json.dumps(data)


# ---------------------------------------------------------------- graph files


@pytest.mark.parametrize(("content", "message"), [
    (b"[" * 100_000 + b"]" * 100_000, r"invalid JSON \(nested too deeply\)"),
    (b'{"name": "\xff"}', r"not UTF-8 text \(byte 0xff at offset 10\)"),
    (b"", r"empty, not a graph JSON"),
    (b"[1, 2]", r"expected an object at the top, got list"),
    (lenet_json(nodes=None).encode(), r"'nodes' must be a list"),
    (lenet_json(version=7).encode(), r"schema version 7 is newer than this nasgraph reads"),
    (lenet_json(name="two\nlines").encode(), r"graph name 'two\\nlines' is not one line"),
    (_attr("c1", "out_channels", "6").encode(),
     r"node 'c1' \(conv2d\): attribute 'out_channels': should be a valid integer \(got '6'\)"),
    (_attr("c1", "kernel", [5, 5, 5]).encode(), r"node 'c1' \(conv2d\): attribute 'kernel'"),
    (_attr("c1", "kernel", float("nan")).encode(), r"node 'c1' \(conv2d\): attribute 'kernel'"),
])
def test_a_bad_graph_file_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "model.json"
    path.write_bytes(content)
    for command in ("info", "export"):
        extra = ["-o", tmp_path / "out.py"] if command == "export" else []
        line = one_line_error(command, path, *extra)
        assert line.startswith(str(path)) and re.search(message, line), line
    assert files(tmp_path) == ["model.json"]


def test_a_graph_name_cannot_inject_code_into_the_export(tmp_path):
    """The name went unescaped into the docstrings of model.py: importing it ran the code."""
    path = tmp_path / "evil.json"
    path.write_text(lenet_json(name='x""" if open("PWNED", "w") else """'))
    r = invoke("export", path, "-o", tmp_path / "out" / "model.py")
    assert r.exit_code == 0, r.output
    script = textwrap.dedent("""
        import torch
        import model
        assert model.__doc__.startswith('x\"\"\" if open("PWNED", "w") else \"\"\": ')
        print(tuple(model.load_model()(torch.randn(2, 1, 32, 32)).shape))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "out",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "(2, 10)", r.stderr[-2000:]
    assert "PWNED" not in files(tmp_path)


def test_a_graph_name_is_printed_as_it_is(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(lenet_json(name="[bold]x[/y]"))
    r = invoke("info", path)
    assert r.exit_code == 0, r.output
    assert "[bold]x[/y]  (input 1x32x32)" in r.stdout


def test_render_keeps_the_picture_in_the_current_folder(tmp_path, monkeypatch):
    """The default picture is named after the graph: a graph file must not choose a folder."""
    path = tmp_path / "g.json"
    path.write_text(lenet_json(name="../escape"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    invoke("render", path)  # exit code 2 and a .dot file where graphviz is missing
    assert files(tmp_path) == ["g.json", "work", f"work/_escape.{'svg' if _has_dot() else 'dot'}"]


def _has_dot() -> bool:
    import shutil

    return shutil.which("dot") is not None


# ---------------------------------------------------------------- export writes all or nothing


def test_export_onto_a_directory_writes_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    for fmt in ("python", "torchscript"):
        line = one_line_error("export", "lenet5", "-o", tmp_path / "out", "--format", fmt)
        assert line == f"{tmp_path / 'out'}: is a directory; hint: give the path of a file to write"
    assert files(tmp_path) == ["out"]


@pytest.mark.parametrize("fmt", ["python", "torchscript", "onnx"])
def test_export_under_a_regular_file_writes_nothing(tmp_path, fmt):
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / "file.txt" / "x.py"
    line = one_line_error("export", "lenet5", "-o", target, "--format", fmt)
    assert line.startswith(f"{target}: cannot create the folder")
    assert files(tmp_path) == ["file.txt"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_export_into_proc_is_one_line():
    before = set(os.listdir("/proc"))
    assert one_line_error("export", "lenet5", "-o", "/proc/x.py").startswith("/proc/x.py: cannot")
    assert not {"x.py", "x.safetensors"} & (set(os.listdir("/proc")) - before)


def test_sizes_past_int64_are_one_line(tmp_path):
    data = zoo.get("lenet5").to_dict()
    data["nodes"][0]["attrs"].update(height=2**40, width=2**40)
    for n in data["nodes"]:
        del n["shape"]
    (tmp_path / "g.json").write_text(json.dumps(data))
    line = one_line_error("export", tmp_path / "g.json", "-o", tmp_path / "m.py")
    assert line.startswith("graph 'lenet5': torch cannot allocate its weights ("), line
    assert files(tmp_path) == ["g.json"]


def test_classes_is_refused_for_a_graph_file(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(lenet_json())
    line = one_line_error("export", path, "-o", tmp_path / "m.py", "--classes", 3)
    assert line.startswith("--classes applies to zoo models only")
    assert files(tmp_path) == ["g.json"]


def test_classes_must_be_positive(tmp_path):
    r = invoke("export", "lenet5", "-o", tmp_path / "m.py", "--classes", 0)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "--classes" in r.stderr and "Traceback" not in r.output
    assert files(tmp_path) == []


# ---------------------------------------------------------------- --weights


@pytest.fixture(scope="module")
def lenet_state() -> dict[str, torch.Tensor]:
    return dict(lower(zoo.get("lenet5")).state_dict())


def _damaged(kind: str, suffix: str, state: dict, folder: Path) -> Path:
    good = folder / f"good{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(good))
    else:
        torch.save(state, good)
    data = good.read_bytes()
    good.unlink()
    path = folder / f"{kind}{suffix}"
    path.write_bytes({"random": os.urandom(4096), "truncated": data[:len(data) // 2],
                      "empty": b""}[kind])
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_damaged_weights_are_one_line_naming_the_file(tmp_path, lenet_state, kind, suffix):
    path = _damaged(kind, suffix, lenet_state, tmp_path)
    line = one_line_error("export", "lenet5", "-o", tmp_path / "m.py", "--weights", path)
    what = "a safetensors" if suffix == ".safetensors" else "a torch state dict"
    assert line.startswith(f"--weights {path}: not {what} file, or a damaged one ("), line
    assert files(tmp_path) == [path.name]


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.pop("c3.bias"),
     r"weight 'c3.bias' of node 'c3' \(conv 5x5, 16\) is missing from the {path} weights"),
    (lambda s: s.update({"f7.weight": torch.zeros(7, 84)}),
     r"weight 'f7.weight' of node 'f7' \(linear 10\) needs shape 10x84, the {path} weights "
     r"have 7x84"),
    (lambda s: s.update({"f8.weight": torch.zeros(3)}),
     r"{path} weight 'f8.weight' has no node in graph 'lenet5'"),
    (lambda s: s.update({"c1.weight": {"nested": torch.zeros(1)}}),
     r"--weights {path}: 'c1.weight' holds a value of type dict, not a tensor; hint"),
])
def test_weights_of_another_graph_are_one_line_naming_key_and_node(tmp_path, lenet_state,
                                                                     change, message):
    state = dict(lenet_state)
    change(state)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    line = one_line_error("export", "lenet5", "-o", tmp_path / "m.py", "--weights", path)
    assert re.match(message.format(path=re.escape(str(path))), line), line
    assert files(tmp_path) == ["w.pt"]


# ---------------------------------------------------------------- tables


def test_zoo_names_are_whole_in_80_columns_and_a_pipe():
    r = invoke("zoo", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    for name in zoo.names():
        family = zoo.entry(name).family
        assert re.search(rf"^\s*{name}\s+{family}\s", r.stdout, re.MULTILINE), name
    assert "…" not in r.stdout


def test_info_node_ids_are_whole_in_80_columns():
    r = invoke("info", "resnet50", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert re.search(r"^│ layer1/0/downsample/0 +│ conv 1x1, 256 +│", r.stdout, re.MULTILINE)
    assert "…" not in r.stdout


# --------------------------------------------------------------------------- foreign models


def test_info_export_and_render_take_torchvision_and_onnx_models(tmp_path):
    """MODEL may be `torchvision:NAME` (captured with from_torch) or an .onnx file
    (from_onnx); the export carries the imported weights."""
    import torchvision

    r = invoke("info", "torchvision:resnet18", "--input", "3x32x32")
    assert r.exit_code == 0, r.output
    params = sum(p.numel() for p in torchvision.models.resnet18().parameters())
    assert f"{params:,}" in r.output
    onnx_file = tmp_path / "r18.onnx"
    r = invoke("export", "torchvision:resnet18", "--input", "3x32x32", "--classes", "10",
               "-o", onnx_file, "--format", "onnx")
    assert r.exit_code == 0, r.output
    r = invoke("render", onnx_file, "-o", tmp_path / "r18.svg")
    assert r.exit_code == 0 and (tmp_path / "r18.svg").stat().st_size > 0, r.output
    r = invoke("export", onnx_file, "-o", tmp_path / "again.py")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("args", "message"), [
    (["info", "torchvision:nope"], r"torchvision:nope: no such torchvision classifier"),
    (["info", "missing.onnx"], r"missing\.onnx: no such file"),
    (["info", "torchvision:swin_t"],
     r"cannot import aten\.pad\.default in module .* \(ShiftedWindowAttention\)"),
    (["export", "resnet18", "--pretrained", "-o", "x.py"], r"--pretrained applies to "
                                                           r"torchvision:NAME models only"),
])
def test_bad_foreign_models_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert re.search(message, one_line_error(*args))
