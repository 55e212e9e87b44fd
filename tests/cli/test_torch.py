"""`nasgraph export` and `nasgraph run` as a user runs them, in a real subprocess."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from nasgraph import zoo
from nasgraph.backends.torch import lower
from tests.cli.test_commands import nasgraph_cli


def test_export_python_with_weights_reproduces_lower(tmp_path):
    g = zoo.get("lenet5")
    module = lower(g).eval()
    save_file(dict(module.state_dict()), str(tmp_path / "in.safetensors"))
    r = nasgraph_cli("export", "lenet5", "-o", str(tmp_path / "out" / "lenet.py"),
                     "--weights", str(tmp_path / "in.safetensors"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "lenet.safetensors").is_file()
    spec = importlib.util.spec_from_file_location("lenet_cli_export", tmp_path / "out/lenet.py")
    exported = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exported)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(exported.load_model()(x), module(x))


def test_export_torchscript_at_another_size(tmp_path):
    r = nasgraph_cli("export", "resnet18", "-o", str(tmp_path / "r.pt"), "--format",
                     "torchscript", "--input", "3x32x32", "--classes", "5")
    assert r.returncode == 0, r.stderr
    y = torch.jit.load(str(tmp_path / "r.pt"))(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 5)


def test_run_with_bench_reports_latency_and_throughput():
    r = nasgraph_cli("run", "lenet5", "--batch", "4", "--bench", "--iters", "3")
    assert r.returncode == 0, r.stderr
    assert "batch 4 -> 4x10" in r.stdout
    assert "median latency" in r.stdout and "images/s" in r.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["run", "lenet5", "--backend", "tvm"], "--backend 'tvm': expected torch or numba"),
    (["run", "lenet5", "--device", "tpu"], "--device 'tpu': expected cpu or cuda"),
    (["export", "lenet5", "-o", "x.py", "--format", "tf"], "--format 'tf': expected python"),
    (["export", "lenet5", "-o", "x.py", "--weights", "missing.safetensors"],
     "--weights missing.safetensors: no such file"),
])
def test_bad_options_are_one_line_errors(args, message):
    r = nasgraph_cli(*args)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_run_on_cuda_without_a_device_is_one_line():
    r = nasgraph_cli("run", "lenet5", "--device", "cuda")
    assert r.returncode == 2 and "no CUDA device is available" in r.stderr
