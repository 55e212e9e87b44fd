"""A search: an Optuna study over a space, each candidate fitted to the budget, trained and
scored on the validation split; then the best retrained from scratch and tested.

    >>> from nasgraph.search.run import SearchConfig, search
    >>> result = search(SearchConfig(space="residual", budget_macs=200_000, trials=30,
    ...                              epochs=10))  # doctest: +SKIP

The same configuration run again resumes its study: finished trials are kept, trials that
were interrupted are failed and queued again.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nasgraph import ir
from nasgraph.data import Dataset, load_dataset
from nasgraph.errors import NasgraphError
from nasgraph.files import write_atomic
from nasgraph.search.budget import Budget, Costs
from nasgraph.search.remote import restore_graphs
from nasgraph.search.space import Context, Space, fit_to_budget, load_space
from nasgraph.search.storage import open_storage
from nasgraph.search.workers import (
    devices_of,
    run_trials,
    run_workers,
    sampler_seed,
    stop_point,
)
from nasgraph.train import Recipe, resolve_device, train

Objective = Literal["accuracy", "accuracy,macs"]
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
# A study name is a folder of the runs folder: no separators, no leading dot, so never `..`
STUDY_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$"
# What a trial's score and the final result depend on: a resumed study must not change them
RESUME_SETTINGS = ("space", "dataset", "budget_macs", "max_params", "max_memory", "epochs",
                   "final_epochs", "objective", "seed", "recipe")


class SearchConfig(BaseModel):
    """Everything that defines a search (the CLI's options)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    space: str = "residual"
    dataset: str = "digits"
    budget_macs: int | None = None
    max_params: int | None = None
    max_memory: int | None = None
    trials: int = Field(default=30, gt=0)
    timeout: float | None = Field(default=None, gt=0)
    epochs: int = Field(default=10, gt=0)
    final_epochs: int | None = Field(default=None, gt=0)  # default: 3 x epochs
    final_seeds: int = Field(default=3, ge=0)
    top_k: int = Field(default=5, gt=0)  # trials tested on the test split
    study: str | None = None  # default: <space>-<dataset>
    storage: str | None = None  # default: sqlite in runs/<study>/
    runs_dir: str = "runs"
    objective: Objective = "accuracy"
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = 0
    device: str = "auto"  # or a list, cuda:0,cuda:1, that workers take in turn
    workers: int = Field(default=1, ge=1)  # local worker processes
    recipe: Recipe = Recipe()

    @field_validator("study")
    @classmethod
    def _folder_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(STUDY_NAME, name):
            raise ValueError(f"{name!r} is not a study name: letters, digits, '_', '-' and "
                             "'.', at most 100, not starting with '.' (it names a folder of "
                             "the runs folder)")
        return name

    @property
    def budget(self) -> Budget:
        return Budget(macs=self.budget_macs, params=self.max_params, memory=self.max_memory)

    @property
    def study_name(self) -> str:
        """`--study`, or `<space>-<dataset>`: `residual-digits`, `myspaces-wide-cifar10` for
        the function `wide` of myspaces.py (another function of the file, another study)."""
        if self.study:
            return self.study
        path, _, function = self.space.rpartition(":") if ".py:" in self.space else (
            self.space, "", "")
        parts = [Path(path).stem, function if function != "space" else "",
                 self.dataset.partition(":")[0]]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(p for p in parts if p)).lstrip(".")

    @property
    def final_training_epochs(self) -> int:
        return self.final_epochs or 3 * self.epochs

    @property
    def study_dir(self) -> Path:
        return Path(self.runs_dir) / self.study_name

    @property
    def multi_objective(self) -> bool:
        return self.objective == "accuracy,macs"


class SearchResult(BaseModel):
    """What a search leaves, besides its folder."""

    study: str
    study_dir: str
    trials: int  # finished (complete or pruned) trials in the study
    feasible_fraction: float  # of the candidates sampled, those within budget
    shrunk_fraction: float  # of the feasible candidates, those whose widths were shrunk
    interrupted: bool
    best: dict[str, Any] | None  # best/result.json


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / f"{number:04d}"


def _quiet_experimental(fn: Callable) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return fn(*args, **kwargs)
    return wrapper


@_quiet_experimental
def make_sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, cfg.trials // 4)),
                                             seed=cfg.seed)
    return optuna.samplers.TPESampler(
        n_startup_trials=max(3, min(10, cfg.trials // 3)), seed=cfg.seed, multivariate=True,
        group=True)


def make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    # All candidates share one learning-rate schedule, so accuracies after the same epoch
    # compare fairly; the first third of the epochs are too noisy to judge.
    if cfg.multi_objective:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, cfg.epochs // 3))


def open_study(cfg: SearchConfig, create: bool = True) -> optuna.Study:
    storage = open_storage(cfg.storage, cfg.study_dir)
    if not create:
        try:
            return optuna.load_study(study_name=cfg.study_name, storage=storage)
        except KeyError:
            raise NasgraphError(f"no study {cfg.study_name!r} in {cfg.storage or cfg.study_dir}"
                                "; hint: `nasgraph search` creates it") from None
    directions = ["maximize", "minimize"] if cfg.multi_objective else ["maximize"]
    try:
        study = optuna.create_study(study_name=cfg.study_name, storage=storage,
                                    sampler=make_sampler(cfg), pruner=make_pruner(cfg),
                                    directions=directions, load_if_exists=True)
    except ValueError as e:
        raise NasgraphError(f"study {cfg.study_name!r}: {e}; hint: another --study name"
                            ) from None
    if [d.name.lower() for d in study.directions] != directions:
        raise NasgraphError(f"study {cfg.study_name!r} was created with another --objective; "
                            "hint: another --study name")
    if "config" in study.user_attrs:
        check_resumable(cfg, study.user_attrs["config"])
    else:
        study.set_user_attr("config", settings_of(cfg))
    return study


def settings_of(cfg: SearchConfig) -> dict[str, Any]:
    """The configuration a study is stored with (its default final epochs resolved)."""
    return {**cfg.model_dump(mode="json"), "final_epochs": cfg.final_training_epochs}


def check_resumable(cfg: SearchConfig, stored: dict[str, Any]) -> None:
    """Refuse to resume a study under settings that would mix incomparable trials."""
    current = settings_of(cfg)
    if stored.get("final_epochs") is None and "epochs" in stored:  # stored before 0.2
        stored = {**stored, "final_epochs": 3 * stored["epochs"]}
    for key in RESUME_SETTINGS:
        if key in stored and stored[key] != current[key]:
            option = f"--{key.replace('_', '-')}".replace("--budget-macs", "--budget")
            raise NasgraphError(
                f"study {cfg.study_name!r} was run with {option} {_shown(stored[key])}, not "
                f"{_shown(current[key])}; hint: the same settings resume it, another --study "
                "starts a new one")


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)


def make_objective(cfg: SearchConfig, space: Space, ctx: Context, data: Dataset,
                   device: torch.device) -> Callable[[optuna.Trial], Any]:
    """The function Optuna calls: fit to budget, save the graph, train, save the weights."""

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        start = time.perf_counter()
        graph, costs, multiplier, feasible = fit_to_budget(space, trial, ctx)
        folder = trial_dir(cfg.study_dir, trial.number)
        write_atomic(folder / "graph.json", graph.to_json())
        trial.set_user_attr("macs", costs.macs)
        trial.set_user_attr("params", costs.params)
        trial.set_user_attr("memory", costs.memory)
        trial.set_user_attr("width_multiplier", multiplier)
        trial.set_user_attr("feasible", feasible)
        for name, excess in cfg.budget.excess(costs).items():
            trial.set_constraint(name, excess)  # feasible iff <= 0; samplers learn from it
        trial.set_user_attr("check_seconds", round(time.perf_counter() - start, 4))
        if not feasible:  # never trained: recorded so that the sampler learns the boundary
            return (0.0, float(costs.macs)) if cfg.multi_objective else 0.0

        def report(epoch: int, acc: float) -> None:
            stop_point()  # Ctrl-C stops here, between epochs
            if cfg.multi_objective:
                return
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {acc:.4f} after epoch {epoch}")

        result = train(graph, data, cfg.recipe, epochs=cfg.epochs, device=device,
                       seed=cfg.seed * 100_003 + trial.number, on_epoch=report)
        torch.save(result.model.state_dict(), folder / "weights.pt")
        trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 2))
        acc = result.val_accuracy
        return (acc, float(costs.macs)) if cfg.multi_objective else acc

    return objective


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in DONE]


def search(cfg: SearchConfig, callbacks: list[Callable] | None = None,
           on_start: Callable[[optuna.Study, int], None] | None = None,
           progress: Callable[[str, int, int], None] | None = None) -> SearchResult:
    """Run (or resume) the search `cfg`; write the leaderboard, the best model and plots.

    `callbacks` go to `study.optimize`; `on_start(study, remaining)` is called once the
    study is open; `progress(phase, done, total)` follows the final retraining epoch by
    epoch. Ctrl-C stops after the current epoch: the interrupted trial is failed and queued
    again, and the results so far are written; during the final retraining, the
    retrainings finished so far are kept. With `cfg.workers` > 1, that many processes run
    the trials (workers.py) and this one writes the report.
    """
    from nasgraph.search.report import write_report

    space, ctx, data, device, study = _prepare(cfg)
    remaining = cfg.trials - len(finished(study))
    if on_start is not None:
        on_start(study, max(0, remaining))
    interrupted = False
    if remaining > 0:
        try:
            if cfg.workers > 1:
                run_workers(cfg, study, callbacks)
            else:
                run_trials(study, make_objective(cfg, space, ctx, data, device), cfg.trials,
                           cfg.timeout, callbacks)
        except KeyboardInterrupt:
            interrupted = True
    restore_graphs(study, cfg.study_dir, space, ctx)  # of trials other machines ran
    best = write_report(cfg, study, data, device, final=not interrupted, progress=progress)
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


def _prepare(cfg: SearchConfig) -> tuple[Space, Context, Dataset, torch.device, optuna.Study]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(cfg.space)
    device = resolve_device(devices_of(cfg)[0])
    data = load_dataset(cfg.dataset, seed=cfg.seed)
    ctx = Context(input_shape=data.input_shape, num_classes=data.num_classes,
                  budget=cfg.budget)
    study = open_study(cfg)
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    started = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(cfg.model_copy(update={"seed": sampler_seed(cfg, started)}))
    return space, ctx, data, device, study


def work(cfg: SearchConfig) -> int:
    """Be one worker of the study `cfg`: run its trials until it holds `cfg.trials`
    finished ones, write no report; returns how many this worker finished."""
    space, ctx, data, device, study = _prepare(cfg)
    return run_trials(study, make_objective(cfg, space, ctx, data, device), cfg.trials,
                      cfg.timeout)


def costs_of(trial: optuna.trial.FrozenTrial) -> Costs:
    u = trial.user_attrs
    return Costs(macs=u.get("macs", 0), params=u.get("params", 0), memory=u.get("memory", 0))


def load_graph(study_dir: Path, number: int) -> ir.Graph:
    return ir.load(trial_dir(study_dir, number) / "graph.json")


def dump_json(data: object) -> str:
    return json.dumps(data, indent=1, default=str) + "\n"
