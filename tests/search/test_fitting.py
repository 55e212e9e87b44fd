"""fit_to_budget: a candidate over budget is made cheaper by a coarser stem, fewer blocks and
narrower widths, and fits without being starved, on 8x8 digits, 28x28 MNIST and 32x32 CIFAR."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest

from nasgraph import analysis
from nasgraph.search import Budget, Context, Costs, fit_to_budget, load_space
from nasgraph.search.space import space_names
from tests.search.test_spaces import ExtremeTrial

BUDGETS = {(1, 8, 8): 200_000, (1, 28, 28): 1_000_000, (3, 32, 32): 5_000_000}
TINY = f"{Path(__file__).parent / 'tiny_space.py'}:space"


def random_trials(count: int) -> list[optuna.Trial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [study.ask() for _ in range(count)]


def stem_side(graph) -> int:
    return [n for n in graph if n.id.startswith("stem/")][-1].type.height


@pytest.mark.parametrize("shape", BUDGETS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", space_names())
def test_every_fitted_candidate_fits_and_keeps_a_quarter_of_its_widths(name, shape):
    space = load_space(name)
    ctx = Context(input_shape=shape, budget=Budget(macs=BUDGETS[shape]))
    # the cheapest rung the fitting may climb to: the coarsest stem, one block a stage
    cheapest = ctx.model_copy(update={"min_stem_stride": 4, "depth_multiplier": 0.25})
    for trial in random_trials(6):
        graph, costs, multiplier, feasible = fit_to_budget(space, trial, ctx)
        assert feasible and costs == Costs.of(graph) and costs.macs <= BUDGETS[shape]
        # narrower than a quarter only when even the cheapest rung is over budget there
        quarter = space(optuna.trial.FixedTrial(trial.params), cheapest.with_multiplier(0.25))
        assert multiplier >= 0.25 or analysis.macs(quarter) > BUDGETS[shape]
        # what the report and other workers rebuild from the trial's parameters alone
        assert fit_to_budget(space, optuna.trial.FixedTrial(trial.params), ctx)[0] == graph


@pytest.mark.parametrize("name", space_names())
def test_candidates_fitted_to_1M_macs_on_28x28_are_not_starved(name):
    # one width multiplier at full resolution left them a median of 1.5-3k parameters
    # (widths x0.14-0.18), dense seldom fitted at all (benchmarks/space_fit.py); networks
    # made by hand for 0.85-1.2M MACs on Fashion-MNIST have 15-20k
    space = load_space(name)
    ctx = Context(input_shape=(1, 28, 28), budget=Budget(macs=1_000_000))
    fitted = [fit_to_budget(space, trial, ctx) for trial in random_trials(12)]
    params = [costs.params for _, costs, _, feasible in fitted if feasible]
    assert len(params) == 12
    assert statistics.median(params) > 10_000 and min(params) > 4_000
    assert statistics.median(multiplier for _, _, multiplier, _ in fitted) >= 0.25


def test_the_largest_candidate_on_28x28_is_made_coarser_and_shallower_before_narrower():
    space = load_space("residual")
    ctx = Context(input_shape=(1, 28, 28), budget=Budget(macs=1_000_000))
    params = {"block": "basic", "preact": False, "stem.width": 64, "stem.stride": 1,
              "stages": 4, **{f"stage{i}.{k}": v for i in (1, 2, 3, 4)
                              for k, v in (("depth", 3), ("width", 64 * 2 ** (i - 1)))}}
    trial = optuna.trial.FixedTrial(params)
    full = space(trial, ctx)
    graph, costs, multiplier, feasible = fit_to_budget(space, trial, ctx)
    assert analysis.macs(full) > 400 * costs.macs and feasible
    assert stem_side(full) == 28 and stem_side(graph) == 14
    assert len([n for n in graph if n.id.endswith("conv1")]) == 4  # a block a stage
    assert min(n.type.channels for n in graph if n.op.kind == "conv2d") >= 8


def test_a_candidate_a_little_over_budget_keeps_its_resolution_and_depth():
    space = load_space("residual")
    ctx = Context(input_shape=(3, 32, 32))
    params = {"block": "basic", "preact": False, "stem.width": 16, "stem.stride": 1,
              "stages": 3, **{f"stage{i}.{k}": v for i in (1, 2, 3)
                              for k, v in (("depth", 2), ("width", 16 * 2 ** (i - 1)))}}
    trial = optuna.trial.FixedTrial(params)
    full = space(trial, ctx)
    ctx = ctx.model_copy(update={"budget": Budget(macs=int(0.8 * analysis.macs(full)))})
    graph, costs, multiplier, feasible = fit_to_budget(space, trial, ctx)
    assert feasible and 0.75 < multiplier < 1 and costs.macs > 0.9 * ctx.budget.macs
    assert stem_side(graph) == 32
    assert analysis.summarize(graph).depth == analysis.summarize(full).depth


def test_a_space_that_asks_only_for_widths_is_fitted_by_its_widths():
    # one conv and a classifier; it knows nothing of ctx.depth or ctx.stem_stride
    space = load_space(TINY)
    ctx = Context(input_shape=(1, 28, 28), budget=Budget(macs=60_000))
    trial = optuna.trial.FixedTrial({"width": 16, "kernel": 3, "pool": False})
    graph, costs, multiplier, feasible = fit_to_budget(space, trial, ctx)
    assert feasible and multiplier < 1 and 50_000 < costs.macs <= 60_000
    assert graph["conv"].type.shape == (8, 28, 28)


@pytest.mark.parametrize("name", space_names())
def test_largest_candidate_shrinks_onto_a_small_budget(name):
    space = load_space(name)
    ctx = Context(input_shape=(1, 8, 8), budget=Budget(macs=1_000_000))
    probe = ExtremeTrial(highest=True)
    assert analysis.macs(space(probe, ctx)) > 1_000_000
    graph, costs, multiplier, feasible = fit_to_budget(
        space, optuna.trial.FixedTrial(probe.params), ctx)
    assert feasible and multiplier < 1
    assert costs.macs == analysis.macs(graph) <= 1_000_000


def test_hopeless_budget_is_infeasible():
    space = load_space("residual")
    ctx = Context(input_shape=(1, 8, 8), budget=Budget(macs=1_000))
    probe = ExtremeTrial(highest=False)
    full = space(probe, ctx)
    graph, costs, _, feasible = fit_to_budget(space, optuna.trial.FixedTrial(probe.params), ctx)
    assert not feasible and graph == full and costs.macs > 1_000


def test_fitting_widens_single_widths_back_into_the_budget():
    # one multiplier for every width leaves this candidate at half its budget: the 8x8
    # stage's widths are at their minimum and one more step for all would double it
    params = {"block": "bottleneck", "preact": True, "stem.width": 64, "stages": 2,
              "stage1.depth": 1, "stage1.width": 64, "stage1.cardinality": 4,
              "stage2.depth": 1, "stage2.width": 88, "stage2.cardinality": 1}
    space = load_space("residual")
    ctx = Context(input_shape=(1, 8, 8), budget=Budget(macs=200_000))
    graph, costs, multiplier, feasible = fit_to_budget(
        space, optuna.trial.FixedTrial(params), ctx)
    uniform = space(optuna.trial.FixedTrial(params), ctx.with_multiplier(multiplier))
    assert feasible and analysis.macs(uniform) < 100_000 < 180_000 < costs.macs <= 200_000
    assert costs.macs == analysis.macs(graph)
