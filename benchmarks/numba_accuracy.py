"""Does the numba trainer reach torch's accuracy? Issue 22's check: digits with the same
recipe and seeds, the mean over 5 seeds, within one standard error.

Each seed trains the same graph from the same initial weights (`init_state(graph, seed)`)
twice: with the torch trainer on the CPU and with `backend="numba"`, as a digits search's
final retraining does (train + validation, then the test split, the search's 30 final
epochs). The two trainers draw their batch order and shifts from different generators
(torch's, numpy's), so a seed's two runs differ by training noise; the comparison is of
the means over the seeds, with the standard error of their difference (Welch).

    python -m benchmarks.numba_accuracy [--seeds 5] [--epochs 30] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks._report import machine, welch, write_section
from benchmarks.numba_cpu import digits_candidate
from nasgraph.data import Dataset, load_dataset
from nasgraph.recipe import Recipe
from nasgraph.search.final import SEED_BASE
from nasgraph.train import accuracy, concat_splits, train

BACKENDS = ("torch", "numba")


def run(data: Dataset, backend: str, seed: int, epochs: int) -> tuple[float, float]:
    """(test accuracy, seconds) of one final retraining of the digits candidate."""
    start = time.perf_counter()
    result = train(digits_candidate(), data, Recipe(), epochs=epochs, device="cpu",
                   seed=seed, train_split=concat_splits(data.train, data.val),
                   val_split=data.test, backend=backend, validate_each_epoch=False)
    return accuracy(result.model, data.test), time.perf_counter() - start


def table(results: dict[str, list[tuple[float, float]]], seeds: list[int]) -> str:
    lines = ["| trainer | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean +- sd | s per run |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for backend, runs in results.items():
        accs = [a for a, _ in runs]
        lines.append(f"| {backend} | " + " | ".join(f"{a:.2%}" for a in accs)
                     + f" | {statistics.fmean(accs):.2%} +- {statistics.stdev(accs):.2%} "
                     f"| {statistics.median(s for _, s in runs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="final-retraining seeds 10000, ...")
    p.add_argument("--epochs", type=int, default=30, help="a digits search's final epochs")
    p.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = p.parse_args()
    if args.seeds < 2:
        p.error("--seeds: at least 2, for a standard error")

    seeds = [SEED_BASE + k for k in range(args.seeds)]
    data = load_dataset("digits")
    results: dict[str, list[tuple[float, float]]] = {b: [] for b in BACKENDS}
    for seed in seeds:  # the trainers in turns, so that a drift of the machine hits both
        for backend in BACKENDS:
            results[backend].append(run(data, backend, seed, args.epochs))
            print(f"seed {seed} {backend}: {results[backend][-1][0]:.2%}", flush=True)

    torch_acc, numba_acc = ([a for a, _ in results[b]] for b in BACKENDS)
    diff, se = welch(numba_acc, torch_acc)
    verdict = "within" if abs(diff) <= se else "outside"
    body = (f"`python -m benchmarks.numba_accuracy --seeds {args.seeds} --epochs "
            f"{args.epochs}`: {machine()}; the digits candidate of `numba_cpu` "
            f"(2 residual stages, {len(seeds)} seeds from {SEED_BASE}), the default recipe, "
            f"{args.epochs} epochs on train + validation as a digits search's final "
            f"retraining, tested on the {len(data.test)} test digits; "
            "torch on the CPU, one trainer after the other for each seed.\n\n"
            f"{table(results, seeds)}\n\n"
            f"numba - torch: {diff * 100:+.2f} +- {se * 100:.2f} points (difference of the "
            f"means +- its standard error): {verdict} one standard error.")
    print(body)
    if args.write:
        write_section("numba_accuracy", "## Numba trainer against torch's accuracy, digits "
                      "(issue 22)\n\n" + body)


if __name__ == "__main__":
    main()
