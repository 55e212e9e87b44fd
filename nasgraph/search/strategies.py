"""How a search proposes and stops candidates: Optuna's samplers and pruners, seeded.

    >>> from nasgraph.search.config import SearchConfig
    >>> from nasgraph.search.strategies import make_sampler
    >>> type(make_sampler(SearchConfig(sampler="random"))).__name__
    'RandomSampler'
"""

from __future__ import annotations

import os
import socket
import warnings

import optuna

from nasgraph.search.config import SearchConfig

ETA = 3  # successive halving keeps the best third at each rung


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def make_sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # multivariate TPE and NSGA-II's constraints
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.sampler == "random":
            return optuna.samplers.RandomSampler(seed=cfg.seed)
        if cfg.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(
                population_size=max(4, min(50, cfg.trials // 4)), seed=cfg.seed)
        return optuna.samplers.TPESampler(
            n_startup_trials=max(3, min(10, cfg.trials // 3)), seed=cfg.seed,
            multivariate=True, group=True)


def make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    """`--pruner`: a trial reports its validation accuracy after every epoch, as step
    `epochs trained` (1, 2, ...), and is stopped when

    - median: it is below the median of earlier trials at the same epoch, after the first
      third of the epochs (the first ones are too noisy to judge);
    - halving: successive halving (asynchronous, so ASHA with many workers): at each rung of
      `rungs(cfg)` only the best 1/`ETA` of the trials that reached it go on;
    - hyperband: brackets of successive halving with different first rungs;
    - none: never.

    All candidates share one learning-rate schedule, so accuracies after the same epoch
    compare fairly.
    """
    if cfg.multi_objective or cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    if cfg.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=ETA)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs,
                                              reduction_factor=ETA)
    return optuna.pruners.MedianPruner(n_startup_trials=5,
                                       n_warmup_steps=max(1, cfg.epochs // 3) + 1)


def rungs(cfg: SearchConfig) -> list[int]:
    """The epochs after which successive halving judges a trial: 1, ETA, ETA^2, ... below
    `cfg.epochs` (a trial that reaches `cfg.epochs` is complete).

        >>> rungs(SearchConfig(pruner="halving", epochs=10))
        [1, 3, 9]
        >>> rungs(SearchConfig(pruner="median", epochs=10))
        []
    """
    if cfg.pruner != "halving" or cfg.multi_objective:
        return []
    return [ETA ** k for k in range(cfg.epochs) if ETA ** k < cfg.epochs]


def sampler_seed(cfg: SearchConfig, started: int = 0) -> int:
    """The search's seed for a lone worker, reproducible; one per process otherwise, so that
    workers do not all propose the same first candidates. A lone worker resuming a study
    that has `started` trials draws a new stream: the seed's own would repeat trial 0's."""
    if cfg.storage is None and cfg.workers == 1 and "NASGRAPH_WORKER" not in os.environ:
        return cfg.seed if started == 0 else (cfg.seed * 1_000_003 + started) % 2**31
    return hash((cfg.seed, worker_name())) % 2**31
