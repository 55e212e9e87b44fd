"""Tiny searches end to end: artifacts, budgets, objectives, resuming after SIGINT/SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import optuna
import pytest
import torch

import nasgraph
from nasgraph import analysis
from nasgraph.errors import BudgetError
from nasgraph.search import Budget, Costs, parse_amount
from nasgraph.search.run import SearchConfig, search
from nasgraph.search.storage import GRACE_PERIOD

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "value"), [("300k", 300_000), ("5M", 5_000_000),
                                             ("1.2G", 1_200_000_000), ("750", 750),
                                             ("2.5m", 2_500_000)])
def test_parse_amount(text, value):
    assert parse_amount(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-5k", "5X", "0"])
def test_parse_amount_rejects(text):
    with pytest.raises(BudgetError, match="expected a positive amount"):
        parse_amount(text)


def test_budget_check_names_the_bound():
    g = nasgraph.zoo.get("lenet5")
    costs = Costs.of(g)
    assert costs.macs == analysis.macs(g) and costs.params == analysis.params(g)
    assert Budget(macs=costs.macs).fits(costs)
    with pytest.raises(BudgetError, match="params 61.7k over the budget of 10k"):
        Budget(params=10_000).check(g)
    assert Budget(macs=costs.macs // 2).excess(costs)["macs"] == pytest.approx(1, abs=1e-5)


def _trained(study_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (study_dir / "trials").glob("*/weights.pt"))


@pytest.mark.slow
def test_residual_search_writes_every_artifact(tmp_path):
    cfg = SearchConfig(space="residual", budget_macs=100_000, trials=4, epochs=2,
                       final_seeds=2, final_epochs=2, runs_dir=str(tmp_path), device="cpu")
    result = search(cfg)
    study_dir = tmp_path / "residual-digits"
    assert result.trials == 4 and not result.interrupted
    assert (study_dir / "study.db").is_file()
    study = optuna.load_study(study_name="residual-digits",
                              storage=f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.trials) == 4
    # every trained candidate is within budget, by the graph it was trained as
    for folder in _trained(study_dir):
        assert analysis.macs(nasgraph.load(folder / "graph.json")) <= 100_000
    for t in study.trials:
        assert (study_dir / "trials" / f"{t.number:04d}" / "graph.json").is_file()
        assert t.user_attrs["feasible"] == (t.user_attrs["macs"] <= 100_000)
    rows = list(csv.DictReader((study_dir / "leaderboard.csv").open()))
    assert len(rows) == 4 and rows[0]["rank"] == "1"
    assert "| rank | trial |" in (study_dir / "leaderboard.md").read_text()
    best = json.loads((study_dir / "best" / "result.json").read_text())
    assert {"trial", "val_accuracy", "test_accuracy", "macs", "params",
            "sampled_parameters"} <= set(best)
    assert best["sampled_parameters"] == study.trials[best["trial"]].params
    assert len(best["test_accuracy_runs"]) == 2
    assert best["test_accuracy"] == pytest.approx(sum(best["test_accuracy_runs"]) / 2)
    graph = nasgraph.load(study_dir / "best" / "graph.json")
    assert analysis.macs(graph) == best["macs"] <= 100_000
    # the stored weights reproduce the stored test accuracy of the exported model
    from nasgraph.backends.torch import lower
    from nasgraph.data import load_dataset
    from nasgraph.train import accuracy

    model = lower(graph)
    model.load_state_dict(torch.load(study_dir / "best" / "weights.pt", weights_only=True))
    assert accuracy(model, load_dataset("digits").test) == pytest.approx(
        best["model_test_accuracy"])
    for plot in ("history.png", "history.html", "pareto.png", "pareto.html"):
        assert (study_dir / "plots" / plot).stat().st_size > 0
    if best["graph_svg"]:
        ET.parse(study_dir / "best" / "graph.svg")  # well-formed XML
    _check_exported_model(study_dir / "best", best["model_test_accuracy"])


def _check_exported_model(folder: Path, expected: float) -> None:
    """best/model.py runs in a plain torch process and scores the stored test accuracy."""
    from nasgraph.data import load_dataset

    ds = load_dataset("digits")
    torch.save({"x": ds.test.x, "y": ds.test.y}, folder.parent / "test_split.pt")
    # nasgraph made unimportable: the file must stand on torch and safetensors alone
    code = ("import sys, runpy, torch; sys.modules['nasgraph'] = None; "
            f"ns = runpy.run_path({str(folder / 'model.py')!r}); "
            "m = ns['load_model'](); "
            f"d = torch.load({str(folder.parent / 'test_split.pt')!r}); "
            "print((m.eval()(d['x']).argmax(1) == d['y']).float().mean().item())")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                       cwd=folder, timeout=120)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[-1]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("space", ["inception", "dense", "macro"])
def test_other_spaces_search(tmp_path, space):
    cfg = SearchConfig(space=space, budget_macs=150_000, trials=3, epochs=1, final_seeds=1,
                       final_epochs=1, runs_dir=str(tmp_path), device="cpu", seed=1)
    result = search(cfg)
    assert result.trials == 3 and result.feasible_fraction > 0
    study_dir = tmp_path / f"{space}-digits"
    for folder in _trained(study_dir):
        assert analysis.macs(nasgraph.load(folder / "graph.json")) <= 150_000
    assert (study_dir / "best" / "result.json").is_file()


@pytest.mark.slow
def test_multi_objective_search_has_a_pareto_front(tmp_path):
    cfg = SearchConfig(space="residual", budget_macs=80_000, trials=3, epochs=1,
                       final_seeds=0, runs_dir=str(tmp_path), device="cpu",
                       objective="accuracy,macs", sampler="nsga2")
    result = search(cfg)
    assert result.trials == 3
    study_dir = tmp_path / "residual-digits"
    rows = list(csv.DictReader((study_dir / "leaderboard.csv").open()))
    assert any(r["pareto"] == "True" for r in rows)
    assert (study_dir / "plots" / "pareto.png").is_file()


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nasgraph.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, **kwargs)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.2)


def _states(study_dir: Path) -> dict[int, str]:
    study = optuna.load_study(study_name="resume",
                              storage=f"sqlite:///{study_dir / 'study.db'}")
    return {t.number: t.state.name for t in study.trials}


@pytest.mark.slow
def test_killed_search_resumes_without_losing_a_trial(tmp_path):
    # 10 epochs make a trial take seconds, so the signals below land inside a trial even on
    # a busy machine (with 3, all four trials could end before SIGINT arrived)
    args = ["search", "residual", "--budget", "60k", "--trials", "4", "--epochs", "10",
            "--final-seeds", "1", "--final-epochs", "1", "--study", "resume",
            "--runs-dir", str(tmp_path), "--device", "cpu"]
    study_dir = tmp_path / "resume"
    # SIGINT (Ctrl-C) during trial 1: trial 0 kept, trial 1 failed and queued again
    proc = _cli(*args)
    _wait_for(study_dir / "trials" / "0001" / "graph.json", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err  # as shells expect of a command stopped by Ctrl-C
    assert "interrupted" in err
    states = _states(study_dir)
    assert states[0] in ("COMPLETE", "PRUNED") and "RUNNING" not in states.values()
    assert (study_dir / "leaderboard.md").is_file()
    # SIGKILL during the next trial: nothing written on the way out
    proc = _cli(*args)
    _wait_for(study_dir / "trials" / f"{len(states):04d}" / "graph.json", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    before = _states(study_dir)
    assert "RUNNING" in before.values()
    time.sleep(GRACE_PERIOD + 1)  # the dead worker's heartbeat goes stale
    proc = _cli(*args)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    after = _states(study_dir)
    for number, state in before.items():  # no finished trial lost
        if state in ("COMPLETE", "PRUNED"):
            assert after[number] == state
    assert "RUNNING" not in after.values()
    assert sum(s in ("COMPLETE", "PRUNED") for s in after.values()) == 4
    assert "resuming study 'resume'" in err
    show = subprocess.run([sys.executable, "-m", "nasgraph.cli", "study", "show", "resume",
                           "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert show.returncode == 0, show.stderr
    assert "resume" in show.stdout and "val acc" in show.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["search", "nosuchspace"], "unknown search space 'nosuchspace'"),
    (["search", "residual", "--budget", "lots"], "--budget 'lots': expected a positive"),
    (["search", "residual", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["search", "residual", "--objective", "speed"], "--objective 'speed'"),
    (["study", "show", "nosuchstudy"], "no study 'nosuchstudy'"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    proc = _cli(*args, "--runs-dir", str(tmp_path))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip().count("\n") == 0 and message in err


@pytest.mark.parametrize("args", [["nosuchspace"], ["residual", "--dataset", "imagenet"],
                                  ["residual", "--budget", "lots"], ["residual", "--trials", "0"]])
def test_a_wrong_search_fails_before_torch_is_imported(args):
    """Importing torch takes seconds: a mistyped search says so in about one."""
    code = textwrap.dedent("""
        import sys
        from nasgraph.cli import app
        try:
            app(sys.argv[1:])
        except SystemExit as e:
            print(e.code, "torch" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", code, "search", *args], capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stderr
