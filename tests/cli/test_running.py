"""`nasgraph run` turns bad values and batches too large for memory into one line on stderr
and exit code 2, on both backends, before allocating anything where it can tell."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nasgraph import latency, zoo
from nasgraph.analysis import params, peak_memory_bytes
from nasgraph.cli import app, running

GB = 10**9


def invoke(*args: str):
    return CliRunner().invoke(app, ["run", *args])


def assert_one_line_error(r, *fragments: str) -> None:
    assert r.exit_code == 2, (r.stdout, r.stderr, r.exception)
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert "Traceback" not in r.stderr
    for fragment in fragments:
        assert fragment in r.stderr


@pytest.fixture
def memory(monkeypatch):
    """`nasgraph run` sees 8 GB available, whatever this machine has."""
    monkeypatch.setattr(latency, "available_memory", lambda device: (8 * GB, "available"))


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_a_batch_past_memory_is_refused_before_it_runs(backend, memory):
    r = invoke("lenet5", "--backend", backend, "--batch", "100000000")
    g = zoo.get("lenet5")
    per_image, weights = peak_memory_bytes(g), 4 * params(g)
    assert_one_line_error(r, "--batch 100000000: needs about 3.76TB of memory",
                          "37.63kB of activations an image", "more than the 8.00GB available",
                          f"hint: --batch {(8 * GB - weights) // per_image} or less")
    assert r.stdout == ""  # nothing ran


def test_the_largest_batch_that_fits_runs(monkeypatch):
    g = zoo.get("lenet5")
    per_image, weights = peak_memory_bytes(g), 4 * params(g)
    monkeypatch.setattr(latency, "available_memory",
                        lambda device: (3 * per_image + weights, "available"))
    r = invoke("lenet5", "--batch", "3")
    assert r.exit_code == 0, r.stderr
    assert "batch 3 -> 3x10" in r.stdout
    assert_one_line_error(invoke("lenet5", "--batch", "4"), "hint: --batch 3 or less")


def test_memory_too_small_for_one_image_hints_at_the_input(monkeypatch):
    monkeypatch.setattr(latency, "available_memory", lambda device: (1000, "available"))
    assert_one_line_error(invoke("lenet5"), "--batch 1: needs about",
                          "hint: a smaller --input")


def test_this_machine_reports_its_memory():
    free, where = latency.available_memory("cpu")
    assert 2**27 < free < 2**50 and where


def runner_doing(action):
    """A runner whose forward pass is `action()`."""
    def runner(graph, device, batch, threads):
        return action
    return runner


def cuda_out_of_memory():
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("allocate", [
    lambda: np.empty(1 << 60, np.uint8),  # numpy: MemoryError
    lambda: torch.empty(1 << 60, dtype=torch.uint8),  # torch: RuntimeError, can't allocate
    cuda_out_of_memory,
])
def test_a_failed_allocation_is_one_line(allocate, monkeypatch, memory):
    # an allocation the up-front estimate let through (it counts activations and weights
    # only) fails for real: 2^60 bytes, more than any address space
    monkeypatch.setitem(running.RUNNERS, "torch", runner_doing(allocate))
    assert_one_line_error(invoke("lenet5", "--batch", "7"),
                          "--batch 7: out of memory running lenet5 on torch (cpu), which "
                          "needs about", "hint: a smaller --batch")


def test_other_runtime_errors_are_not_called_memory(monkeypatch):
    def bug():
        raise RuntimeError("a bug")

    monkeypatch.setitem(running.RUNNERS, "torch", runner_doing(bug))
    r = invoke("lenet5")
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "jax"], "--backend 'jax': expected torch or numba"),
    (["--device", "tpu"], "--device 'tpu': expected cpu or cuda"),
    (["--backend", "numba", "--device", "cuda"], "the numba backend runs on the cpu only"),
    (["--profile"], "hint: --backend numba"),
    (["--backend", "numba", "--threads", "100000"], "should be less than or equal to 1024"),
    (["--input", "3x2x2"], "node 'c1' (conv2d)"),
    (["--input", "3x32"], "--input '3x32': expected CxHxW"),
    (["--batch", "0"], "--batch"),
    (["--threads", "0"], "--threads"),
    (["--iters", "0", "--bench"], "--iters"),
])
def test_bad_values_are_one_line(args, message):
    r = invoke("lenet5", *args)
    assert_one_line_error(r, message)
    assert r.stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_device_is_one_line():
    assert_one_line_error(invoke("lenet5", "--device", "cuda"),
                          "--device cuda: no CUDA device is available; hint: --device cpu")


def test_the_summary_says_why_another_trial_than_the_best_was_retrained(capsys):
    from types import SimpleNamespace

    from nasgraph.cli.searching import _print_result

    best = {"trial": 19, "val_accuracy": 0.875, "test_accuracy": 0.9182,
            "test_accuracy_std": 0.0001, "final_seeds": 2, "final_epochs": 44,
            "final_epochs_runs": [44, 43], "macs": 985_512, "params": 103_990,
            "picked_for": "the fastest to train within one standard error of the best "
                          "validation accuracy (trial 13, 87.72%)"}
    _print_result(SimpleNamespace(study="s", study_dir="runs/s", trials=20,
                                  feasible_fraction=1.0, shrunk_fraction=0.5, best=best,
                                  seconds={"trials": 700.0}))
    out = " ".join(capsys.readouterr().out.split())
    assert "trial 19: val 87.50%, test 91.82% +- 0.01 over 2 retrainings of 44 + 43 " \
           "epochs" in out
    assert "retrained as the fastest to train within one standard error of the best " \
           "validation accuracy (trial 13, 87.72%)" in out
