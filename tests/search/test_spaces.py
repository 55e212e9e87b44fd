"""Every registered space (and every example in search_spaces/), at its smallest and largest
settings and at random ones, replayed with FixedTrial; the registry and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from nasgraph import analysis
from nasgraph.backends.torch import lower
from nasgraph.errors import SpaceError
from nasgraph.ir import Graph
from nasgraph.search import Context, load_space
from nasgraph.search import space as space_module
from nasgraph.search.space import get_space, register_space, space_names

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]  # digits, MNIST, CIFAR-10
EXAMPLES = sorted(str(p) for p in (Path(__file__).parents[2] / "search_spaces").glob("*.py"))
SPACES = space_names() + EXAMPLES


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


def test_the_builtin_spaces_are_registered():
    assert {"inception", "residual", "dense", "macro", "mobile"} <= set(space_names())
    assert EXAMPLES, "search_spaces/ holds at least one example"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("highest", [False, True], ids=["smallest", "largest"])
@pytest.mark.parametrize("name", SPACES, ids=lambda s: Path(s).name)
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


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", SPACES, ids=lambda s: Path(s).name)
def test_space_with_optuna_trials(name, shape):
    """What a search does: real trials of a study, each graph valid and replayed by
    FixedTrial from the parameters the trial recorded."""
    space = load_space(name)
    ctx = Context(input_shape=shape, num_classes=10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        graph = space(trial, ctx)
        assert isinstance(graph, Graph)
        assert Graph.from_json(graph.to_json()) == graph
        assert [list(o.type.shape) for o in graph.outputs] == [[10]]
        assert space(optuna.trial.FixedTrial(trial.params), ctx) == graph
        study.tell(trial, 0.0)


@pytest.mark.parametrize(("shape", "ends"), [
    ((1, 8, 8), {False: 8, True: 4}),  # no stem stride to choose; 1 or 2 stages
    ((1, 28, 28), {False: 7, True: 4}),  # stride 1, 3 stages; stride 2, 3 stages (14, 7, 4)
    ((3, 32, 32), {False: 8, True: 4}),
])
@pytest.mark.parametrize("name", space_names())
def test_the_stages_end_between_4x4_and_8x8(name, shape, ends):
    for highest, side in ends.items():
        graph = load_space(name)(ExtremeTrial(highest), Context(input_shape=shape))
        pooled = [n for n in graph if n.op.kind == "global_avgpool"][-1]  # the head's
        # pooling stages round down (7 -> 3), strided convs up (7 -> 4)
        assert graph[pooled.inputs[0]].type.height in (side, side - 1)


def test_the_mobile_space_searches_kernel_expansion_and_squeeze_excitation():
    params = {"stem.width": 8, "stem.stride": 2, "stages": 2, "stage1.width": 16,
              "stage1.depth": 2, "stage1.kernel": 5, "stage1.expansion": 6, "stage1.se": True,
              "stage2.width": 24, "stage2.depth": 1, "stage2.kernel": 3,
              "stage2.expansion": 1, "stage2.se": False}
    graph = load_space("mobile")(optuna.trial.FixedTrial(params),
                                 Context(input_shape=(1, 28, 28)))
    depthwise = [n for n in graph if n.op.kind == "conv2d" and n.op.groups > 1]
    assert [(n.op.kernel, n.type.channels, n.type.height) for n in depthwise] == [
        ((5, 5), 48, 14), ((5, 5), 96, 14), ((3, 3), 16, 7)]  # 8 x 6, 16 x 6; 16 x 1
    assert sum(n.op.kind == "mul" for n in graph) == 2  # a gate per block of stage 1
    assert sum(n.op.kind == "add" for n in graph) == 1  # the residual of its 2nd block


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


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(SpaceError) as e:
        load_space("resnet")
    assert str(e.value) == ("unknown search space 'resnet'; hint: one of "
                            f"{', '.join(space_names())}, or path/to/file.py:function")
    assert "dense, inception, macro, mobile, residual" in str(e.value)


@pytest.mark.parametrize(("spec", "message"), [
    ("missing/file.py:space", "is not a file"),
    (f"{Path(__file__).parent / 'tiny_space.py'}:nothing", "has no function 'nothing'"),
    ("residual:stage", "a registered space is named alone; hint: 'residual'"),
    ("resnet:stage", "unknown search space 'resnet'"),
])
def test_bad_space_is_one_clear_error(spec, message):
    with pytest.raises(SpaceError, match=message):
        load_space(spec)


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test: registering is for good otherwise."""
    monkeypatch.setattr(space_module, "_SPACES", dict(space_module._SPACES))


def test_register_under_the_function_name_or_another(registry):
    @register_space
    def plain(trial, ctx): ...

    @register_space("plain_too")
    def other(trial, ctx): ...

    assert get_space("plain") is load_space("plain") is plain
    assert get_space("plain_too") is other
    assert {"plain", "plain_too", "residual"} <= set(space_names())


def test_a_name_is_registered_once(registry):
    builtin = get_space("residual")
    with pytest.raises(SpaceError, match=r"'residual' is already registered "
                       r"\(nasgraph.search.spaces.residual.residual\)"):
        @register_space
        def residual(trial, ctx): ...

    with pytest.raises(SpaceError, match="'macro' is already registered"):
        register_space("macro")(builtin)
    assert get_space("residual") is builtin


def test_a_file_may_register_spaces(registry, tmp_path):
    (tmp_path / "mine.py").write_text(
        "from nasgraph.search.space import register_space\n"
        "@register_space('mine')\n"
        "def space(trial, ctx): ...\n")
    space = load_space(str(tmp_path / "mine.py"))
    assert get_space("mine") is space


def test_the_builtin_spaces_are_imported_on_first_use():
    code = ("import sys, nasgraph.search.space as s; "
            "before = 'nasgraph.search.spaces' in sys.modules; s.space_names(); "
            "print(before, 'nasgraph.search.spaces.macro' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "True"]


def test_spaces_command_prints_every_name_whole():
    # a name longer than the terminal is wide is still printed whole, on its own line
    name = "a_space_with_a_name_longer_than_the_terminal_is_wide"
    code = ("from nasgraph.search.space import register_space\n"
            f"register_space({name!r})(lambda trial, ctx: None)\n"
            "from nasgraph.cli import spaces\n"
            "from nasgraph.cli._common import app\n"
            "app(['spaces'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "40"}, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[0] for line in lines] == sorted([*space_names(), name])
    residual_line = next(line for line in lines if line.startswith("residual "))
    assert residual_line.split(maxsplit=1)[1] == get_space("residual").__doc__.splitlines()[0]
