"""Search spaces: plain functions `space(trial, ctx) -> Graph`, Optuna's define-by-run idiom.

    >>> import optuna
    >>> from nasgraph.search import Context, load_space
    >>> space = load_space("residual")
    >>> ctx = Context(input_shape=(1, 8, 8), num_classes=10)
    >>> g = space(optuna.trial.FixedTrial({"stages": 2}), ctx)  # doctest: +SKIP

A space names its parameters hierarchically (`stage2.depth`, `stage2.block0.paths`) and
asks `ctx.width(c)` for every channel count (and, where it has them, `ctx.depth(n)` for its
block counts and `ctx.stem_stride(s)` for its stem's stride), so that the search can fit a
candidate onto the budget (`fit_to_budget`) instead of discarding it.

Spaces are registered by name with `@register_space`, as timm registers models; the
built-in ones live in `nasgraph.search.spaces`. `load_space` takes a registered name or
`path/to/file.py:function`.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from nasgraph.errors import SpaceError
from nasgraph.ir import Graph
from nasgraph.search.budget import Budget, Costs

Space = Callable[[Any, "Context"], Graph]
S = TypeVar("S", bound=Space)

_SPACES: dict[str, Space] = {}


class Context(BaseModel):
    """What a space knows besides the trial: the data's shape, the classes, the budget, and
    how the search makes a candidate cheaper to fit the budget (`fit_to_budget`): narrower
    widths (`width`), fewer blocks (`depth`) and a stem that downsamples more (`stem_stride`).
    A space that asks these three for its channels, block counts and stem stride can be
    fitted to any budget; one that asks only `width` is fitted by its widths alone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_shape: tuple[int, int, int] = (1, 8, 8)
    num_classes: int = Field(default=10, gt=1)
    budget: Budget = Budget()
    width_multiplier: float = Field(default=1.0, gt=0)
    # extra `divisor` steps for the widths a space requests as `channels` (key)
    width_steps: dict[int, int] = Field(default_factory=dict)
    min_width: int = Field(default=4, gt=0)
    depth_multiplier: float = Field(default=1.0, gt=0, le=1)
    min_stem_stride: int = Field(default=1, gt=0)

    def width(self, channels: int, divisor: int = 4) -> int:
        """`channels` times the width multiplier, rounded to a multiple of `divisor` (as
        MobileNet's width multiplier), never below `min_width`; then `width_steps[channels]`
        multiples of `divisor` wider, but never wider than `channels` itself (rounded)."""
        shrunk = self._round(channels * self.width_multiplier, divisor)
        grown = shrunk + self.width_steps.get(channels, 0) * divisor
        return min(grown, max(shrunk, self._round(channels, divisor)))

    def _round(self, scaled: float, divisor: int) -> int:
        rounded = max(self.min_width, divisor, int(scaled + divisor / 2) // divisor * divisor)
        return rounded + divisor if rounded < 0.9 * scaled else rounded

    def depth(self, blocks: int) -> int:
        """`blocks` times the depth multiplier, rounded up (as EfficientNet's depth
        coefficient), at least 1."""
        return max(1, math.ceil(blocks * self.depth_multiplier))

    @property
    def stem_strides(self) -> tuple[int, ...]:
        """The strides a stem may take on this input: 1 below 16 px (8x8 digits keep their
        resolution), 1 or 2 below 64 px (MNIST, CIFAR-10), 2 or 4 from 64 px (ImageNet's
        networks reduce 4x before their first stage)."""
        side = min(self.input_shape[1:])
        return (1,) if side < 16 else (1, 2) if side < 64 else (2, 4)

    def stem_stride(self, asked: int) -> int:
        """The stride the trial asked of the stem, or `min_stem_stride` when that is larger
        and the input allows it."""
        return max(asked, min(self.min_stem_stride, self.stem_strides[-1]))

    def with_multiplier(self, m: float) -> Context:
        return self.model_copy(update={"width_multiplier": m, "width_steps": {}})

    def with_steps(self, steps: dict[int, int]) -> Context:
        return self.model_copy(update={"width_steps": dict(steps)})


class _Recorder(Context):
    """A Context that notes the widths a space asks for (their `channels`)."""

    _requested: set[int] = PrivateAttr(default_factory=set)

    def width(self, channels: int, divisor: int = 4) -> int:
        self._requested.add(channels)
        return super().width(channels, divisor)


@overload
def register_space(fn: S, /) -> S: ...
@overload
def register_space(name: str | None = None, /) -> Callable[[S], S]: ...
def register_space(fn_or_name: Any = None, /) -> Any:
    """Register a space under the function's name, or under the name given, as timm
    registers models; `load_space(name)` and `SearchConfig(space=name)` then find it:

        @register_space
        def plain(trial, ctx): ...

        @register_space("plain_wide")
        def plain_with_wider_stages(trial, ctx): ...

    A name is taken once; a second space under it is refused, as torchvision refuses a
    second model:

        >>> from nasgraph.search.space import register_space
        >>> @register_space("residual")
        ... def my_resnet(trial, ctx):
        ...     ...
        Traceback (most recent call last):
        nasgraph.errors.SpaceError: search space 'residual' is already registered \
(nasgraph.search.spaces.residual.residual); hint: @register_space("another_name")
    """
    if callable(fn_or_name):
        return _register(fn_or_name.__name__, fn_or_name)
    return lambda fn: _register(fn_or_name or fn.__name__, fn)


def _register(name: str, fn: S) -> S:
    _register_builtins()  # first, so that a space of the user's cannot take a built-in's name
    if name in _SPACES:
        other = _SPACES[name]
        raise SpaceError(f"search space {name!r} is already registered "
                         f"({other.__module__}.{other.__qualname__}); hint: "
                         '@register_space("another_name")')
    _SPACES[name] = fn
    return fn


def space_names() -> list[str]:
    """The registered spaces' names, sorted: the built-in ones and any registered since.

        >>> {"inception", "residual", "dense", "macro"} <= set(space_names())
        True
    """
    _register_builtins()
    return sorted(_SPACES)


def get_space(name: str) -> Space:
    """The space registered as `name`."""
    _register_builtins()
    if name not in _SPACES:
        raise SpaceError(f"unknown search space {name!r}; hint: one of "
                         f"{', '.join(space_names())}, or path/to/file.py:function")
    return _SPACES[name]


def _register_builtins() -> None:
    # on the first look-up, not when this module is imported: the built-in spaces import
    # this module (Context, register_space); once they are imported this is a dict look-up
    importlib.import_module("nasgraph.search.spaces")


def load_space(spec: str) -> Space:
    """A registered space by name (`residual`, see `space_names()`) or a function of a Python
    file, `path/to/file.py:function` (the function defaults to `space`)."""
    path_text, colon, func = spec.rpartition(":")
    if not colon or not func.isidentifier():  # no function named (or a drive letter)
        path_text, func = spec, ""
    if not path_text.endswith(".py") and "/" not in path_text:
        space = get_space(path_text)
        if func:
            raise SpaceError(f"search space {spec!r}: a registered space is named alone; "
                             f"hint: {path_text!r}, or path/to/file.py:{func}")
        return space
    path = Path(path_text)
    if not path.is_file():
        raise SpaceError(f"search space {spec!r}: {path} is not a file")
    module_name = f"nasgraph_space_{path.stem}_{abs(hash(str(path.resolve())))}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise SpaceError(f"search space {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise SpaceError(f"search space {spec!r}: importing {path} failed: "
                             f"{type(e).__name__}: {e}") from None
        sys.modules[module_name] = module
    func = func or "space"
    fn = getattr(module, func, None)
    if not callable(fn):
        raise SpaceError(f"search space {spec!r}: {path} has no function {func!r}")
    return fn


def build(space: Space, trial: Any, ctx: Context) -> Graph:
    """Call the space, checking that it returns a Graph."""
    graph = space(trial, ctx)
    if not isinstance(graph, Graph):
        raise SpaceError(f"search space returned {type(graph).__name__}, not a Graph")
    return graph


# Cheaper builds of one candidate, each cutting more than the one before: (least stem
# stride, depth multiplier). A stride-2 stem quarters the MACs of everything after it,
# which is what starves a candidate at full resolution (a 3x3 conv of 8 channels on 28x28
# is 0.45M MACs); fewer blocks then cut a stage at a time; a stride-4 stem only on large
# images (Context.stem_strides).
RUNGS = ((1, 1.0), (2, 1.0), (2, 0.5), (2, 0.25), (4, 0.25))


def fit_to_budget(space: Space, trial: Any, ctx: Context, min_multiplier: float = 0.25,
                  steps: int = 12) -> tuple[Graph, Costs, float, bool]:
    """Build the candidate; when over budget, make it cheaper until it fits, trading
    resolution and depth as well as width, as EfficientNet's compound scaling does.

    Returns (graph, costs, width multiplier, feasible). The rule: climb `RUNGS` (the
    candidate built with a stem that downsamples more, `ctx.stem_stride`, then with fewer
    blocks per stage, `ctx.depth`) and stop at the first rung where the candidate fits with
    every width at least `min_multiplier` of what the trial asked for; there, narrow all
    widths by one multiplier, the largest that fits (a bisection on a log scale). Only when
    no rung allows that does the last one narrow further, down to `ctx.min_width`. So a
    trial keeps its resolution and depth while a quarter of its widths fit, and is not
    shrunk to a few channels at full resolution when a coarser or shallower version of it
    can stay reasonably wide.

    Rounding makes one multiplier coarse (at 5 channels, one step of 4 is most of the
    width), so it may leave much of the budget unused; `_grow_widths` then widens single
    widths again, the narrowest relative to what the trial asked for first, while the
    candidate fits. Rebuilding is cheap (a trial returns the same value when a space asks
    for a parameter again): fitting a candidate builds it 10 to 40 times, in 0.05 to 0.5 s
    on 28x28 (benchmarks/space_fit.py). When even the cheapest build is over budget, the
    candidate is infeasible and the graph as the trial asked for it is returned.
    """
    recorder = _Recorder(**ctx.model_dump())  # notes the widths asked for, for the growth
    graph = build(space, trial, recorder)
    costs = ctx.budget.costs(graph)
    if ctx.budget.fits(costs):
        return graph, costs, 1.0, True
    for rung, full in _rungs(space, trial, ctx):
        if fitted := _narrow(space, trial, rung, full, min_multiplier, steps):
            break
    else:  # the last rung, narrower still
        fitted = _narrow(space, trial, rung, full, 1 / 64, steps)
    if fitted is None:
        return graph, costs, 1.0, False
    graph, costs = fitted.graph, fitted.costs
    if fitted.multiplier < 1:
        graph, costs = _grow_widths(space, trial, fitted.ctx, graph, costs, recorder._requested)
    return graph, costs, fitted.multiplier, True


def _rungs(space: Space, trial: Any, ctx: Context) -> Iterator[tuple[Context, Graph]]:
    """The contexts of `RUNGS` (never less cut than `ctx` asks) and the candidate built at
    each, at full width; a rung that builds what an earlier one built is skipped (an input
    too small for a coarser stem, a candidate of one block per stage, a space of its own
    that does not ask `ctx.depth` or `ctx.stem_stride`)."""
    built: list[Graph] = []
    for stride, depth in RUNGS:
        rung = ctx.model_copy(update={"min_stem_stride": max(stride, ctx.min_stem_stride),
                                      "depth_multiplier": min(depth, ctx.depth_multiplier)})
        full = build(space, trial, rung)
        if full not in built:
            built.append(full)
            yield rung, full


class _Fitted(NamedTuple):
    ctx: Context
    multiplier: float
    graph: Graph
    costs: Costs


def _narrow(space: Space, trial: Any, ctx: Context, full: Graph, lowest: float, steps: int
            ) -> _Fitted | None:
    """The candidate at the largest width multiplier in [lowest, 1] that fits (rounded to 4
    digits, as recorded); None when even `lowest` is over budget. `full` is the candidate
    at multiplier 1."""
    def at(m: float) -> _Fitted:
        narrower = ctx.with_multiplier(m)
        graph = full if m == 1 else build(space, trial, narrower)
        return _Fitted(narrower, m, graph, ctx.budget.costs(graph))

    best = at(1.0)
    if ctx.budget.fits(best.costs):
        return best
    best = at(lowest)
    if not ctx.budget.fits(best.costs):
        return None
    lo, hi = math.log2(lowest), 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = at(round(2.0 ** mid, 4))
        if ctx.budget.fits(candidate.costs):
            lo, best = mid, candidate
        else:
            hi = mid
        if hi - lo < 0.02:
            break
    return best


def _grow_widths(space: Space, trial: Any, ctx: Context, graph: Graph, costs: Costs,
                 requested: set[int]) -> tuple[Graph, Costs]:
    """Widen the widths of a fitted candidate one `divisor` step at a time while it fits.

    Each round tries the requested widths in order of how far they were narrowed (width
    given / width requested, smallest first) and keeps the first step that fits. Costs only
    grow with widths, so a step that does not fit never will: that width is done.
    """
    steps: dict[int, int] = {}
    open_widths = set(requested)
    while open_widths:
        current = ctx.with_steps(steps)
        for channels in sorted(open_widths, key=lambda c: (current.width(c) / c, c)):
            wider = {**steps, channels: steps.get(channels, 0) + 1}
            g = build(space, trial, ctx.with_steps(wider))
            c = ctx.budget.costs(g) if g != graph else None
            if c is not None and ctx.budget.fits(c):
                steps, graph, costs = wider, g, c
                break
            open_widths.discard(channels)  # at its requested width, or over budget
        else:
            break
    return graph, costs
