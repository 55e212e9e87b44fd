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
    from nasgraph.data import load_dataset
    from nasgraph.train import faster_backend

    cfg = SearchConfig(space=TINY, trials=2, epochs=1, sampler="random", final_seeds=0,
                       backend=backend, runs_dir=str(tmp_path), device="cpu", study="be")
    search(cfg)
    chosen = {t.user_attrs["backend"] for t in _trials(tmp_path, "be")}
    assert chosen == {"numba"} if backend == "numba" else chosen <= {"torch", "numba"}
    name, seconds = faster_backend(search_graph(), load_dataset("digits"))
    assert set(seconds) == {"torch", "numba"} and all(s > 0 for s in seconds.values())
    assert name == min(seconds, key=seconds.__getitem__)


def search_graph():
    from nasgraph import GraphBuilder

    b = GraphBuilder()
    x = b.input(1, 8, 8)
    b.output(b.linear(b.flatten(b.gap(b.relu(b.bn(b.conv(x, 8, 3, padding=1))))), 10))
    return b.build()
