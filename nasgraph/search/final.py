"""The final retraining: the best architecture trained from scratch on train + validation,
once per final seed, and tested.

On a CPU a search with several workers (`--workers K`) retrains up to K seeds at once, one
process each: a small network trains on one thread, so K seeds take the time of one. Each
process loads the dataset by name (the same split: it is seeded by the search's seed) and
reports its epochs back for the progress bars.

In a timed search each seed's epochs are planned from its trial's pace (`schedule.py`), cut
after its first epoch when its own pace says they do not fit, and fitted again, longer or
shorter, after `STEADY_EPOCHS`, at the mean pace of the epochs since its first
(`schedule.refit_epochs`). The first epoch is the learning rate's warm-up, so the cosine
decay that follows is the whole run's. It is fitted again only in its first quarter, where
the learning rate barely moves when the run grows (by 0.3% for 55 epochs made 68, by 8%
for 16 made 32).
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import NamedTuple

import torch

from nasgraph.data import Dataset, load_dataset
from nasgraph.ir import Graph
from nasgraph.search.config import SearchConfig
from nasgraph.search.evaluation import Progress, backend_for
from nasgraph.search.interrupts import stop_point
from nasgraph.search.schedule import STEADY_EPOCHS, refit_epochs
from nasgraph.train import accuracy, concat_splits, share_cores, train

SEED_BASE = 10_000  # final seed k trains with seed SEED_BASE + k
POLL_SECONDS = 0.5

StateDict = dict[str, torch.Tensor]


class Retrained(NamedTuple):
    """One final seed's run."""

    test_accuracy: float
    state: StateDict
    epochs: int


def parallel_seeds(cfg: SearchConfig, device: torch.device) -> int:
    """How many final seeds train at once: one per CPU worker, one on a GPU."""
    return max(1, min(cfg.workers, cfg.final_seeds)) if device.type == "cpu" else 1


def _phase(k: int, cfg: SearchConfig) -> str:
    return f"final retraining, seed {k + 1}/{cfg.final_seeds}"


def _rounds_left(cfg: SearchConfig, k: int, parallel: int) -> int:
    """Rounds of seeds that train one after another from seed k's round on."""
    return math.ceil(cfg.final_seeds / parallel) - k // parallel


def _trained(cfg: SearchConfig, graph: Graph, data: Dataset, device: torch.device, k: int,
             parallel: int, report: Callable[[int, int], None]) -> Retrained:
    """Final seed k trained and tested; `report(epochs done, epochs in all)` after each
    epoch. In a timed search (`cfg.final_until`) the epochs are cut after the first when
    they do not fit at its measured pace, and fitted again after `STEADY_EPOCHS`
    (`schedule.refit_epochs`)."""
    total = cfg.final_training_epochs
    seconds_each: list[float] = []

    def replan(done: int, seconds: float) -> int | None:
        nonlocal total
        seconds_each.append(seconds)
        if cfg.final_until is None:
            return None
        rounds = _rounds_left(cfg, k, parallel)
        if done == 1:  # the end of the warm-up epoch
            # cut, not lengthened: a seed's first epoch can run while the others still start,
            # faster than the pace they train at together (a replayed final lengthened so
            # from 51 to 61 epochs overran its time by 15%)
            total = min(total, refit_epochs(time.time(), cfg.final_until, seconds, rounds))
            return total
        # by now every seed trains, at the pace they share; early in the cosine decay, so a
        # longer run's learning rate barely moves
        if done == STEADY_EPOCHS and total >= 4 * STEADY_EPOCHS:
            total = refit_epochs(time.time(), cfg.final_until,
                                 statistics.fmean(seconds_each[1:]), rounds, done=done)
            return total
        return None

    run = train(graph, data, cfg.recipe, epochs=total, device=device,
                seed=SEED_BASE + k, train_split=concat_splits(data.train, data.val),
                val_split=data.test, on_epoch=lambda epoch, acc: report(epoch + 1, total),
                backend=backend_for(cfg, graph, data, device), replan=replan,
                validate_each_epoch=False)  # tested once, after the last epoch
    state = {n: v.cpu() for n, v in run.model.state_dict().items()}
    return Retrained(accuracy(run.model, data.test), state, run.epochs)


def retrainings(cfg: SearchConfig, graph: Graph, data: Dataset, device: torch.device,
                progress: Progress | None) -> Iterator[Retrained]:
    """Each final seed's test accuracy, weights and epochs, in seed order."""
    if parallel_seeds(cfg, device) > 1:
        yield from _in_processes(cfg, graph, progress)
        return
    for k in range(cfg.final_seeds):
        phase = _phase(k, cfg)

        def report(done: int, total: int, phase: str = phase) -> None:
            if progress is not None:
                progress(phase, done, total)
            stop_point()  # Ctrl-C stops here, between epochs

        if progress is not None:
            progress(phase, 0, cfg.final_training_epochs)
        yield _trained(cfg, graph, data, device, k, 1, report)


# --------------------------------------------------------------------------- in processes

_events: multiprocessing.Queue | None = None  # a worker process's channel to the parent


def _start_worker(events: multiprocessing.Queue, parallel: int) -> None:
    global _events
    _events = events
    share_cores(parallel)


def _seed_main(cfg_json: str, graph_json: str, k: int, parallel: int) -> Retrained:
    cfg = SearchConfig.model_validate_json(cfg_json)
    data = load_dataset(cfg.dataset, seed=cfg.seed)

    def report(done: int, total: int) -> None:
        _events.put((k, done, total))

    _events.put((k, 0, cfg.final_training_epochs))
    return _trained(cfg, Graph.from_json(graph_json), data, torch.device("cpu"), k, parallel,
                    report)


def _in_processes(cfg: SearchConfig, graph: Graph,
                  progress: Progress | None) -> Iterator[Retrained]:
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    parallel = parallel_seeds(cfg, torch.device("cpu"))
    pool = ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_start_worker,
                               initargs=(events, parallel))
    try:
        futures: list[Future] = [
            pool.submit(_seed_main, cfg.model_dump_json(), graph.to_json(), k, parallel)
            for k in range(cfg.final_seeds)]
        for future in futures:
            while not future.done():
                try:
                    k, done, total = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if progress is not None:
                    progress(_phase(k, cfg), done, total)
            yield future.result()
        while progress is not None and not events.empty():  # the last epochs' reports
            k, done, total = events.get()
            progress(_phase(k, cfg), done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
