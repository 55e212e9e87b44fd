"""Search spaces: plain functions `space(trial, ctx) -> Graph`, Optuna's define-by-run idiom.

    >>> import optuna
    >>> from nasgraph.search import Context, load_space
    >>> space = load_space("residual")
    >>> ctx = Context(input_shape=(1, 8, 8), num_classes=10)
    >>> g = space(optuna.trial.FixedTrial({"stages": 2}), ctx)  # doctest: +SKIP

A space names its parameters hierarchically (`stage2.depth`, `stage2.block0.paths`) and
asks `ctx.width(c)` for every channel count, so that the search can shrink a candidate's
widths onto the budget (`fit_to_budget`) instead of discarding it.

Spaces are registered by name with `@register_space`, as timm registers models; the
built-in ones live in `nasgraph.search.spaces`. `load_space` takes a registered name or
`path/to/file.py:function`.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from nasgraph.errors import SpaceError
from nasgraph.ir import Graph
from nasgraph.search.budget import Budget, Costs

Space = Callable[[Any, "Context"], Graph]
S = TypeVar("S", bound=Space)

_SPACES: dict[str, Space] = {}


class Context(BaseModel):
    """What a space knows besides the trial: the data's shape, the classes, the budget and
    how the search narrows widths to fit the budget (a multiplier for all of them, then
    a few steps back up for some)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_shape: tuple[int, int, int] = (1, 8, 8)
    num_classes: int = Field(default=10, gt=1)
    budget: Budget = Budget()
    width_multiplier: float = Field(default=1.0, gt=0)
    # extra `divisor` steps for the widths a space requests as `channels` (key)
    width_steps: dict[int, int] = Field(default_factory=dict)
    min_width: int = Field(default=4, gt=0)

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


def fit_to_budget(space: Space, trial: Any, ctx: Context, steps: int = 12
                  ) -> tuple[Graph, Costs, float, bool]:
    """Build the candidate; when over budget, narrow its widths until it fits.

    Returns (graph, costs, width multiplier, feasible). First one multiplier for every
    width: the largest of the form 2^-k/4 (a bisection on a log scale) whose graph fits.
    Rounding makes that coarse (at 5 channels, one step of 4 is most of the width), so it
    may leave much of the budget unused; `_grow_widths` then widens single widths again, the
    narrowest relative to what the trial asked for first, while the candidate fits.
    Rebuilding is cheap because a trial returns the same value when a space asks for a
    parameter again. When even the narrowest graph (every width at `ctx.min_width`) is over
    budget, the candidate is infeasible and the full-width graph is returned.
    """
    recorder = _Recorder(**ctx.model_dump())  # notes the widths asked for, for the growth
    graph = build(space, trial, recorder)
    costs = Costs.of(graph)
    if ctx.budget.fits(costs):
        return graph, costs, 1.0, True
    low = 1.0 / 64
    g_low = build(space, trial, ctx.with_multiplier(low))
    c_low = Costs.of(g_low)
    if not ctx.budget.fits(c_low):
        return graph, costs, 1.0, False
    lo, hi = math.log2(low), 0.0
    best = (g_low, c_low, low)
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = 2.0 ** mid
        g = build(space, trial, ctx.with_multiplier(m))
        c = Costs.of(g)
        if ctx.budget.fits(c):
            lo, best = mid, (g, c, m)
        else:
            hi = mid
        if hi - lo < 0.02:
            break
    multiplier = round(best[2], 4)
    graph, costs = _grow_widths(space, trial, ctx.with_multiplier(multiplier), *best[:2],
                                recorder._requested)
    return graph, costs, multiplier, True


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
            c = Costs.of(g) if g != graph else None
            if c is not None and ctx.budget.fits(c):
                steps, graph, costs = wider, g, c
                break
            open_widths.discard(channels)  # at its requested width, or over budget
        else:
            break
    return graph, costs
