"""Export formats, checked against independent runtimes: for every zoo model with a
torchvision or timm implementation, imported weights reproduce the reference's outputs, and
so do the exported Python file, the TorchScript file and the ONNX file (onnxruntime)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from nasgraph import zoo
from nasgraph.backends.torch import (
    export,
    export_python,
    import_timm_weights,
    import_torchvision_weights,
    lower,
    python_source,
)
from nasgraph.errors import NasgraphError
from nasgraph.ir import GraphBuilder
from tests.references import exported_with_reference, reference_model, with_reference
from tests.strategies import graphs

IMPORTERS = {"torchvision": import_torchvision_weights,
             "torchvision.segmentation": import_torchvision_weights,
             "timm": import_timm_weights}


def _output(y):
    return y["out"] if isinstance(y, dict) else y


def _load_source(path):
    """Import an exported file by path, under a unique module name."""
    spec = importlib.util.spec_from_file_location(f"exported_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _max_diff(a, b) -> float:
    a = a if isinstance(a, tuple | list) else (a,)
    b = b if isinstance(b, tuple | list) else (b,)
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
               for x, y in zip(a, b, strict=True))


def _imported(name: str):
    """(zoo graph at its smallest input, reference model, imported state dict)."""
    entry = zoo.entry(name)
    graph = zoo.get(name, input_shape=entry.min_input or entry.input_shape)
    reference = reference_model(name)
    return graph, reference, IMPORTERS[entry.reference.partition(":")[0]](graph, reference)


@pytest.mark.parametrize("name", with_reference())
def test_imported_weights_and_the_python_export_reproduce_the_reference(name, tmp_path):
    graph, reference, state = _imported(name)
    module = lower(graph)
    module.load_state_dict(state)
    module.eval()
    x = torch.randn(2, *graph.inputs[0].type.shape)
    with torch.no_grad():
        want = _output(reference(x))
        assert _max_diff(module(x), want) <= 1e-4, "lowered module with imported weights"
        source, _ = export_python(graph, tmp_path / "model.py", state)
        exported = _load_source(source).load_model()
        assert _max_diff(exported(x), want) <= 1e-4, "exported Python file"


@pytest.mark.slow
@pytest.mark.parametrize("name", exported_with_reference())
def test_torchscript_and_onnx_exports_reproduce_the_reference(name, tmp_path):
    graph, reference, state = _imported(name)
    x = torch.randn(3, *graph.inputs[0].type.shape)
    with torch.no_grad():
        want = _output(reference(x))
        (ts,) = export(graph, tmp_path / "model.pt", "torchscript", state)
        assert _max_diff(torch.jit.load(str(ts))(x), want) <= 1e-4, "TorchScript file"

    import onnxruntime as ort

    (onnx,) = export(graph, tmp_path / "model.onnx", "onnx", state)  # exported at batch 2
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    # Randomly initialized deep nets reach outputs of 1e4, where float32 steps are 1e-3 and
    # onnxruntime's conv algorithms round differently: 1e-4 relative to the output's scale.
    scale = max(1.0, float(want.abs().max()))
    assert _max_diff(got, want) <= 1e-4 * scale, "ONNX through onnxruntime"


@pytest.mark.cuda
@pytest.mark.parametrize("name", with_reference())
def test_cuda_python_and_torchscript_exports_reproduce_the_reference(name, tmp_path,
                                                                       exact_cuda):
    graph, reference, state = _imported(name)
    reference = reference.to(exact_cuda)
    x = torch.randn(2, *graph.inputs[0].type.shape, device=exact_cuda)
    with torch.no_grad():
        want = _output(reference(x))
        bound = 1e-4 * max(1.0, want.abs().max().item())
        source, _ = export_python(graph, tmp_path / "model.py", state)
        exported = _load_source(source).load_model().to(exact_cuda)
        assert (exported(x) - want).abs().max().item() <= bound, "exported Python file"
        (ts,) = export(graph, tmp_path / "model.pt", "torchscript", state)
        scripted = torch.jit.load(str(ts), map_location=exact_cuda)
        assert (scripted(x) - want).abs().max().item() <= bound, "TorchScript file"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(graphs())
def test_random_dags_export_to_python_that_reproduces_lower(tmp_path, g):
    module = lower(g).eval()
    path = tmp_path / f"g{abs(hash(g))}.py"
    export_python(g, path, module.state_dict())
    exported = _load_source(path).load_model()
    x = torch.randn(2, *g.inputs[0].type.shape)
    with torch.no_grad():
        assert _max_diff(exported(x), module(x)) == 0.0


def test_export_python_runs_where_nasgraph_cannot_be_imported(tmp_path):
    g = zoo.get("resnet18", num_classes=7, input_shape=(3, 40, 40))
    module = lower(g).eval()
    out_dir = tmp_path / "elsewhere"
    out_dir.mkdir()
    export_python(g, out_dir / "resnet18_export.py", module.state_dict())
    x = torch.randn(2, 3, 40, 40)
    torch.save(x, out_dir / "x.pt")
    with torch.no_grad():
        torch.save(module(x), out_dir / "want.pt")
    # -I: no PYTHONPATH, no user site; the None entry makes `import nasgraph` fail even where
    # it is installed in the environment, as on a machine without it
    script = textwrap.dedent("""
        import sys
        sys.modules["nasgraph"] = None
        sys.path.insert(0, ".")
        try:
            import nasgraph
            raise SystemExit("nasgraph is importable")
        except ImportError:
            pass
        import torch
        from resnet18_export import Model, load_model
        m = load_model()
        assert isinstance(m, Model) and not m.training
        with torch.no_grad():
            d = (m(torch.load("x.pt")) - torch.load("want.pt")).abs().max().item()
        assert d == 0.0, d
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([sys.executable, "-I", "-c", script], cwd=out_dir, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_python_source_reads_like_hand_written_code():
    text = python_source(zoo.get("resnet18"))
    assert "import nasgraph" not in text and "from nasgraph" not in text
    assert "class Model(nn.Module):" in text and "def load_model(weights_path=None):" in text
    assert "self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)" in text
    assert 'conv1 = self.layer1["0"].conv1(maxpool)  # 64 x 56 x 56  layer1/0/conv1' in text
    assert "fc = self.fc(flatten)  # 1000  fc" in text


def test_two_outputs_keep_their_values(tmp_path):
    """An output's variable is not reused by a later line before the return."""
    from nasgraph.ir import GraphBuilder

    b = GraphBuilder("two")
    x = b.input(3, 8, 8)
    y = b.conv(x, 4, 3, padding=1, name="conv")
    b.output(y, name="early")
    z = b.conv(b.relu(y), 4, 3, padding=1, name="a/conv")
    b.output(b.relu(z, name="a/relu"), name="late")
    g = b.build()
    module = lower(g).eval()
    export_python(g, tmp_path / "two.py", module.state_dict())
    xs = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert _max_diff(_load_source(tmp_path / "two.py").load_model()(xs), module(xs)) == 0


def test_weights_of_another_graph_are_refused(tmp_path):
    with pytest.raises(NasgraphError, match=r"weight 'conv1.weight' of node 'conv1' .* missing "
                                            r"from the given weights"):
        export_python(zoo.get("resnet18"), tmp_path / "m.py",
                      lower(zoo.get("lenet5")).state_dict())
    assert not list(tmp_path.iterdir())


def test_torch_export_and_jit_trace_agree_with_eager():
    g = zoo.get("resnet18", input_shape=(3, 32, 32))
    module = lower(g).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = module(x)
        exported = torch.export.export(module, (x,))
        assert _max_diff(exported.module()(x), want) <= 1e-5
        traced = torch.jit.trace(module, (x,))
        assert _max_diff(traced(x), want) <= 1e-5
        scripted = torch.jit.script(lower(zoo.get("lenet5")).eval())
        assert scripted.code  # fx modules are scriptable


def _odd_graph(name: str):
    from nasgraph.ir import Graph, ops

    return Graph([("x", ops.Input(channels=3, height=8, width=8), []),
                  ("0", ops.Conv2d(out_channels=4, kernel=3, padding=1), ["x"]),
                  ("features/0", ops.Conv2d(out_channels=4, kernel=3, padding=1), ["0"]),
                  (f"features/{name}", ops.BatchNorm2d(), ["features/0"]),
                  ("out", ops.Output(), [f"features/{name}"])], name="odd")


def test_numeric_and_method_like_node_ids_export(tmp_path):
    g = _odd_graph("items")  # a method of dicts, a plain name for a block
    module = lower(g).eval()
    export_python(g, tmp_path / "odd.py", module.state_dict())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert _max_diff(_load_source(tmp_path / "odd.py").load_model()(x), module(x)) == 0


def test_a_node_id_clashing_with_nn_module_is_one_clear_error():
    with pytest.raises(NasgraphError, match=r"node 'features/type' \(batchnorm2d\): cannot "
                                            r"become submodule 'features.type'.*rename"):
        lower(_odd_graph("type"))


@pytest.mark.parametrize(("side", "size"), [(1, (6, 6)), (5, (2, 3)), (13, (6, 6)), (4, (2, 2))])
def test_onnx_exports_adaptive_pools_of_any_size(tmp_path, side, size):
    """The ONNX exporter refuses adaptive pools whose output does not divide the input
    (AlexNet and VGG below 224 px); the export writes those as averaging matrices."""
    import onnxruntime as ort

    b = GraphBuilder("adaptive")
    x = b.input(3, side, side + 1)
    b.output(b.adaptive_avgpool(b.conv(x, 4, 1), size))
    graph = b.build()
    module = lower(graph).eval()
    (onnx,) = export(graph, tmp_path / "model.onnx", "onnx", module.state_dict())
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, side, side + 1)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert _max_diff(got, module(x)) <= 1e-5


# ---------------------------------------------------------------- untrusted names and ids

# Each would run open("PWNED", "w") on import if pasted into the source as it is.
HOSTILE = ['x""" if open("PWNED", "w") else """', "x''' if open('PWNED', 'w') else '''",
           'x\\""" if open("PWNED", "w") else """', "a\nopen('PWNED', 'w')  #",
           "a\r\nopen('PWNED', 'w')", "a\x0bopen('PWNED', 'w')", "a\x0copen('PWNED', 'w')",
           "a\x1c\x1d\x1e\x85open('PWNED', 'w')", "a\u2028open('PWNED', 'w')",
           "a\u2029open('PWNED', 'w')", "end\\", "nul\x00", '\\N{BULLET}\\x41 "\'#',
           "é 日本 \u202e"]

_IMPORT_EACH = textwrap.dedent("""
    import importlib, json, sys
    import torch
    sys.path.insert(0, ".")
    x = torch.load("x.pt")
    for k, name in enumerate(json.load(open("names.json"))):
        module = importlib.import_module(f"m{k}")
        assert module.__doc__.startswith(name + ": "), (k, module.__doc__)
        with torch.no_grad():
            d = (module.load_model()(x) - torch.load("want.pt")).abs().max().item()
        assert d == 0.0, (k, d)
    print("ok")
""")


def _import_each(folder, names, x, want) -> None:
    """Import m0.py, m1.py, ... of `folder` in a fresh interpreter: each must load, keep its
    graph's name as its docstring, compute `want` from `x`, and run nothing else."""
    (folder / "names.json").write_text(json.dumps(names))
    torch.save(x, folder / "x.pt")
    torch.save(want, folder / "want.pt")
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH], cwd=folder, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert not (folder / "PWNED").exists()


def test_graph_names_cannot_inject_code_into_the_python_export(tmp_path):
    b = GraphBuilder("plain")
    x = b.input(3, 8, 8)
    b.output(b.linear(b.flatten(b.gap(b.relu(b.bn(b.conv(x, 4, 3, padding=1))))), 5))
    graph = b.build()
    module = lower(graph).eval()
    for k, name in enumerate(HOSTILE):
        graph.name = name  # past the IR's check, as an older or hand-made graph could be
        export_python(graph, tmp_path / f"m{k}.py", module.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _import_each(tmp_path, HOSTILE, x, module(x))


def test_node_ids_cannot_inject_code_into_the_python_export(tmp_path, monkeypatch):
    """The IR refuses such ids (tests/ir); the source generator must not depend on it."""
    from safetensors.torch import save_file

    from nasgraph.ir import Graph, ops
    from nasgraph.ir import graph as graph_module

    def chain(ids):
        defs = [(ids[0], ops.Input(channels=3, height=6, width=6), [])]
        for k, node_id in enumerate(ids[1:-1]):
            op = ops.Conv2d(out_channels=3, kernel=3, padding=1) if k % 2 == 0 else \
                ops.Activation(fn="tanh")
            defs.append((node_id, op, [defs[-1][0]]))
        return Graph([*defs, (ids[-1], ops.Output(), [defs[-1][0]])], name="chain")

    hostile_ids = ["in\nput", *(h.replace("/", "|") for h in HOSTILE), "s/\r\x0b", "\x85/z",
                   "out\u2029"]
    plain = chain([f"n{k}" for k in range(len(hostile_ids))])
    monkeypatch.setattr(graph_module, "_ID", re.compile(r"[^/.]+(/[^/.]+)*", re.DOTALL))
    hostile = chain(hostile_ids)
    module = lower(plain).eval()
    keys = {p.param_key: h.param_key for p, h in zip(plain, hostile, strict=True)}
    state = {f"{keys[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}": v
             for k, v in module.state_dict().items()}
    save_file(state, str(tmp_path / "m0.safetensors"))
    (tmp_path / "m0.py").write_text(python_source(hostile, "m0.safetensors"), encoding="utf-8")
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        _import_each(tmp_path, ["chain"], x, module(x))


# ---------------------------------------------------------------- all files or none


def _tiny():
    b = GraphBuilder("tiny")
    b.output(b.conv(b.input(3, 8, 8), 4, 3))
    return b.build()


def test_exporting_onto_a_directory_writes_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "m.safetensors").mkdir()
    for target in (tmp_path / "out", tmp_path / "m.py"):
        with pytest.raises(NasgraphError, match=r": is a directory; hint: give the path of a "):
            export_python(_tiny(), target)
    with pytest.raises(NasgraphError, match=r"out: is a directory"):
        export(_tiny(), tmp_path / "out", "torchscript")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.safetensors", "out"]


def test_a_source_named_like_its_weights_is_refused(tmp_path):
    with pytest.raises(NasgraphError, match=r"m.safetensors: the weights go to a .safetensors "
                                            r"file beside the source; hint: name the source m.py"):
        export_python(_tiny(), tmp_path / "m.safetensors")
    assert not any(tmp_path.iterdir())


def test_a_path_under_a_file_is_one_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for fmt, name in (("python", "m.py"), ("torchscript", "m.pt"), ("onnx", "m.onnx")):
        with pytest.raises(NasgraphError, match=rf"file.txt/a/{name}: cannot create the folder "):
            export(_tiny(), tmp_path / "file.txt" / "a" / name, fmt)
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_a_failing_weights_write_leaves_no_source_and_no_folder(tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save", full)
    with pytest.raises(NasgraphError, match=r"a/b/m.py: cannot write \(No space left on device\)$"):
        export_python(_tiny(), tmp_path / "a" / "b" / "m.py")
    assert not any(tmp_path.iterdir())


def test_a_failing_rename_takes_back_the_files_renamed_before(tmp_path, monkeypatch):
    replace = Path.replace

    def refuse_weights(self, target):
        if str(target).endswith(".safetensors"):
            raise PermissionError(13, "Permission denied")
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", refuse_weights)
    with pytest.raises(NasgraphError, match=r"m.py: cannot write \(Permission denied\)$"):
        export_python(_tiny(), tmp_path / "m.py")
    assert not any(tmp_path.iterdir())
