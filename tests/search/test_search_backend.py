"""The trainer of a search's candidates on a CPU: torch, numba, or the faster for each
candidate, measured (`--backend auto`)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from nasgraph.search.config import SearchConfig
from nasgraph.search.run import search

TINY = f"{Path(__file__).parent / 'tiny_space.py'}:space"


def _trials(tmp_path, study):
    return optuna.load_study(study_name=study,
                             storage=f"sqlite:///{tmp_path / study / 'study.db'}").trials


@pytest.mark.parametrize("backend", ["numba", "auto"])
def test_candidates_train_on_the_backend_asked_or_measured_faster(backend, tmp_path):
    cfg = SearchConfig(space=TINY, trials=2, epochs=1, sampler="random", final_seeds=0,
                       backend=backend, runs_dir=str(tmp_path), device="cpu", study="be")
    search(cfg)
    chosen = {t.user_attrs["backend"] for t in _trials(tmp_path, "be")}
    assert chosen == {"numba"} if backend == "numba" else chosen <= {"torch", "numba"}


@pytest.mark.parametrize(("costs", "faster"), [({"torch": 3.0, "numba": 1.5}, "numba"),
                                               ({"torch": 1.5, "numba": 3.0}, "torch")])
def test_faster_backend_picks_fewer_seconds_per_batch_on_the_timed_epoch(
        costs, faster, monkeypatch):
    import nasgraph.train as train_module
    from nasgraph.data import load_dataset
    from nasgraph.train import faster_backend

    # a clock that only the training moves: the warm-up epoch costs 100 s, the timed one
    # `costs[backend]`, so the seconds per batch are known exactly
    clock = {"now": 0.0, "calls": 0}

    def fake_train(graph, data, recipe, *, backend, train_split, **options):
        clock["calls"] += 1
        clock["now"] += 100.0 if clock["calls"] % 2 else costs[backend]

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: clock["now"])
    name, per_batch = faster_backend(search_graph(), load_dataset("digits"), batches=6)
    assert per_batch == {k: pytest.approx(v / 6) for k, v in costs.items()}
    assert name == faster and clock["calls"] == 4


def search_graph():
    from nasgraph import GraphBuilder

    b = GraphBuilder()
    x = b.input(1, 8, 8)
    b.output(b.linear(b.flatten(b.gap(b.relu(b.bn(b.conv(x, 8, 3, padding=1))))), 10))
    return b.build()
