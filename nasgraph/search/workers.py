"""Many workers, one study: the trial loop every worker runs, and `--workers K` processes.

    >>> from nasgraph.search.run import SearchConfig, search
    >>> search(SearchConfig(space="residual", trials=24, workers=3,
    ...                     storage="postgresql://user@host/db"))  # doctest: +SKIP

Any number of workers (processes of one machine, or `nasgraph search` run on many machines
with the same `--storage` and `--study`) share a study. Optuna's database gives each new trial
its own number; the loop below makes the study end with exactly `trials` finished trials:

- a worker starts a trial only while fewer than `trials` are finished or running; while the
  last ones run elsewhere it waits (they may fail, and then it takes over);
- workers that start at the same moment can still overshoot, so each trial checks, when it
  starts and again before it reports, that fewer than `trials` trials numbered below it are
  finished or running (trial creation is serialized, so every lower number is visible by
  then). A trial that finds its slot taken is an *excess* trial: it is recorded as failed,
  with `excess` (and its accuracy, if it got that far) in its user attributes.

A trial whose code raises (out of memory, a bad graph from a space, a NaN) is recorded as
failed with its `error` and the worker goes on; a worker that dies is found by its stale
heartbeat and its trial is queued again (storage.py).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from nasgraph.errors import NasgraphError
from nasgraph.search.config import SearchConfig, trial_timeout, worker_config
from nasgraph.search.evaluation import calibrate_latency, make_objective, prepare
from nasgraph.search.interrupts import ctrl_c_at_stop_points, stop_point
from nasgraph.search.retrying_storage import StorageUnavailable, connection_lost
from nasgraph.search.strategies import worker_name
from nasgraph.search.study import quiet_optuna
from nasgraph.train import share_cores

LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
FAILURES_IN_A_ROW = 5  # a worker whose trials all fail is looking at a broken space
POLL_SECONDS = 1.0


class TrialError(Exception):
    """A trial's own code raised; the trial is failed with the error and the search goes on."""


class ExcessTrial(Exception):
    """The study already had its trials finished or running when this one got its slot."""


def slot_taken(study: optuna.Study, number: int, n: int) -> bool:
    """Whether `n` trials numbered below `number` are finished or running."""
    trials = study.get_trials(deepcopy=False, states=LIVE)
    return sum(t.number < number for t in trials) >= n


def _error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]


def guarded(objective: Callable[[optuna.Trial], Any], n: int,
            last: dict[str, Any]) -> Callable[[optuna.Trial], Any]:
    """`objective` with the slot checks and the error recording; `last` receives the trial
    number and the outcome."""

    def excess(trial: optuna.Trial, value: Any = None) -> ExcessTrial:
        trial.set_user_attr("excess", True)
        if value is not None:
            trial.set_user_attr("excess_value", value)
        last["outcome"] = "excess"
        return ExcessTrial(f"trial {trial.number}: the study already has {n} trials")

    def run(trial: optuna.Trial) -> Any:
        last.update(number=trial.number, params={}, outcome=None)
        trial.set_user_attr("worker", worker_name())
        if slot_taken(trial.study, trial.number, n):
            raise excess(trial)
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            if slot_taken(trial.study, trial.number, n):
                raise excess(trial) from None
            raise
        except (StorageUnavailable, KeyboardInterrupt):
            raise
        except Exception as e:
            last["params"] = trial.params
            if connection_lost(e):
                raise
            last["outcome"] = _error_line(e)
            trial.set_user_attr("error", last["outcome"])
            raise TrialError(last["outcome"]) from e
        values = value if isinstance(value, tuple | list) else (value,)
        if any(not math.isfinite(v) for v in values):
            last["outcome"] = f"objective value {value} is not finite"
            trial.set_user_attr("error", last["outcome"])
            raise TrialError(last["outcome"])
        if slot_taken(trial.study, trial.number, n):
            raise excess(trial, value)
        last["outcome"] = "done"
        return value

    return run


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], Any], n: int,
               timeout: float | None = None, callbacks: list[Callable] | None = None,
               log: Callable[[str], None] | None = None) -> int:
    """Run trials of `study` until it holds `n` finished (complete or pruned) trials, or
    `timeout` seconds passed; returns how many this worker finished.

    Raises KeyboardInterrupt after queueing the interrupted trial's parameters again, and
    StorageUnavailable when the database stays unreachable.
    """
    log = log or (lambda line: sys.stderr.write(line + "\n"))
    start = time.monotonic()
    last: dict[str, Any] = {}
    run = guarded(objective, n, last)
    with quiet_optuna(), ctrl_c_at_stop_points():  # the loop logs failures in one line itself
        return _trial_loop(study, run, n, start, timeout, callbacks, last, log)


def _trial_loop(study: optuna.Study, run: Callable[[optuna.Trial], Any], n: int,
                start: float, timeout: float | None, callbacks: list[Callable] | None,
                last: dict[str, Any], log: Callable[[str], None]) -> int:
    mine = failures = 0
    while timeout is None or time.monotonic() - start < timeout:
        stop_point()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False, states=LIVE)
        done = sum(t.state != TrialState.RUNNING for t in trials)
        if done >= n:
            break
        if len(trials) >= n:
            time.sleep(POLL_SECONDS)
            continue
        last.clear()
        try:
            study.optimize(run, n_trials=1, callbacks=callbacks,
                           catch=(TrialError, ExcessTrial))
        except KeyboardInterrupt:
            _requeue(study, last)
            raise
        except (ValueError, AssertionError) as e:
            if not _failed_elsewhere(study, last, e):
                raise
            log(f"trial {last['number']} was failed as stale by another worker while it ran "
                "(no heartbeat within the grace period; hint: NASGRAPH_GRACE_PERIOD); "
                "its retry runs it again")
            continue
        outcome = last.get("outcome")
        if outcome == "done":
            mine += 1
            failures = 0
        elif outcome not in (None, "excess"):
            failures += 1
            log(f"trial {last['number']} failed: {outcome} (recorded; the search goes on)")
            if failures >= FAILURES_IN_A_ROW:
                raise NasgraphError(f"{failures} trials in a row failed, the last with "
                                    f"{outcome}; hint: `nasgraph study show` lists them")
    return mine


def _failed_elsewhere(study: optuna.Study, last: dict[str, Any], error: BaseException) -> bool:
    """Whether `error` says that the trial this worker just ran had been failed by another
    worker's stale-trial check before Optuna could record its outcome. Optuna then raises
    "Cannot tell a FAIL trial" (and, on the way out, asserts) instead of returning; the
    heartbeat callback has already queued a retry of the trial's parameters (storage.py)."""
    told = error if isinstance(error, ValueError) else error.__context__
    if "number" not in last or not str(told).startswith("Cannot tell a FAIL trial"):
        return False
    return study.get_trials(deepcopy=False)[last["number"]].state == TrialState.FAIL


def _requeue(study: optuna.Study, last: dict[str, Any]) -> None:
    """Queue the parameters of the trial Ctrl-C failed, so that resuming re-runs it."""
    if "number" not in last:
        return
    trial = study.get_trials(deepcopy=False)[last["number"]]
    if trial.state == TrialState.FAIL and trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number},
                            skip_if_exists=True)


def work(cfg: SearchConfig) -> int:
    """Be one worker of the study `cfg`: run its trials until it holds `cfg.trials`
    finished ones, write no report; returns how many this worker finished."""
    setup = prepare(cfg)
    calibrate_latency(setup, unless_calibrated=True)  # a worker on another machine
    return run_trials(setup.study, make_objective(setup), cfg.trials, trial_timeout(cfg))


def _worker_main(cfg_json: str, index: int, errors: Any) -> None:
    os.environ["NASGRAPH_WORKER"] = str(index)
    cfg = SearchConfig.model_validate_json(cfg_json)
    share_cores(cfg.workers)  # K processes of one machine: each its share of the cores
    cfg = worker_config(cfg, index)
    try:
        work(cfg)
    except KeyboardInterrupt:
        sys.exit(130)
    except NasgraphError as e:
        errors.put((index, str(e).splitlines()[0]))
        sys.exit(2)


def run_workers(cfg: SearchConfig, study: optuna.Study,
                callbacks: list[Callable] | None = None) -> None:
    """Start `cfg.workers` processes on the study and wait for them; `callbacks(study, None)`
    are called every second meanwhile (progress)."""
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(cfg.model_dump_json(), i, errors),
                         name=f"nasgraph-worker-{i}")
             for i in range(cfg.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=POLL_SECONDS / len(procs))
            for callback in callbacks or []:
                callback(study, None)
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=60)
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    failed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if failed:
        message = errors.get(timeout=1)[1] if not errors.empty() else None
        raise NasgraphError(message or f"{len(failed)} of {cfg.workers} workers stopped "
                            f"(exit codes {failed}); finished trials are kept in the study")
