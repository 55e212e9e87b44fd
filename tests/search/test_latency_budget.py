"""A latency budget and objective: predicted on the latency target before training, like
MACs; candidates fitted onto it; the best measured; a Pareto front of accuracy and latency."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nasgraph.errors import BudgetError
from nasgraph.search.budget import Budget, latency_model, parse_latency, parse_target
from nasgraph.search.config import SearchConfig
from nasgraph.search.run import search

TINY = f"{Path(__file__).parent / 'tiny_space.py'}:space"


@pytest.fixture(autouse=True)
def _own_latency_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NASGRAPH_LATENCY_CACHE", str(tmp_path / "latency-cache"))
    latency_model.cache_clear()
    yield
    latency_model.cache_clear()


@pytest.mark.parametrize(("text", "ms"), [("2ms", 2.0), ("800us", 0.8), ("1.5s", 1500.0),
                                          ("0.25", 0.25)])
def test_parse_latency(text, ms):
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "-1ms", "2 hours"])
def test_parse_latency_rejects(text):
    with pytest.raises(BudgetError, match="--max-latency"):
        parse_latency(text)


def test_parse_target():
    assert parse_target("numba") == "numba:1" and parse_target("torch-cpu:2") == "torch-cpu:2"
    with pytest.raises(BudgetError, match="--latency-target 'tpu:1': expected TARGET"):
        parse_target("tpu:1")


def test_a_latency_budget_is_predicted_and_described():
    from nasgraph import zoo

    budget = Budget(latency_ms=0.001, latency_target="numba:1")
    costs = budget.costs(zoo.get("lenet5"))
    assert costs.latency_ms > 0 and not budget.fits(costs)
    assert budget.describe() == "latency (ms, numba:1) <= 0.001"
    assert Budget(macs=10).costs(zoo.get("lenet5")).latency_ms is None  # not asked: not paid


def test_a_latency_budget_is_checked_against_the_upper_estimate():
    from nasgraph.search.budget import Costs

    costs = Costs(macs=1, params=1, memory=1, latency_ms=1.0, latency_upper_ms=1.1)
    budget = Budget(latency_ms=1.05)
    assert not budget.fits(costs) and budget.excess(costs)["latency_ms"] == pytest.approx(
        0.05 / 1.05)
    assert Budget(latency_ms=1.1).fits(costs)
    assert Budget(latency_ms=1.0).fits(costs.model_copy(update={"latency_upper_ms": None}))


def _trials(tmp_path, study):
    return optuna.load_study(study_name=study,
                             storage=f"sqlite:///{tmp_path / study / 'study.db'}").trials


def test_a_search_under_a_latency_budget_trains_only_what_fits_and_measures_the_best(tmp_path):
    # the tiny space's candidates take 0.005-0.05 ms on numba; 0.02 ms cuts some of them
    cfg = SearchConfig(space=TINY, trials=6, epochs=1, sampler="random", final_seeds=0,
                       max_latency_ms=0.02, runs_dir=str(tmp_path), device="cpu",
                       study="fast", top_k=2)
    result = search(cfg)
    trials = _trials(tmp_path, "fast")
    # the fresh table was calibrated on the space's own candidates before the first trial
    assert latency_model("numba:1").table.graphs >= 2
    assert all("latency_ms" in t.user_attrs for t in trials)
    for t in trials:
        # checked against the prediction plus the calibration's worst under-prediction
        upper = t.user_attrs["latency_upper_ms"]
        assert upper >= t.user_attrs["latency_ms"]
        assert t.user_attrs["feasible"] == (upper <= 0.02), t.user_attrs
    rows = (tmp_path / "fast" / "leaderboard.md").read_text()
    assert "latency_ms" in rows and "measured_ms" in rows
    assert result.best is None or result.best["trial"] in {
        t.number for t in trials if t.user_attrs["feasible"]}


def test_accuracy_latency_is_a_pareto_study(tmp_path):
    cfg = SearchConfig(space=TINY, trials=4, epochs=1, sampler="random", final_seeds=0,
                       objective="accuracy,latency", runs_dir=str(tmp_path), device="cpu",
                       study="front")
    search(cfg)
    trials = [t for t in _trials(tmp_path, "front") if t.state == TrialState.COMPLETE]
    assert trials and all(t.values[1] == pytest.approx(t.user_attrs["latency_ms"], rel=1e-3)
                          for t in trials)

