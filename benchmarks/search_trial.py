"""Seconds per search trial on Fashion-MNIST at 1M MACs, this code against a git revision's,
back to back: the same `nasgraph search` command line run by both, in turns.

    .venv/bin/python -m benchmarks.search_trial [--ref 38b5c91] [--trials 3] [--turns 1]
        [--space residual] [--epochs 2] [--write]

Each run is `nasgraph search SPACE --dataset mnist:/usr/share/datasets/fashion-mnist
--budget 1M --trials T --epochs 2 --final-seeds 0 --device cpu` in a fresh runs folder, by
the revision's `nasgraph/` (extracted with `git archive`) or by the working tree's. A trial's
seconds are Optuna's (start to completion: sampling, fitting, training, validation after each
epoch); the table gives them with the candidates' parameters and validation accuracy. The
default revision is the last before issue 19 (its spaces and trainer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._report import machine, write_section
from benchmarks._revision import ROOT, extracted

BASELINE = "38b5c91"  # the last commit before issue 19
DATASET = "mnist:/usr/share/datasets/fashion-mnist"


def run_search(code: Path, space: str, trials: int, epochs: int, seed: int) -> list[dict]:
    """One search by the package in `code`; per trial: seconds, params, MACs, val accuracy."""
    import optuna

    with tempfile.TemporaryDirectory() as runs:
        study = f"{space}-bench"
        subprocess.run(
            [sys.executable, "-m", "nasgraph", "search", space, "--dataset", DATASET,
             "--budget", "1M", "--trials", str(trials), "--epochs", str(epochs),
             "--final-seeds", "0", "--device", "cpu", "--seed", str(seed), "--runs-dir", runs,
             "--study", study],
            cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True,
            stdout=subprocess.DEVNULL)
        storage = f"sqlite:///{Path(runs) / study / 'study.db'}"
        done = optuna.load_study(study_name=study, storage=storage).get_trials(
            states=[optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED])
        return [{"seconds": t.duration.total_seconds(), "params": t.user_attrs.get("params"),
                 "macs": t.user_attrs.get("macs"),
                 "val": t.value if t.value is not None else t.intermediate_values.get(
                     max(t.intermediate_values, default=0))} for t in done]


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values),
                                             max(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default=BASELINE)
    parser.add_argument("--space", default="residual")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = parser.parse_args()
    load = os.getloadavg()
    results: dict[str, list[dict]] = {args.ref: [], "now": []}
    with extracted(args.ref) as old:
        for turn in range(args.turns):
            for code, folder in ((args.ref, old), ("now", ROOT)):
                results[code] += run_search(folder, args.space, args.trials, args.epochs,
                                            seed=turn)
                print(f"turn {turn}, {code}: done", file=sys.stderr, flush=True)
    lines = ["## Seconds per search trial on Fashion-MNIST, before and after (issue 19)", "",
             f"`benchmarks/search_trial.py`: {machine()}; `nasgraph search {args.space} "
             f"--dataset {DATASET} --budget 1M --trials {args.trials} --epochs {args.epochs}`, "
             f"{args.turns} turn(s) of each code (seeds 0-{args.turns - 1}); min / median / "
             "max over the trials.", "",
             "| code | trials | seconds per trial | params | val accuracy |",
             "|---|---:|---:|---:|---:|"]
    for code, trials in results.items():
        lines.append(
            f"| {code} | {len(trials)} | {spread([t['seconds'] for t in trials])} | "
            f"{spread([t['params'] / 1e3 for t in trials], '{:.1f}k')} | "
            f"{spread([t['val'] for t in trials], '{:.1%}')} |")
    old_median = statistics.median(t["seconds"] for t in results[args.ref])
    new_median = statistics.median(t["seconds"] for t in results["now"])
    after = os.getloadavg()
    lines += ["", f"Median trial: {old_median:.0f} s -> {new_median:.0f} s "
              f"({new_median / old_median:.2f}x the time). Load average (1 min) "
              f"{load[0]:.1f} before, {after[0]:.1f} after."]
    print("\n".join(lines))
    if args.write:
        write_section("search_trial", "\n".join(lines))


if __name__ == "__main__":
    main()
