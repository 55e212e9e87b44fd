"""Tests marked `cuda` run only where a CUDA device is present. OpenMP's threads wait
passively in the test processes."""

from __future__ import annotations

import os

import pytest

# `make test` runs two pytest workers, each with numba's and torch's OpenMP pools of one
# thread per core: twice as many threads as cores. Threads that spin while they wait for
# work (OpenMP's default) then take the cores from the ones that have work: the zoo's
# float64 gradient tests took 240 s on 2 cores with spinning threads, 86 s with sleeping
# ones (OMP_WAIT_POLICY=PASSIVE), each worker still on two threads. Set here, before
# numba or torch load the OpenMP runtime; the environment's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if "cuda" in item.keywords]
    if not marked:
        return
    import torch  # only when cuda tests were collected: the IR tests stay torch-free

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in marked:
        item.add_marker(skip)
