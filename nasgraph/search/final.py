"""The final retraining: the best architecture trained from scratch on train + validation,
once per final seed, and tested.

On a CPU a search with several workers (`--workers K`) retrains up to K seeds at once, one
process each: a small network trains on one thread, so K seeds take the time of one. Each
process loads the dataset by name (the same split: it is seeded by the search's seed) and
reports its epochs back for the progress bars.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from nasgraph.data import Dataset, load_dataset
from nasgraph.ir import Graph
from nasgraph.search.config import SearchConfig
from nasgraph.search.evaluation import Progress, backend_for
from nasgraph.search.interrupts import stop_point
from nasgraph.train import accuracy, concat_splits, train

SEED_BASE = 10_000  # final seed k trains with seed SEED_BASE + k
POLL_SECONDS = 0.5

StateDict = dict[str, torch.Tensor]


def parallel_seeds(cfg: SearchConfig, device: torch.device) -> int:
    """How many final seeds train at once: one per CPU worker, one on a GPU."""
    return max(1, min(cfg.workers, cfg.final_seeds)) if device.type == "cpu" else 1


def _phase(k: int, cfg: SearchConfig) -> str:
    return f"final retraining, seed {k + 1}/{cfg.final_seeds}"


def _trained(cfg: SearchConfig, graph: Graph, data: Dataset, device: torch.device, k: int,
             on_epoch) -> tuple[float, StateDict]:
    run = train(graph, data, cfg.recipe, epochs=cfg.final_training_epochs, device=device,
                seed=SEED_BASE + k, train_split=concat_splits(data.train, data.val),
                val_split=data.test, on_epoch=on_epoch,
                backend=backend_for(cfg, graph, data, device))
    return accuracy(run.model, data.test), {n: v.cpu() for n, v in run.model.state_dict().items()}


def retrainings(cfg: SearchConfig, graph: Graph, data: Dataset, device: torch.device,
                progress: Progress | None) -> Iterator[tuple[float, StateDict]]:
    """(test accuracy, weights) of each final seed, in seed order."""
    epochs = cfg.final_training_epochs
    if parallel_seeds(cfg, device) > 1:
        yield from _in_processes(cfg, graph, progress)
        return
    for k in range(cfg.final_seeds):
        phase = _phase(k, cfg)

        def report(epoch: int, acc: float, phase: str = phase) -> None:
            if progress is not None:
                progress(phase, epoch + 1, epochs)
            stop_point()  # Ctrl-C stops here, between epochs

        if progress is not None:
            progress(phase, 0, epochs)
        yield _trained(cfg, graph, data, device, k, report)


# --------------------------------------------------------------------------- in processes

_events: multiprocessing.Queue | None = None  # a worker process's channel to the parent


def _start_worker(events: multiprocessing.Queue) -> None:
    global _events
    _events = events
    torch.set_num_threads(1)


def _seed_main(cfg_json: str, graph_json: str, k: int) -> tuple[float, StateDict]:
    cfg = SearchConfig.model_validate_json(cfg_json)
    data = load_dataset(cfg.dataset, seed=cfg.seed)

    def report(epoch: int, acc: float) -> None:
        _events.put((k, epoch + 1))

    _events.put((k, 0))
    return _trained(cfg, Graph.from_json(graph_json), data, torch.device("cpu"), k, report)


def _in_processes(cfg: SearchConfig, graph: Graph,
                  progress: Progress | None) -> Iterator[tuple[float, StateDict]]:
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    epochs = cfg.final_training_epochs
    pool = ProcessPoolExecutor(parallel_seeds(cfg, torch.device("cpu")), mp_context=ctx,
                               initializer=_start_worker, initargs=(events,))
    try:
        futures: list[Future] = [
            pool.submit(_seed_main, cfg.model_dump_json(), graph.to_json(), k)
            for k in range(cfg.final_seeds)]
        for future in futures:
            while not future.done():
                try:
                    k, done = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if progress is not None:
                    progress(_phase(k, cfg), done, epochs)
            yield future.result()
        while progress is not None and not events.empty():  # the last epochs' reports
            k, done = events.get()
            progress(_phase(k, cfg), done, epochs)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
