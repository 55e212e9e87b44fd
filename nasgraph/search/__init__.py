"""Architecture search with Optuna: spaces, budgets, studies, runs. The only part of nasgraph
that imports optuna."""

from nasgraph.search.budget import Budget, Costs, parse_amount
from nasgraph.search.space import Context, builtin_spaces, fit_to_budget, load_space

__all__ = ["Budget", "Context", "Costs", "builtin_spaces", "fit_to_budget", "load_space",
           "parse_amount"]
