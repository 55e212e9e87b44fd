"""The hand designs of benchmarks/search_quality.py fit their MAC budget without wasting it,
and run; the best-so-far curve keeps only improvements."""

import pytest
import torch

from benchmarks.search_quality import HAND, curve, fitted
from nasgraph import analysis
from nasgraph.backends.torch import lower


@pytest.mark.parametrize("name", sorted(HAND))
@pytest.mark.parametrize(("shape", "budget"), [((1, 8, 8), 200_000),
                                               ((1, 28, 28), 1_000_000)])
def test_hand_design_fits_budget(name: str, shape: tuple[int, int, int], budget: int) -> None:
    graph, m = fitted(HAND[name], shape, 10, budget)
    assert 0.75 * budget <= analysis.macs(graph) <= budget
    assert analysis.macs(HAND[name](shape, 10, 1.2 * m)) > budget
    assert lower(graph).eval()(torch.zeros(2, *shape)).shape == (2, 10)


def test_curve_is_the_running_best_of_complete_trials() -> None:
    events = [[5.0, "complete", 0.8], [1.0, "complete", 0.9], [3.0, "pruned", None],
              [7.0, "complete", 0.95]]
    assert curve(events) == [(1.0, 0.9), (7.0, 0.95)]
