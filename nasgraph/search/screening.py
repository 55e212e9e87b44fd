"""Zero-cost screening (`--screen N`): before any training, N candidates are sampled at
random, fitted to the budget and scored by zero-cost proxies (proxies.py) on one batch of
training images; the most promising are queued as the study's first trials, and the
sampler goes on from what they score when trained.

    >>> from nasgraph.search.config import SearchConfig
    >>> from nasgraph.search.evaluation import prepare
    >>> from nasgraph.search.screening import screen
    >>> setup = prepare(SearchConfig(space="residual", screen=64))  # doctest: +SKIP
    >>> queued = screen(setup)  # doctest: +SKIP

A candidate's promise is the sum of its ranks under `SCREEN_PROXIES` (rank 0 is the
lowest score of a proxy): proxies disagree on scale, not always on order.

Under a time budget on a CPU, how fast a candidate trains counts as much: the final
retraining gets the epochs that fit in the time left, so a network that trains twice as
fast gets twice the epochs (docs/search.md, "What limits a short search"). The
`PACE_POOL` x as many candidates as will be queued, the most promising by the proxies,
train a few batches each (`pace`, batches per second on the trainer their trials use),
and their promise is the sum of their ranks under the proxies and the pace, among them.
"""

from __future__ import annotations

import time
from typing import Any

from nasgraph.ir import Graph
from nasgraph.search.evaluation import Progress, Setup
from nasgraph.search.proxies import fitted_candidates, score, training_batch
from nasgraph.train import faster_backend, seconds_per_batch

# On 50 trained residual candidates at 1M MACs on Fashion-MNIST (docs/benchmarks.md,
# proxy_quality), params ranked them best (Spearman 0.56), then snip (0.38); naswot (-0.25)
# and synflow (0.08) did not. The rank sum of params and snip picks the same top quarter as
# params alone (7 of the 12 best) and breaks its ties with a signal from the data.
SCREEN_PROXIES = ("params", "snip")
KEEP = 4  # one candidate of every KEEP screened is trained
BATCH = 64  # training images the proxies see
SCREEN_SHARE = 0.1  # of the trials' time, under a time budget
PACE_POOL = 2  # under a time budget, 2x the candidates queued have their pace measured
PACE_BATCHES = 3  # training batches timed per candidate, after a warm-up of two


def screen(setup: Setup, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Screen `setup.cfg.screen` candidates (under a time budget, those that fit in a tenth
    of the trials' time, their pace included) and queue the best quarter (at most `trials`)
    into the study; returns the queued ones (parameters, proxies, pace where measured, and
    promise), best first. A study that already has trials is not screened again."""
    cfg, study = setup.cfg, setup.study
    if cfg.screen == 0 or study.get_trials(deepcopy=False):
        return []
    start = time.perf_counter()
    x, y = training_batch(setup.data, BATCH, cfg.seed)
    # with a time budget, screening may take a tenth of the trials' time
    until = None if cfg.trials_until is None else \
        time.time() + SCREEN_SHARE * (cfg.trials_until - time.time())
    rows, screened = [], 0
    for parameters, graph, costs, feasible in fitted_candidates(setup.space, setup.ctx,
                                                                cfg.screen, cfg.seed):
        if until is not None and time.time() > until:
            break
        screened += 1
        if feasible:
            rows.append({"parameters": parameters, "graph": graph, "macs": costs.macs,
                         "params": costs.params,
                         **score(graph, x, y, list(SCREEN_PROXIES), seed=cfg.seed)})
        if progress is not None:
            progress("screening", screened, cfg.screen)
    if progress is not None and screened < cfg.screen:  # out of time: the bar ends here
        progress("screening", screened, screened)
    keep, feasible = min(max(1, screened // KEEP), cfg.trials), len(rows)
    rows = ranked(rows, SCREEN_PROXIES)
    if until is not None and setup.device.type == "cpu":  # a timed search on a CPU
        paced = []
        if rows:  # the process's first training runs slower (allocation, torch's own set-up)
            pace(setup, rows[0]["graph"])
        for row in rows[:PACE_POOL * keep]:
            if time.time() > until and paced:
                break
            paced.append({**row, "pace": round(pace(setup, row["graph"]), 3)})
            if progress is not None:
                progress("timing candidates", len(paced), min(len(rows), PACE_POOL * keep))
        rows = ranked(paced, (*SCREEN_PROXIES, "pace"))
    queued = [{k: v for k, v in row.items() if k != "graph"} for row in rows[:keep]]
    for row in queued:
        study.enqueue_trial(row["parameters"], user_attrs={
            "screened": {k: v for k, v in row.items() if k != "parameters"}})
    study.set_user_attr("screening", {"candidates": screened, "feasible": feasible,
                                      "timed": sum("pace" in row for row in rows),
                                      "queued": len(queued),
                                      "seconds": round(time.perf_counter() - start, 1)})
    return queued


def ranked(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """`rows` with their promise (the sum of their ranks under each of `names`, higher
    better; rank 0 the lowest, tied values share their mean rank), most promising first
    (then in the order given).

    >>> rows = [{"id": 0, "a": 1, "b": 9}, {"id": 1, "a": 2, "b": 1}, {"id": 2, "a": 3, "b": 8}]
    >>> [(r["id"], r["promise"]) for r in ranked(rows, ("a", "b"))]
    [(2, 3.0), (0, 2.0), (1, 1.0)]
    >>> [r["promise"] for r in ranked([{"a": 5}, {"a": 5}, {"a": 7}], ("a",))]
    [2.0, 0.5, 0.5]
    """
    promise = [0.0] * len(rows)
    for name in names:
        order = sorted(range(len(rows)), key=lambda i: rows[i][name])
        start = 0
        while start < len(order):  # a run of equal values shares the mean of its ranks
            end = start
            while end + 1 < len(order) and rows[order[end + 1]][name] == rows[order[start]][name]:
                end += 1
            for k in range(start, end + 1):
                promise[order[k]] += (start + end) / 2
            start = end + 1
    out = [{**row, "promise": p} for row, p in zip(rows, promise, strict=True)]
    return sorted(out, key=lambda r: -r["promise"])


def pace(setup: Setup, graph: Graph) -> float:
    """Training batches per second of `graph` on the trainer its trial will use: the
    search's `--backend`, or with "auto" the faster of the two (`faster_backend`)."""
    cfg = setup.cfg
    if cfg.backend == "auto":
        seconds = min(faster_backend(graph, setup.data, cfg.recipe, PACE_BATCHES)[1].values())
    else:
        seconds = seconds_per_batch(graph, setup.data, cfg.recipe, cfg.backend, PACE_BATCHES)
    return 1.0 / seconds
