"""Rebuilding the trials another machine ran: their files are on that machine, their record
in the database.

A worker writes a trial's graph and weights to its own `runs/<study>/trials/` folder. The
machine that writes the report rebuilds what it lacks from the database: the graph from the
trial's parameters, fitted to the budget again (a space is a pure function of the trial), and, for
the best trial only, the weights by training that graph again with the trial's seed.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from nasgraph.ir import Graph
from nasgraph.search.runs import StudyFolder
from nasgraph.search.space import Context, Space, fit_to_budget


def restore_graphs(study: optuna.Study, folder: StudyFolder, space: Space, ctx: Context) -> int:
    """Write `graph.json` for every trained trial whose folder lacks it; returns how many."""
    restored = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        path = folder.trial_file(t.number, "graph.json")
        if path.is_file() or not t.user_attrs.get("feasible"):
            continue
        folder.write(path, rebuild(t, space, ctx).to_json())
        restored += 1
    return restored


def rebuild(t: FrozenTrial, space: Space, ctx: Context) -> Graph:
    """The graph trial `t` trained: its parameters, fitted to the budget the same way."""
    return fit_to_budget(space, optuna.trial.FixedTrial(t.params, t.number), ctx)[0]
