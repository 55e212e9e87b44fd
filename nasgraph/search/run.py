"""A search: an Optuna study over a space, each candidate fitted to the budget, trained and
scored on the validation split; then the best retrained from scratch and tested.

    >>> from nasgraph.search.run import SearchConfig, search
    >>> result = search(SearchConfig(space="residual", budget_macs=200_000, trials=30,
    ...                              epochs=10))  # doctest: +SKIP

The same configuration run again resumes its study: finished trials are kept, trials that
were interrupted are failed and queued again.

The modules of `nasgraph.search` import each other as a DAG, this one at the top:
budget, space, proxies -> runs -> config -> storage (retrying_storage), strategies,
schedule -> study -> evaluation (interrupts) -> screening, rebuild, workers -> report -> run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from pydantic import BaseModel

from nasgraph.data import Dataset
from nasgraph.search.config import SearchConfig, trial_timeout
from nasgraph.search.evaluation import (
    Progress,
    calibrate_latency,
    make_objective,
    prepare,
)
from nasgraph.search.final import parallel_seeds
from nasgraph.search.interrupts import ctrl_c_at_stop_points
from nasgraph.search.rebuild import restore_graphs
from nasgraph.search.report import ranked, write_report
from nasgraph.search.schedule import Schedule, Trained, level_and_fastest
from nasgraph.search.screening import screen
from nasgraph.search.study import finished, open_study
from nasgraph.search.workers import run_trials, run_workers

__all__ = ["SearchConfig", "SearchResult", "open_study", "search"]


def trained_trials(study: optuna.Study) -> list[Trained]:
    """The complete, feasible trials that recorded their training time, best first: those
    a timed search picks its final network from (`level_and_fastest`)."""
    return [Trained(t.number, t.values[0], t.user_attrs["train_seconds"])
            for t in ranked(study) if t.state == TrialState.COMPLETE
            and t.user_attrs.get("feasible") and "train_seconds" in t.user_attrs]


def planned_final(cfg: SearchConfig, schedule: Schedule, study: optuna.Study,
                  data: Dataset, device: torch.device) -> tuple[SearchConfig, int | None]:
    """The trial to retrain (`level_and_fastest`) and `cfg` with the final retraining's
    seeds and epochs fitted to the time left at that trial's seconds per epoch, with the
    seeds that train at once (`final.py`); no trial when none was trained."""
    trained = trained_trials(study)
    if not trained:
        return cfg, None
    pick = level_and_fastest(trained, val_images=len(data.val))
    seconds = next(t.train_seconds for t in trained if t.number == pick)
    plan = schedule.final_plan(
        now=time.time(), seconds_per_epoch=seconds / cfg.epochs,
        seeds=cfg.final_seeds, train_images=len(data.train),
        final_images=len(data.train) + len(data.val),
        parallel=parallel_seeds(cfg, device))
    return cfg.model_copy(update={"final_seeds": plan.seeds,
                                  "final_epochs": plan.epochs or None}), pick


class SearchResult(BaseModel):
    """What a search leaves, besides its folder."""

    study: str
    study_dir: str
    trials: int  # finished (complete or pruned) trials in the study
    feasible_fraction: float  # of the candidates sampled, those within budget
    shrunk_fraction: float  # of the feasible candidates, those made cheaper to fit
    interrupted: bool
    best: dict[str, Any] | None  # best/result.json
    seconds: dict[str, float]  # where the time went, phase by phase


class Clock:
    """Seconds spent per phase."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(self.laps.get(phase, 0.0) + now - self._last, 1)
        self._last = now


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
    schedule = Schedule(cfg.time_budget, time.time(), cfg.final_share) if cfg.time_budget \
        else None
    if schedule is not None:
        cfg = cfg.model_copy(update={"trials_until": schedule.trials_end,
                                     "final_until": schedule.final_end})
    clock = Clock()
    setup = prepare(cfg)
    study = setup.study
    remaining = cfg.trials - len(finished(study))
    if remaining > 0:
        calibrate_latency(setup)
    if on_start is not None:
        on_start(study, max(0, remaining))
    clock.lap("setup")
    interrupted = False
    if remaining > 0:
        try:
            with ctrl_c_at_stop_points():
                screen(setup, progress)
            clock.lap("screening")
            if cfg.workers > 1:
                run_workers(cfg, study, callbacks)
            else:
                run_trials(study, make_objective(setup, progress), cfg.trials,
                           trial_timeout(cfg), callbacks)
        except KeyboardInterrupt:
            interrupted = True
    clock.lap("trials")
    restore_graphs(study, cfg.folder, setup.space, setup.ctx)  # of trials run elsewhere
    pick = None  # the best by validation accuracy
    if schedule is not None:
        cfg, pick = planned_final(cfg, schedule, study, setup.data, setup.device)
    best = write_report(cfg, study, setup.data, setup.device, final=not interrupted,
                        progress=progress, pick=pick)
    clock.lap("report and final retraining")
    interrupted = interrupted or bool(best and best.get("interrupted"))
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
              or (t.state == TrialState.PRUNED and "feasible" in t.user_attrs)]
    feasible = [t for t in trials if t.user_attrs.get("feasible")]
    shrunk = [t for t in feasible if t.user_attrs.get(
        "fitted", t.user_attrs.get("width_multiplier", 1.0) < 1.0)]  # older trials: widths
    return SearchResult(study=cfg.study_name, study_dir=str(cfg.study_dir),
                        trials=len(finished(study)),
                        feasible_fraction=len(feasible) / max(1, len(trials)),
                        shrunk_fraction=len(shrunk) / max(1, len(feasible)),
                        interrupted=interrupted, best=best, seconds=clock.laps)
