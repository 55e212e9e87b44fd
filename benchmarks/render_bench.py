"""Time drawing a large zoo model, expanded and collapsed, to SVG with graphviz's dot.

    python benchmarks/render_bench.py [MODEL] [--repeats N] [--no-write]

MODEL defaults to densenet201 (the target: under 10 s each way), or to the zoo model with
the most nodes when densenet201 is not registered. Prints a table and writes it into the
render section of docs/benchmarks.md. CPU seconds are reported beside wall seconds: on a
shared machine they are the steadier figure.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import machine, write_section  # noqa: E402

from nasgraph import zoo  # noqa: E402
from nasgraph.drawing import plan, render  # noqa: E402


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the dot process
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def best_of(repeats: int, graph, path: Path, **options) -> tuple[float, float]:
    """Fastest (wall, cpu) seconds of `repeats` renders, graph to SVG file."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), cpu_seconds()
        render(graph, path, **options)
        wall.append(time.perf_counter() - t)
        cpu.append(cpu_seconds() - c)
    return min(wall), min(cpu)


def default_model() -> str:
    if "densenet201" in zoo.names():
        return "densenet201"
    return max(zoo.names(), key=lambda name: len(zoo.get(name)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="Only print the table.")
    args = parser.parse_args()
    name = args.model or default_model()
    graph = zoo.get(name)
    dot_version = subprocess.run(["dot", "-V"], capture_output=True, text=True).stderr.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, options in (("expanded", {}), ("collapsed", {"collapse": True})):
            p = plan(graph, **options)
            wall, cpu = best_of(args.repeats, graph, Path(tmp) / f"{label}.svg", **options)
            rows.append(f"| {label} | {len(p.units)} | {len(p.clusters)} | {len(p.edges)} "
                        f"| {wall:.2f} | {cpu:.2f} |")
    text = "\n".join([
        "## Drawing (nasgraph render)",
        "",
        f"`{name}` ({len(graph)} ops) drawn to SVG by `nasgraph.render`, graph to file, best "
        f"of {args.repeats}; target: under 10 s each way. Command: "
        f"`python benchmarks/render_bench.py {name}`. Machine: {machine()}, {dot_version}.",
        "",
        "| picture | drawn nodes | clusters | edges | wall s | CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ])
    print(text)
    if not args.no_write:
        write_section("render", text)


if __name__ == "__main__":
    main()
