"""What limits Fashion-MNIST test accuracy at 1M MACs: the training length, the augmentation
or the MAC budget. The plain CNN of `search_quality` (the best hand design there), fitted
to each budget, is trained as a search's final retraining is (train + validation splits,
the default `Recipe`), one change at a time: more epochs, horizontal flips, more MACs.

    python -m benchmarks.fashion_limits [--seeds 1] [--procs 2] [--cells 1M:54:no,...]
        [--json FILE] [--write]

With `--json`, runs the file holds are kept and not run again.

Not a timing (the seconds are printed for planning only): each run is one process with
one torch thread, `--procs` of them at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks._report import machine, write_section
from benchmarks.search_quality import FINAL_SEED, fitted, plain_cnn

# (MAC budget, epochs, horizontal flips): the first row is search_quality's final retraining
CELLS = [(1_000_000, 18, False), (1_000_000, 18, True), (1_000_000, 54, False),
         (1_000_000, 54, True), (4_000_000, 18, False)]


def one(job: tuple[tuple[int, int, bool], int]) -> dict:
    (budget, epochs, flip), seed = job
    import torch

    from nasgraph import analysis
    from nasgraph.data import load_dataset
    from nasgraph.train import Recipe, accuracy, concat_splits, train

    torch.set_num_threads(1)
    data = dataclasses.replace(load_dataset("fashion-mnist"), flip=flip)
    graph, width = fitted(plain_cnn, data.input_shape, data.num_classes, budget)
    start = time.perf_counter()
    run = train(graph, data, Recipe(), epochs=epochs, device="cpu", seed=FINAL_SEED + seed,
                train_split=concat_splits(data.train, data.val), val_split=data.test)
    return {"budget": budget, "epochs": epochs, "flip": flip, "seed": seed,
            "width": round(width, 3), "macs": analysis.macs(graph),
            "params": analysis.params(graph), "test": accuracy(run.model, data.test),
            "seconds": round(time.perf_counter() - start, 1)}


def table(results: list[dict]) -> str:
    rows = ["| MACs budget | width x | params | epochs | flips | test | runs | s per run |",
            "|---:|---:|---:|---:|---|---:|---:|---:|"]
    # the default cells in their order, then any other run with --cells
    cells = dict.fromkeys([*CELLS, *((r["budget"], r["epochs"], r["flip"]) for r in results)])
    for budget, epochs, flip in cells:
        got = [r for r in results if (r["budget"], r["epochs"], r["flip"]) == (budget, epochs,
                                                                             flip)]
        if not got:
            continue
        accs = [r["test"] for r in got]
        sd = f" +- {statistics.stdev(accs):.2%}" if len(accs) > 1 else ""
        rows.append(f"| {got[0]['macs'] / 1e6:.2f}M | {got[0]['width']} | "
                    f"{got[0]['params'] / 1e3:.1f}k | {epochs} | {'yes' if flip else 'no'} | "
                    f"{statistics.fmean(accs):.2%}{sd} | {len(accs)} | "
                    f"{statistics.fmean(r['seconds'] for r in got):.0f} |")
    return "\n".join(rows)


def parse_cell(text: str) -> tuple[int, int, bool]:
    """'1M:54:yes' -> (1_000_000, 54, True)."""
    budget, epochs, flip = text.split(":")
    return round(float(budget.rstrip("M")) * 1e6), int(epochs), flip == "yes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--cells", help="BUDGET:EPOCHS:FLIPS,... of the table's rows; "
                        "default: all")
    parser.add_argument("--json", type=Path, help="raw results, kept across runs")
    parser.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = parser.parse_args()
    cells = [parse_cell(c) for c in args.cells.split(",")] if args.cells else CELLS
    done = json.loads(args.json.read_text()) if args.json and args.json.is_file() else []
    have = {(r["budget"], r["epochs"], r["flip"], r["seed"]) for r in done}
    # longest first, so the pool ends together
    jobs = sorted(((c, s) for c in cells for s in range(args.seeds) if (*c, s) not in have),
                  key=lambda j: -j[0][0] ** 0.5 * j[0][1])
    with ProcessPoolExecutor(args.procs) as pool:
        results = done + list(pool.map(one, jobs))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    text = (f"`python -m benchmarks.fashion_limits --seeds {args.seeds}`: {machine()}; one "
            f"torch thread per run, {args.procs} runs at once; seeds {FINAL_SEED}+.\n\n"
            + table(results))
    print(text)
    if args.write:
        write_section("fashion_limits", "## What limits Fashion-MNIST accuracy at 1M MACs "
                      "(issue 20)\n\n" + text)


if __name__ == "__main__":
    main()
