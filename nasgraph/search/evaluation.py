"""Evaluating candidates: what a search sets up once (space, data, device, study), and the
objective Optuna calls for each trial: fit the candidate to the budget, train it, score it
on the validation split.

    >>> from nasgraph.search.config import SearchConfig
    >>> from nasgraph.search.evaluation import make_objective, prepare
    >>> setup = prepare(SearchConfig(space="residual", budget_macs=200_000))  # doctest: +SKIP
    >>> setup.study.optimize(make_objective(setup), n_trials=1)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from nasgraph.data import Dataset, load_dataset
from nasgraph.ir import Graph
from nasgraph.search.budget import Costs, latency_model
from nasgraph.search.config import SearchConfig, devices_of
from nasgraph.search.interrupts import stop_point
from nasgraph.search.proxies import fitted_candidates
from nasgraph.search.space import Context, Space, build, fit_to_budget, load_space
from nasgraph.search.strategies import rungs
from nasgraph.search.study import open_study
from nasgraph.train import faster_backend, resolve_device, train

# random candidates of the space whose measured latency fits the overheads and gives the
# model's worst under-prediction (`LatencyTable.error`), the margin a latency budget keeps:
# 2 fit the two overheads exactly; 16 average the noise out and show the tail, and digits
# candidates (~30 us) take a few seconds on numba
LATENCY_CALIBRATION_GRAPHS = 16
# each graph's latency: the median of 5 medians of 100 calls, measured in turns; on a VM a
# median of 200 calls in a row of a 40 us graph was seen at 41 us and at 97 us
LATENCY_CALIBRATION_CALLS, LATENCY_CALIBRATION_TURNS = 100, 5

# progress(phase, done, total): what a search is doing, e.g. ("final retraining, seed 2/3",
# 4, 18) after the 4th of 18 epochs
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Setup:
    """What every trial of a search shares."""

    cfg: SearchConfig
    space: Space
    ctx: Context
    data: Dataset
    device: torch.device
    study: optuna.Study


def prepare(cfg: SearchConfig) -> Setup:
    """Load the space and the data, open the study; bad input fails here, before any
    training and before the study folder is made."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(cfg.space)
    device = resolve_device(devices_of(cfg)[0])
    data = load_dataset(cfg.dataset, seed=cfg.seed)
    ctx = Context(input_shape=data.input_shape, num_classes=data.num_classes,
                  budget=cfg.budget)
    study = open_study(cfg)
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    return Setup(cfg, space, ctx, data, device, study)


def calibrate_latency(setup: Setup, unless_calibrated: bool = False) -> int:
    """Fit the per-call and per-kernel overheads of the latency model (`LatencyModel.
    calibrate`), and find its worst under-prediction, on `LATENCY_CALIBRATION_GRAPHS` random
    candidates of this search's space at its input size and MAC budget, when the search
    bounds or minimizes latency: the graphs a budget of tens of microseconds is checked on
    are dominated by those overheads, which a table fitted on larger graphs (or never
    fitted: both 0) gets wrong. The calibrated table is saved, so the workers started next
    read it. Returns the graphs measured (0: none)."""
    cfg = setup.cfg
    if not cfg.uses_latency:
        return 0
    model = latency_model(cfg.latency_target)
    if unless_calibrated and model.table.graphs:
        return 0
    # the candidates fitted to the other bounds only: the latency ones are what is fitted
    ctx = setup.ctx.model_copy(update={"budget": cfg.budget.model_copy(
        update={"latency_ms": None})})
    graphs = [graph for _, graph, _, feasible in fitted_candidates(
        setup.space, ctx, LATENCY_CALIBRATION_GRAPHS, cfg.seed) if feasible]
    if len(graphs) >= 2:  # two overheads: two graphs at least
        # medians of many calls: the worst under-prediction must not be one noisy median
        model.calibrate(graphs, iters=LATENCY_CALIBRATION_CALLS,
                        turns=LATENCY_CALIBRATION_TURNS)
    return len(graphs)


def trial_seed(cfg: SearchConfig, number: int) -> int:
    """The training seed of trial `number`: the same wherever the trial runs."""
    return cfg.seed * 100_003 + number


def backend_for(cfg: SearchConfig, graph: Graph, data: Dataset, device: torch.device) -> str:
    """The trainer of `graph`: `cfg.backend`, or with "auto" the faster on this CPU for this
    graph, measured (`faster_backend`); torch on a GPU."""
    if device.type != "cpu":
        return "torch"
    if cfg.backend != "auto":
        return cfg.backend
    return faster_backend(graph, data, cfg.recipe)[0]


def trained_twin(trial: optuna.Trial, fingerprint: str) -> int | None:
    """The number of a finished trial of the study that trained the architecture with this
    fingerprint (`Graph.fingerprint`), if any: different parameters can build the same
    graph (a width rounded to the same channels, a fitted candidate)."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.user_attrs.get("fingerprint") == fingerprint and other.number != trial.number:
            return other.number
    return None


def make_objective(setup: Setup, progress: Progress | None = None
                   ) -> Callable[[optuna.Trial], Any]:
    """The function Optuna calls: fit to budget, save the graph, train, save the weights;
    `progress(phase, epochs done, epochs)` follows the training epoch by epoch."""
    cfg, folder = setup.cfg, setup.cfg.folder
    judged_at = rungs(cfg)

    def second(costs: Costs) -> float:  # the cost a multi-objective study minimizes
        return float(getattr(costs, cfg.second_objective))

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        start = time.perf_counter()
        graph, costs, multiplier, feasible = fit_to_budget(setup.space, trial, setup.ctx)
        folder.write(folder.trial_file(trial.number, "graph.json"), graph.to_json())
        trial.set_user_attr("macs", costs.macs)
        trial.set_user_attr("params", costs.params)
        trial.set_user_attr("memory", costs.memory)
        trial.set_user_attr("width_multiplier", multiplier)
        trial.set_user_attr("feasible", feasible)
        # made coarser, shallower or narrower to fit (the width multiplier misses the first two)
        trial.set_user_attr("fitted", costs != cfg.budget.costs(
            build(setup.space, trial, setup.ctx)))
        for name, excess in cfg.budget.excess(costs).items():
            trial.set_constraint(name, excess)  # feasible iff <= 0; samplers learn from it
        if cfg.uses_latency:  # predicted on the latency target; a budget predicts it already
            costs = costs if costs.latency_ms is not None else costs.model_copy(
                update={"latency_ms": latency_model(cfg.latency_target).predict(graph).total_ms})
            trial.set_user_attr("latency_ms", round(costs.latency_ms, 6))
        if costs.latency_upper_ms is not None:  # what the budget was checked against
            trial.set_user_attr("latency_upper_ms", round(costs.latency_upper_ms, 6))
        fingerprint = graph.fingerprint()
        trial.set_user_attr("fingerprint", fingerprint)
        trial.set_user_attr("check_seconds", round(time.perf_counter() - start, 4))
        if not feasible:  # never trained: recorded so that the sampler learns the boundary
            return (0.0, second(costs)) if cfg.multi_objective else 0.0
        twin = trained_twin(trial, fingerprint)
        if twin is not None:  # the same architecture under other parameters: train it once
            trial.set_user_attr("duplicate_of", twin)
            raise optuna.TrialPruned(f"the architecture of trial {twin}, trained already")

        def report(epoch: int, acc: float) -> None:
            stop_point()  # Ctrl-C stops here, between epochs
            if progress is not None:
                passed = sum(r <= epoch + 1 for r in judged_at)  # successive halving's rungs
                rung = f", past rung {passed} of {len(judged_at)}" if passed else ""
                progress(f"trial {trial.number}{rung}", epoch + 1, cfg.epochs)
            if cfg.multi_objective:
                return
            trial.report(acc, epoch + 1)  # the step: epochs trained
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {acc:.4f} after epoch {epoch}")
            if cfg.trials_until is not None and time.time() > cfg.trials_until:
                raise optuna.TrialPruned(f"time budget spent after epoch {epoch}")

        backend = backend_for(cfg, graph, setup.data, setup.device)
        trial.set_user_attr("backend", backend)
        result = train(graph, setup.data, cfg.recipe, epochs=cfg.epochs, device=setup.device,
                       seed=trial_seed(cfg, trial.number), on_epoch=report, backend=backend)
        folder.write_weights(folder.trial_file(trial.number, "weights.pt"),
                             result.model.state_dict())
        trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 2))
        acc = result.val_accuracy
        return (acc, second(costs)) if cfg.multi_objective else acc

    return objective


def retrain(cfg: SearchConfig, graph: Graph, data: Dataset, number: int,
            device: torch.device) -> dict[str, torch.Tensor]:
    """Weights of trial `number` trained again here, as its worker trained it (the report
    needs the best's weights when another machine ran it)."""
    result = train(graph, data, cfg.recipe, epochs=cfg.epochs, device=device,
                   seed=trial_seed(cfg, number))
    return {k: v.cpu() for k, v in result.model.state_dict().items()}
