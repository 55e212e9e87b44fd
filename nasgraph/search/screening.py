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
"""

from __future__ import annotations

import time
from typing import Any

from nasgraph.search.evaluation import Progress, Setup
from nasgraph.search.proxies import fitted_candidates, score, training_batch

# On 50 trained residual candidates at 1M MACs on Fashion-MNIST (docs/benchmarks.md,
# proxy_quality), params ranked them best (Spearman 0.56), then snip (0.38); naswot (-0.25)
# and synflow (0.08) did not. The rank sum of params and snip picks the same top quarter as
# params alone (7 of the 12 best) and breaks its ties with a signal from the data.
SCREEN_PROXIES = ("params", "snip")
KEEP = 4  # one candidate of every KEEP screened is trained
BATCH = 64  # training images the proxies see
SCREEN_SHARE = 0.1  # of the trials' time, under a time budget


def screen(setup: Setup, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Screen `setup.cfg.screen` candidates (under a time budget, those that fit in a tenth
    of the trials' time) and queue the best quarter (at most `trials`) into the study;
    returns the queued ones (parameters, proxies and promise), best first. A study that
    already has trials is not screened again."""
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
            rows.append({"parameters": parameters, "macs": costs.macs, "params": costs.params,
                         **score(graph, x, y, list(SCREEN_PROXIES), seed=cfg.seed)})
        if progress is not None:
            progress("screening", screened, cfg.screen)
    if progress is not None and screened < cfg.screen:  # out of time: the bar ends here
        progress("screening", screened, screened)
    for name in SCREEN_PROXIES:
        for rank, row in enumerate(sorted(rows, key=lambda r, name=name: r[name])):
            row["promise"] = row.get("promise", 0) + rank
    rows.sort(key=lambda r: -r["promise"])
    queued = rows[:min(max(1, screened // KEEP), cfg.trials)]
    for row in queued:
        study.enqueue_trial(row["parameters"], user_attrs={
            "screened": {k: v for k, v in row.items() if k != "parameters"}})
    study.set_user_attr("screening", {"candidates": screened, "feasible": len(rows),
                                      "queued": len(queued),
                                      "seconds": round(time.perf_counter() - start, 1)})
    return queued
