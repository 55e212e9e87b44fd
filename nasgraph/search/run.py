"""A search: an Optuna study over a space, each candidate fitted to the budget, trained and
scored on the validation split; then the best retrained from scratch and tested.

    >>> from nasgraph.search.run import SearchConfig, search
    >>> result = search(SearchConfig(space="residual", budget_macs=200_000, trials=30,
    ...                              epochs=10))  # doctest: +SKIP

The same configuration run again resumes its study: finished trials are kept, trials that
were interrupted are failed and queued again.

The modules of `nasgraph.search` import each other as a DAG, this one at the top:
budget, space -> runs -> config -> storage (retrying_storage), strategies -> study ->
evaluation (interrupts) -> rebuild, workers -> report -> run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel

from nasgraph.search.config import SearchConfig
from nasgraph.search.evaluation import make_objective, prepare
from nasgraph.search.rebuild import restore_graphs
from nasgraph.search.report import Progress, write_report
from nasgraph.search.study import finished, open_study
from nasgraph.search.workers import run_trials, run_workers

__all__ = ["SearchConfig", "SearchResult", "open_study", "search"]


class SearchResult(BaseModel):
    """What a search leaves, besides its folder."""

    study: str
    study_dir: str
    trials: int  # finished (complete or pruned) trials in the study
    feasible_fraction: float  # of the candidates sampled, those within budget
    shrunk_fraction: float  # of the feasible candidates, those whose widths were shrunk
    interrupted: bool
    best: dict[str, Any] | None  # best/result.json


def search(cfg: SearchConfig, callbacks: list[Callable] | None = None,
           on_start: Callable[[optuna.Study, int], None] | None = None,
           progress: Progress | None = None) -> SearchResult:
    """Run (or resume) the search `cfg`; write the leaderboard, the best model and plots.

    `callbacks` go to `study.optimize`; `on_start(study, remaining)` is called once the
    study is open; `progress(phase, done, total)` follows the final retraining epoch by
    epoch. Ctrl-C stops after the current epoch: the interrupted trial is failed and queued
    again, and the results so far are written; during the final retraining, the
    retrainings finished so far are kept. With `cfg.workers` > 1, that many processes run
    the trials (workers.py) and this one writes the report.
    """
    setup = prepare(cfg)
    study = setup.study
    remaining = cfg.trials - len(finished(study))
    if on_start is not None:
        on_start(study, max(0, remaining))
    interrupted = False
    if remaining > 0:
        try:
            if cfg.workers > 1:
                run_workers(cfg, study, callbacks)
            else:
                run_trials(study, make_objective(setup), cfg.trials, cfg.timeout, callbacks)
        except KeyboardInterrupt:
            interrupted = True
    restore_graphs(study, cfg.folder, setup.space, setup.ctx)  # of trials run elsewhere
    best = write_report(cfg, study, setup.data, setup.device, final=not interrupted,
                        progress=progress)
    interrupted = interrupted or bool(best and best.get("interrupted"))
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
              or (t.state == TrialState.PRUNED and "feasible" in t.user_attrs)]
    feasible = [t for t in trials if t.user_attrs.get("feasible")]
    shrunk = [t for t in feasible if t.user_attrs.get("width_multiplier", 1.0) < 1.0]
    return SearchResult(study=cfg.study_name, study_dir=str(cfg.study_dir),
                        trials=len(finished(study)),
                        feasible_fraction=len(feasible) / max(1, len(trials)),
                        shrunk_fraction=len(shrunk) / max(1, len(feasible)),
                        interrupted=interrupted, best=best)
