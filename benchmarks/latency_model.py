"""How well the latency model predicts whole-graph latency: candidates sampled from the
built-in search spaces plus zoo models at small inputs, the per-graph and per-node
overheads fitted on one half of them (`LatencyModel.calibrate`), and the other half
predicted and measured. Reports, per target, the mean and worst relative error and the
share of graphs within 10% and 20%, with a plot of predicted against measured latency.

    .venv/bin/python -m benchmarks.latency_model [--targets numba,torch-cpu,onnxruntime]
        [--threads 1] [--batch 1] [--per-space 8] [--budget 5M] [--zoo-input 3x32x32]
        [--limit N] [--seed 0] [--plot] [--write]

`--limit 3` is a smoke run (3 graphs). The table of each target is the per-machine cache
file (`nasgraph.latency.machine`), as `nasgraph latency` uses it, so a second run measures
only whole graphs; `--fresh` starts from an empty table. The plots go to
docs/img/latency_<target>.png (`--plot`); the table to docs/benchmarks.md (`--write`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from benchmarks._report import machine, write_section

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
# zoo models that build at 32x32 and run in milliseconds on one thread
ZOO = ("lenet5", "nin_cifar", "resnet18", "resnet20_cifar", "squeezenet1_1",
       "preact_resnet18", "densenet121", "mobilenet_v1", "mobilenet_v2", "efficientnet_b0",
       "googlenet", "vgg11_bn")


def space_candidates(per_space: int, budget: str, seed: int) -> list:
    """`per_space` random candidates of every built-in space, fitted to `budget` MACs at
    3x32x32 with 10 classes, as a search fits them; the feasible ones."""
    from nasgraph.ir import Graph
    from nasgraph.search.budget import Budget, parse_amount
    from nasgraph.search.proxies import fitted_candidates
    from nasgraph.search.space import Context, get_space, space_names

    ctx = Context(input_shape=(3, 32, 32), num_classes=10,
                  budget=Budget(macs=parse_amount(budget)))
    graphs = []
    for name in space_names():
        for k, (_, graph, _, feasible) in enumerate(
                fitted_candidates(get_space(name), ctx, per_space, seed)):
            if feasible:  # named after its space, for the report
                graphs.append(Graph(graph.nodes, f"{name}-{k}"))
    return graphs


def zoo_graphs(shape: tuple[int, int, int]) -> list:
    """The `ZOO` models at `shape` with 10 classes (those that build at that size)."""
    from nasgraph import zoo
    from nasgraph.errors import NasgraphError

    graphs = []
    for name in ZOO:
        try:
            graphs.append(zoo.get(name, num_classes=10,
                                  input_shape=None if name == "lenet5" else shape))
        except NasgraphError:
            continue
    return graphs


def evaluate(target: str, graphs: list, threads: int, batch: int, seed: int,
             fresh: bool) -> dict:
    """Calibrate on one half of `graphs`, predict and measure the other half: the rows
    (name, predicted ms, measured ms, held out?) and the seconds spent."""
    from nasgraph.latency.model import LatencyModel

    model = LatencyModel(target, threads, cache=False if fresh else None)
    order = list(range(len(graphs)))
    random.Random(seed).shuffle(order)
    fit = [graphs[i] for i in order[:max(1, len(order) // 2)]]
    held = [graphs[i] for i in order[len(fit):]] or fit
    start = time.perf_counter()
    rows = [(r.name, r.predicted_ms, r.measured_ms, False) for r in model.calibrate(fit, batch)]
    known = total = 0
    for graph in held:  # how many of a held-out graph's keys the table already had
        keys = len(model.plan(graph, batch).keys)
        total += keys
        known += keys - len(model.missing(graph, batch))
        predicted = model.predict(graph, batch).total_ms
        rows.append((graph.name, predicted, model.measure(graph, batch), True))
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    for graph in held:
        model.predict(graph, batch, measure_missing=False)
    warm_ms = 1e3 * (time.perf_counter() - start) / len(held)
    return {"rows": rows, "seconds": seconds, "warm_ms": warm_ms, "known": known / total,
            "overheads": (1e3 * model.table.graph_s, 1e3 * model.table.node_s)}


def summary(rows: list) -> dict:
    """Mean and worst relative error, and the share within 10% and 20%, of held-out rows."""
    errors = [abs(p - m) / m for _, p, m, held in rows if held]
    return {"n": len(errors), "mean": statistics.fmean(errors), "worst": max(errors),
            "within10": sum(e <= 0.1 for e in errors) / len(errors),
            "within20": sum(e <= 0.2 for e in errors) / len(errors)}


def plot(target: str, rows: list, path: Path) -> None:
    """Predicted against measured latency, log-log, with the 20% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for held, style, label in ((False, "o", "fitted on"), (True, "x", "held out")):
        pts = [(m, p) for _, p, m, h in rows if h == held]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=style, label=label)
    low = min(min(m, p) for _, p, m, _ in rows) / 1.5
    high = max(max(m, p) for _, p, m, _ in rows) * 1.5
    ax.plot([low, high], [low, high], "k-", lw=0.8)
    for f in (0.8, 1.2):
        ax.plot([low, high], [low * f, high * f], "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high),
           xlabel="measured median (ms)", ylabel="predicted (ms)", title=f"latency: {target}")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = [f"Latency model, {args.threads} thread(s), batch {args.batch}; {machine()}.",
             "Overheads fitted on half the graphs, errors on the other half.", "",
             "| target | graphs | mean error | worst | within 10% | within 20% | "
             "table + calibration | warm prediction | held-out keys known |",
             "|---|---|---|---|---|---|---|---|---|"]
    for target, r in results.items():
        s = summary(r["rows"])
        lines.append(f"| {target} | {s['n']} | {100 * s['mean']:.1f}% | "
                     f"{100 * s['worst']:.1f}% | {100 * s['within10']:.0f}% | "
                     f"{100 * s['within20']:.0f}% | {r['seconds']:.0f} s | "
                     f"{r['warm_ms']:.1f} ms | {100 * r['known']:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="numba,torch-cpu,onnxruntime")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--per-space", type=int, default=8)
    parser.add_argument("--budget", default="5M")
    parser.add_argument("--zoo-input", default="3x32x32")
    parser.add_argument("--limit", type=int, default=None, help="at most N graphs (smoke)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="an empty table, not the cache")
    parser.add_argument("--plot", action="store_true", help="docs/img/latency_<target>.png")
    parser.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.zoo_input.split("x"))
    graphs = space_candidates(args.per_space, args.budget, args.seed) + zoo_graphs(shape)
    if args.limit:
        graphs = random.Random(args.seed).sample(graphs, min(args.limit, len(graphs)))
    print(f"{len(graphs)} graphs")
    results = {}
    for target in args.targets.split(","):
        results[target] = evaluate(target, graphs, args.threads, args.batch, args.seed,
                                   args.fresh)
        for name, p, m, held in results[target]["rows"]:
            print(f"{target:12} {name:28} predicted {p:9.3f} ms  measured {m:9.3f} ms  "
                  f"{100 * (p - m) / m:+6.1f}%{'  (held out)' if held else ''}")
        if args.plot:
            plot(target, results[target]["rows"], IMG / f"latency_{target}.png")
    text = markdown(results, args)
    print(text)
    if args.write:
        write_section("latency_model", text)


if __name__ == "__main__":
    main()
