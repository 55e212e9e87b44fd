"""A search's Optuna study: opened (or created) in its storage, checked against the settings
it was created with, and its sampler seeded for this run.

    >>> from nasgraph.search.config import SearchConfig
    >>> from nasgraph.search.study import open_study
    >>> study = open_study(SearchConfig(space="residual"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from nasgraph.errors import NasgraphError
from nasgraph.search.config import SearchConfig, check_resumable, settings_of
from nasgraph.search.storage import open_storage
from nasgraph.search.strategies import make_pruner, make_sampler, sampler_seed

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


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
    # a new stream for a resumed lone worker, one per process for many (strategies.py)
    started = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(cfg.model_copy(update={"seed": sampler_seed(cfg, started)}))
    return study


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in DONE]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Within: optuna's own `[W ...]` log lines are not printed, only its errors."""
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        optuna_logger.setLevel(level)
