"""How long building and analysing each zoo model takes (graph construction is type-checked
at every node, so this is the cost of `nasgraph.zoo.get` and `summarize`).

    .venv/bin/python benchmarks/zoo_build.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write_section  # noqa: E402

from nasgraph import summarize, zoo  # noqa: E402


def median_seconds(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    rows = []
    for name in zoo.names():
        graph = zoo.get(name)
        build = median_seconds(lambda name=name: zoo.get(name))
        analyse = median_seconds(lambda graph=graph: summarize(graph))
        rows.append((len(graph), name, build, analyse))
    rows.sort(reverse=True)
    lines = ["## Zoo: building and analysing graphs", "",
             f"`.venv/bin/python benchmarks/zoo_build.py` on {machine()}; median of 5.", "",
             "| model | nodes | build (ms) | summarize (ms) |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {n} | {b * 1e3:.1f} | {a * 1e3:.1f} |" for n, name, b, a in rows]
    largest = rows[0]
    lines += ["", f"The largest graph, {largest[1]} ({largest[0]} nodes), builds in "
              f"{largest[2] * 1e3:.0f} ms (goal: well under a second)."]
    write_section("zoo_build", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
