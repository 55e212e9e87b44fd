"""Budgets: the most MACs, parameters, activation memory and latency a candidate may have.

    >>> from nasgraph.search.budget import Budget, parse_amount
    >>> parse_amount("300k"), parse_amount("1.2G"), parse_amount("5M")
    (300000, 1200000000, 5000000)
    >>> Budget(macs=parse_amount("200k")).describe()
    'MACs <= 200k'

A budget is checked on the graph, before any training: costs come from
`nasgraph.analysis`, so checking one is a matter of milliseconds. A latency bound
(`latency_ms`, on `latency_target` such as "numba:1", a target and its threads) is predicted
by that target's latency model (`nasgraph.latency.model`): milliseconds once the model's
table holds the candidate's kernels, a profile of the candidate when it does not.
"""

from __future__ import annotations

import functools
import math
import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from nasgraph import analysis
from nasgraph.errors import BudgetError
from nasgraph.ir import Graph
from nasgraph.units import si

if TYPE_CHECKING:
    from nasgraph.latency.model import LatencyModel

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
MAX_AMOUNT = 10**15  # larger is a typo, and 1e999 is infinite


def parse_amount(text: str | int | float, what: str = "--budget") -> int:
    """'300k' -> 300000, '1.2G' -> 1200000000; suffixes k, M, G, T (any case)."""
    if isinstance(text, int | float):
        amount = float(text)
    elif m := re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgGtT]?)i?[bB]?\s*",
                           text):
        amount = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    else:
        amount = math.nan
    if not 1 <= amount <= MAX_AMOUNT:  # also false for NaN
        raise BudgetError(f"{what} {text!r}: expected a positive amount up to 1P, such as 300k, "
                          "5M or 1.2G")
    return round(amount)


_SECONDS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str | float, what: str = "--time-budget") -> float:
    """'30m' -> 1800.0, '90s' -> 90.0, '1.5h' -> 5400.0, '600' -> 600.0 (seconds); from
    one second to a year."""
    if isinstance(text, int | float):
        seconds = float(text)
    elif m := re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|)\s*", text.lower()):
        seconds = float(m.group(1)) * _SECONDS[m.group(2)]
    else:
        seconds = math.nan
    if not 1 <= seconds <= 366 * 86400:  # also false for NaN
        raise BudgetError(f"{what} {text!r}: expected a duration such as 90s, 30m or 1.5h")
    return seconds


_TIME_UNITS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}


def parse_latency(text: str | float, what: str = "--max-latency") -> float:
    """'2ms' -> 2.0, '800us' -> 0.8, '1.5s' -> 1500.0 (milliseconds); a bare number is ms."""
    if isinstance(text, int | float):
        ms = float(text)
    elif m := re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s|)\s*", text.lower()):
        ms = float(m.group(1)) * _TIME_UNITS[m.group(2) or "ms"]
    else:
        ms = math.nan
    if not 1e-3 <= ms <= 3.6e6:  # also false for NaN
        raise BudgetError(f"{what} {text!r}: expected a latency such as 800us, 2ms or 1.5s")
    return ms


def parse_target(text: str, what: str = "--latency-target") -> str:
    """'numba:1' (target, threads) as given, once checked; 'numba' is 'numba:1'."""
    from nasgraph.latency.targets import TARGET_NAMES

    name, _, threads = text.strip().partition(":")
    if name not in TARGET_NAMES or not (threads or "1").isdigit() or int(threads or 1) < 1:
        raise BudgetError(f"{what} {text!r}: expected TARGET[:THREADS], TARGET one of "
                          f"{', '.join(TARGET_NAMES)}")
    return f"{name}:{int(threads or 1)}"


@functools.cache
def latency_model(spec: str) -> LatencyModel:
    """The latency model of target `spec` ('numba:1'), one per process: its table of
    measured kernels grows as the search goes and is kept in the user's cache."""
    from nasgraph.latency.model import LatencyModel

    name, _, threads = spec.partition(":")
    return LatencyModel(name, int(threads or 1))


class Costs(BaseModel):
    """The budgeted figures of one graph."""

    model_config = ConfigDict(frozen=True)

    macs: int
    params: int
    memory: int  # peak activation bytes per sample
    latency_ms: float | None = None  # predicted at batch 1, when a budget or objective asks
    # the prediction plus the model's worst under-prediction on its calibration graphs
    # (`Prediction.upper_ms`): what a latency budget is checked against
    latency_upper_ms: float | None = None

    @classmethod
    def of(cls, graph: Graph, latency_target: str | None = None) -> Costs:
        p = latency_model(latency_target).predict(graph) if latency_target else None
        return cls(macs=analysis.macs(graph), params=analysis.params(graph),
                   memory=analysis.peak_memory_bytes(graph),
                   latency_ms=p.total_ms if p else None,
                   latency_upper_ms=p.upper_ms if p else None)

    def bounded(self, name: str) -> float:
        """The figure a bound `name` is checked against: the latency's upper estimate (the
        prediction where there is none), the others as they are."""
        if name == "latency_ms" and self.latency_upper_ms is not None:
            return self.latency_upper_ms
        return getattr(self, name)


class Budget(BaseModel):
    """Upper bounds; None means unbounded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    macs: int | None = Field(default=None, gt=0)
    params: int | None = Field(default=None, gt=0)
    memory: int | None = Field(default=None, gt=0)
    latency_ms: float | None = Field(default=None, gt=0)
    latency_target: str = "numba:1"  # where latency_ms is predicted: target:threads

    def costs(self, graph: Graph) -> Costs:
        """The costs of `graph` this budget bounds (its latency only when bounded)."""
        return Costs.of(graph, self.latency_target if self.latency_ms else None)

    def excess(self, costs: Costs) -> dict[str, float]:
        """The relative excess over each bound, <= 0 when met (Optuna's constraint
        convention: feasible iff every value is <= 0)."""
        return {k: (costs.bounded(k) - limit) / limit for k, limit in self._limits()}

    def violations(self, costs: Costs) -> list[float]:
        return list(self.excess(costs).values())

    def fits(self, costs: Costs) -> bool:
        return all(v <= 0 for v in self.violations(costs))

    def check(self, graph: Graph) -> Costs:
        """The costs of `graph`; raises BudgetError naming the first bound it exceeds."""
        costs = self.costs(graph)
        for name, limit in self._limits():
            if costs.bounded(name) > limit:
                raise BudgetError(f"graph {graph.name!r}: {name} {si(costs.bounded(name))}"
                                  f" over the budget of {si(limit)}")
        return costs

    def describe(self) -> str:
        names = {"macs": "MACs", "params": "params", "memory": "memory (B)",
                 "latency_ms": f"latency (ms, {self.latency_target})"}
        return ", ".join(f"{names[k]} <= {si(v)}" for k, v in self._limits()) or "none"

    def _limits(self) -> list[tuple[str, float]]:
        return [(k, v) for k in ("macs", "params", "memory", "latency_ms")
                if (v := getattr(self, k))]
