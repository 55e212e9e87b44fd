"""Architecture search with Optuna: spaces, budgets, studies, runs. The only part of nasgraph
that imports optuna."""

from nasgraph.search.budget import Budget, Costs, parse_amount, parse_duration
from nasgraph.search.space import (
    Context,
    fit_to_budget,
    get_space,
    load_space,
    register_space,
    space_names,
)

__all__ = ["Budget", "Context", "Costs", "fit_to_budget", "get_space", "load_space",
           "parse_amount", "parse_duration", "register_space", "space_names"]
