"""Search on Fashion-MNIST at 1M MACs against hand designs, in one run: the hand-made plain
net and ResNet of issue 19 trained with the default recipe, and the best candidate of a
search, each retrained from scratch on train + validation and tested.

    python -m benchmarks.fashion_search [--space residual] [--trials 12] [--epochs 2]
                                        [--final-epochs 15] [--seeds 2] [--write]

Every model is trained the same way (`nasgraph.train`, the default recipe, one process);
the search's time includes its trials. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from benchmarks._report import machine, write_section
from nasgraph import GraphBuilder, analysis
from nasgraph.data import load_dataset
from nasgraph.ir import Graph
from nasgraph.motifs.conv import conv_unit
from nasgraph.motifs.residual import ResidualBlock, residual_block
from nasgraph.search.config import SearchConfig
from nasgraph.search.run import search
from nasgraph.train import accuracy, concat_splits, train

BUDGET = 1_000_000


def plain() -> Graph:
    """Stride-2 3x3 stem of 16, 3x3 16, stride-2 3x3 32, 3x3 32, GAP, linear."""
    b = GraphBuilder("hand_plain")
    x = b.input(1, 28, 28)
    for k, (width, stride) in enumerate([(16, 2), (16, 1), (32, 2), (32, 1)]):
        with b.scope(f"conv{k}"):
            x = conv_unit(b, x, width, 3, stride=stride)
    b.output(b.linear(b.flatten(b.gap(x)), 10))
    return b.build()


def resnet() -> Graph:
    """Stride-2 stem of 7, five basic blocks (7, 7, 14 s2, 14, 28 s2), GAP, linear."""
    b = GraphBuilder("hand_resnet")
    x = b.input(1, 28, 28)
    with b.scope("stem"):
        x = conv_unit(b, x, 7, 3, stride=2)
    for k, (planes, stride) in enumerate([(7, 1), (7, 1), (14, 2), (14, 1), (28, 2)]):
        with b.scope(f"block{k}"):
            x = residual_block(b, x, ResidualBlock(planes=planes, stride=stride))
    b.output(b.linear(b.flatten(b.gap(x)), 10))
    return b.build()


def retrained(graph: Graph, data, epochs: int, seeds: int) -> tuple[list[float], float]:
    """Test accuracies of `seeds` trainings on train + validation, and seconds per training."""
    accs, start = [], time.perf_counter()
    for k in range(seeds):
        run = train(graph, data, epochs=epochs, device="cpu", seed=10_000 + k,
                    train_split=concat_splits(data.train, data.val), val_split=data.test)
        accs.append(accuracy(run.model, data.test))
    return accs, (time.perf_counter() - start) / seeds


def row(name: str, graph: Graph, epochs: int, accs: list[float], seconds: float) -> str:
    spread = f" +- {statistics.stdev(accs):.2%}" if len(accs) > 1 else ""
    return (f"| {name} | {analysis.macs(graph) / 1e6:.2f}M | {analysis.params(graph) / 1e3:.1f}k"
            f" | {epochs} | {statistics.fmean(accs):.2%}{spread} | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="residual")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--final-epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = parser.parse_args()
    data = load_dataset("fashion-mnist")
    load = os.getloadavg()
    lines = ["## Search against hand designs on Fashion-MNIST at 1M MACs (issue 19)", "",
             f"`benchmarks/fashion_search.py --seeds {args.seeds}`: {machine()}, torch "
             f"{torch.__version__}; every model retrained {args.final_epochs} epochs on train + "
             f"validation with the default recipe, seeds 10000-{10_000 + args.seeds - 1}; "
             "test accuracy mean +- sd over the seeds; time per retraining (the search's: "
             "the whole search, its trials and retrainings).", "",
             "| model | MACs | params | epochs | test | time |", "|---|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for graph in (plain(), resnet()):
        accs, seconds = retrained(graph, data, args.final_epochs, args.seeds)
        lines.append(row(graph.name, graph, args.final_epochs, accs, seconds))
        print(lines[-1], flush=True)
    with tempfile.TemporaryDirectory() as runs:
        start = time.perf_counter()
        cfg = SearchConfig(space=args.space, dataset="fashion-mnist", budget_macs=BUDGET,
                           trials=args.trials, epochs=args.epochs,
                           final_epochs=args.final_epochs, final_seeds=args.seeds,
                           runs_dir=runs, device="cpu")
        result = search(cfg)
        seconds = time.perf_counter() - start
        best = result.best
        graph = cfg.folder.load_graph(best["trial"])
        name = (f"search: {args.space}, {args.trials} trials x {args.epochs} epochs, best "
                f"(trial {best['trial']}, val {best['val_accuracy']:.2%})")
        lines.append(row(name, graph, args.final_epochs, best["test_accuracy_runs"], seconds))
        print(lines[-1], flush=True)
    after = os.getloadavg()
    lines += ["", f"Load average (1 min) {load[0]:.1f} before, {after[0]:.1f} after."]
    print(lines[-1])
    if args.write:
        write_section("fashion_search", "\n".join(lines))


if __name__ == "__main__":
    main()
