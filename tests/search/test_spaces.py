"""Every built-in space, at its smallest and largest settings, replayed with FixedTrial."""

from __future__ import annotations

import optuna
import pytest
import torch

from nasgraph import analysis
from nasgraph.backends.torch import lower
from nasgraph.errors import SpaceError
from nasgraph.search import Budget, Context, builtin_spaces, fit_to_budget, load_space

SHAPES = [(1, 8, 8), (3, 32, 32)]


class ExtremeTrial:
    """Answers every suggestion with its lowest (or highest) choice and records it."""

    def __init__(self, highest: bool) -> None:
        self.highest, self.params = highest, {}

    def _pick(self, name, value):
        return self.params.setdefault(name, value)

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._pick(name, high if self.highest else low)

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._pick(name, high if self.highest else low)

    def suggest_categorical(self, name, choices):
        return self._pick(name, choices[-1] if self.highest else choices[0])


def test_the_four_builtin_spaces_are_there():
    assert {"inception", "residual", "dense", "macro"} <= set(builtin_spaces())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("highest", [False, True], ids=["smallest", "largest"])
@pytest.mark.parametrize("name", builtin_spaces())
def test_space_at_its_extremes(name, highest, shape):
    space = load_space(name)
    ctx = Context(input_shape=shape, num_classes=7)
    probe = ExtremeTrial(highest)
    graph = space(probe, ctx)
    # FixedTrial replays the same choices into the same graph
    assert space(optuna.trial.FixedTrial(probe.params), ctx) == graph
    assert [list(o.type.shape) for o in graph.outputs] == [[7]]
    assert all("." in k or k in ("stages", "block", "preact") for k in probe.params)
    model = lower(graph).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 7)
    assert analysis.params(graph) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", builtin_spaces())
def test_largest_candidate_shrinks_onto_a_small_budget(name):
    space = load_space(name)
    ctx = Context(input_shape=(1, 8, 8), num_classes=10, budget=Budget(macs=1_000_000))
    probe = ExtremeTrial(highest=True)
    full = space(probe, ctx)
    assert analysis.macs(full) > 1_000_000
    graph, costs, multiplier, feasible = fit_to_budget(
        space, optuna.trial.FixedTrial(probe.params), ctx)
    assert feasible and multiplier < 1
    assert costs.macs == analysis.macs(graph) <= 1_000_000
    # the largest multiplier that fits: a little wider is over budget (or not narrower)
    wider = space(optuna.trial.FixedTrial(probe.params), ctx.with_multiplier(multiplier * 1.1))
    assert analysis.macs(wider) > 1_000_000 or wider == graph


def test_hopeless_budget_is_infeasible():
    space = load_space("residual")
    ctx = Context(input_shape=(1, 8, 8), budget=Budget(macs=1_000))
    graph, costs, _, feasible = fit_to_budget(space, _smallest_trial(space, ctx), ctx)
    assert not feasible and costs.macs > 1_000


def _smallest_trial(space, ctx):
    probe = ExtremeTrial(highest=False)
    space(probe, ctx)
    return optuna.trial.FixedTrial(probe.params)


def test_space_from_a_file(tmp_path):
    (tmp_path / "mine.py").write_text(
        "from nasgraph import GraphBuilder\n"
        "def tiny(trial, ctx):\n"
        "    b = GraphBuilder('tiny')\n"
        "    x = b.input(*ctx.input_shape)\n"
        "    x = b.conv(x, ctx.width(trial.suggest_int('conv.width', 4, 16, step=4)), 3)\n"
        "    b.output(b.linear(b.flatten(b.gap(x)), ctx.num_classes))\n"
        "    return b.build()\n")
    space = load_space(f"{tmp_path / 'mine.py'}:tiny")
    g = space(optuna.trial.FixedTrial({"conv.width": 8}), Context())
    assert g["conv"].type.channels == 8


@pytest.mark.parametrize(("spec", "message"), [
    ("resnet", "unknown search space 'resnet'; hint: one of"),
    ("missing/file.py:space", "is not a file"),
    ("residual:nothing", "has no function 'nothing'"),
])
def test_bad_space_is_one_clear_error(spec, message):
    with pytest.raises(SpaceError, match=message):
        load_space(spec)


def test_fitting_widens_single_widths_back_into_the_budget():
    # one multiplier for every width leaves this candidate at a third of its budget: the
    # 8x8 stage's widths are at their minimum and one more step for all would quadruple it
    params = {"block": "bottleneck", "preact": True, "stem.width": 40, "stages": 2,
              "stage1.depth": 3, "stage1.width": 48, "stage1.cardinality": 4,
              "stage2.depth": 1, "stage2.width": 88, "stage2.cardinality": 1}
    space = load_space("residual")
    ctx = Context(input_shape=(1, 8, 8), budget=Budget(macs=200_000))
    graph, costs, multiplier, feasible = fit_to_budget(
        space, optuna.trial.FixedTrial(params), ctx)
    uniform = space(optuna.trial.FixedTrial(params), ctx.with_multiplier(multiplier))
    assert feasible and analysis.macs(uniform) < 100_000 < 180_000 < costs.macs <= 200_000
    assert costs.macs == analysis.macs(graph)
