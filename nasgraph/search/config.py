"""What defines a search: its configuration (the CLI's options), and what may change when a
study resumes.

    >>> from nasgraph.search.config import SearchConfig
    >>> SearchConfig(space="my_spaces.py:wide", dataset="mnist:/data").study_name
    'my_spaces-wide-mnist'
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nasgraph.errors import NasgraphError
from nasgraph.recipe import Recipe
from nasgraph.search.budget import Budget
from nasgraph.search.runs import StudyFolder
from nasgraph.search.schedule import FINAL_SHARE

Objective = Literal["accuracy", "accuracy,macs", "accuracy,latency"]
Pruner = Literal["median", "halving", "hyperband", "none"]
# A study name is a folder of the runs folder: no separators, no leading dot, so never `..`
STUDY_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$"
# What a trial's score and the final result depend on: a resumed study must not change them
RESUME_SETTINGS = ("space", "dataset", "budget_macs", "max_params", "max_memory",
                   "max_latency_ms", "latency_target", "epochs", "final_epochs", "objective",
                   "seed", "recipe")


class SearchConfig(BaseModel):
    """Everything that defines a search (the CLI's options)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    space: str = "residual"
    dataset: str = "digits"
    budget_macs: int | None = None
    max_params: int | None = None
    max_memory: int | None = None
    max_latency_ms: float | None = None  # predicted on latency_target, batch 1
    latency_target: str = "numba:1"  # target:threads of the latency budget and objective
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
    pruner: Pruner = "median"  # how trials are stopped early (strategies.py)
    time_budget: float | None = Field(default=None, gt=0)  # seconds, final retraining included
    final_share: float = Field(default=FINAL_SHARE, gt=0, lt=1)  # of it, for the retraining
    screen: int = Field(default=0, ge=0)  # candidates scored by zero-cost proxies first
    # when trials stop and a running one is cut, and when the final retraining must end
    # (`time.time()`; set by `time_budget`)
    trials_until: float | None = None
    final_until: float | None = None
    seed: int = 0
    # which trainer trains the candidates on a CPU: torch, numba, or the faster for each
    # candidate, measured (`nasgraph.train.faster_backend`)
    backend: Literal["torch", "numba", "auto"] = "torch"
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
        return Budget(macs=self.budget_macs, params=self.max_params, memory=self.max_memory,
                      latency_ms=self.max_latency_ms, latency_target=self.latency_target)

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
    def folder(self) -> StudyFolder:
        return StudyFolder(self.study_dir)

    @property
    def multi_objective(self) -> bool:
        return self.objective != "accuracy"

    @property
    def second_objective(self) -> str:
        """The cost a multi-objective study minimizes beside accuracy: a user attribute
        of every trial (`macs`, `latency_ms`)."""
        return "latency_ms" if self.objective == "accuracy,latency" else "macs"

    @property
    def uses_latency(self) -> bool:
        """Whether trials need their predicted latency: a latency budget or objective."""
        return self.max_latency_ms is not None or self.objective == "accuracy,latency"


def trial_timeout(cfg: SearchConfig) -> float | None:
    """Seconds from now during which trials may start: `timeout`, or less by `trials_until`."""
    if cfg.trials_until is None:
        return cfg.timeout
    left = max(0.0, cfg.trials_until - time.time())
    return left if cfg.timeout is None else min(cfg.timeout, left)


def devices_of(cfg: SearchConfig) -> list[str]:
    """`--device cuda:0,cuda:1` -> ['cuda:0', 'cuda:1']."""
    return [d.strip() for d in cfg.device.split(",") if d.strip()] or ["auto"]


def worker_config(cfg: SearchConfig, index: int) -> SearchConfig:
    """Worker `index`'s configuration: its device, round-robin over `--device`."""
    devices = devices_of(cfg)
    return cfg.model_copy(update={"device": devices[index % len(devices)], "workers": 1})


def settings_of(cfg: SearchConfig) -> dict[str, Any]:
    """The configuration a study is stored with (its default final epochs resolved)."""
    return {**cfg.model_dump(mode="json"), "final_epochs": cfg.final_training_epochs}


def check_resumable(cfg: SearchConfig, stored: dict[str, Any]) -> None:
    """Refuse to resume a study under settings that would mix incomparable trials."""
    current = settings_of(cfg)
    if stored.get("final_epochs") is None and "epochs" in stored:  # stored unresolved (older)
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
