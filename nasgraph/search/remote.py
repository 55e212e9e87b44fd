"""Trials another machine ran: their files are on that machine, their record in the database.

A worker writes a trial's graph and weights to its own `runs/<study>/trials/` folder. The
machine that writes the report rebuilds what it lacks from the database: the graph from the
trial's parameters, fitted to the budget again (a space is a pure function of the trial), and, for
the best trial only, the weights by training that graph again with the trial's seed.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nasgraph.data import Dataset
from nasgraph.files import write_atomic
from nasgraph.ir import Graph
from nasgraph.search.space import Context, Space, fit_to_budget


def restore_graphs(study: optuna.Study, study_dir: Path, space: Space, ctx: Context) -> int:
    """Write `graph.json` for every trained trial whose folder lacks it; returns how many."""
    from nasgraph.search.run import trial_dir

    restored = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        path = trial_dir(study_dir, t.number) / "graph.json"
        if path.is_file() or not t.user_attrs.get("feasible"):
            continue
        write_atomic(path, rebuild(t, space, ctx).to_json())
        restored += 1
    return restored


def rebuild(t: FrozenTrial, space: Space, ctx: Context) -> Graph:
    """The graph trial `t` trained: its parameters, fitted to the budget the same way."""
    return fit_to_budget(space, optuna.trial.FixedTrial(t.params, t.number), ctx)[0]


def retrain(cfg, graph: Graph, data: Dataset, number: int,
            device: torch.device) -> dict[str, torch.Tensor]:
    """Weights of trial `number` trained again here, as its worker trained it."""
    from nasgraph.train import train

    result = train(graph, data, cfg.recipe, epochs=cfg.epochs, device=device,
                   seed=cfg.seed * 100_003 + number)
    return {k: v.cpu() for k, v in result.model.state_dict().items()}
