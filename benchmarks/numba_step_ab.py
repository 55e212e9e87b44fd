"""One numba training step, the working tree's against a git revision's: fresh pairs of
processes timing it in short turns, for changes of a few percent.

    .venv/bin/python -m benchmarks.numba_step_ab --against REV [--case NAME | GRAPH.json]
        [--batch 128] [--pairs 8] [--rounds 20] [--turn 0.5]

Each pair is two processes that stay up, one running the revision's `nasgraph/` (extracted
with `git archive`), one the working tree's, each building `benchmarks.numba_train`'s step
for the case (or for a graph's JSON file: a candidate a search trained, saved with
`Graph.to_json`) and then timing it in turns of `--turn` seconds: A, B, B, A, ... A round's
ratio is B's time a step over A's (working tree over revision: below 1 is faster). Over a
minute the machine's speed drifts by more than the changes this is for, and turns cancel
that; but a pair's median also moves by 2-6% from one pair of processes to the next, the
same code against itself included, so the result is the median over several fresh pairs,
which alternate which side starts (the same code against itself, eight pairs: 0.999x and
1.000x in two runs). Prints each pair's median and the median of those; writes
nothing. Both sides use the working tree's `benchmarks/` (the case's graph and step), so
the revision must have the trainer those call (`loss_and_grads`, `FlatParams`,
`make_optimizer`). Each side's kernels are cached beside its own sources (numba's
`__pycache__`): the revision's compile when its first process starts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._report import machine
from benchmarks._revision import ROOT, extracted


def worker(case: str, batch: int) -> None:
    """The timing side: builds the case's step, says `ready` and the folder its `nasgraph`
    came from, then answers each line of seconds on stdin with `steps seconds`, having
    run the step for that long."""
    import numba
    import torch

    import nasgraph
    from benchmarks import numba_train
    from nasgraph.ir import Graph

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    graph = (Graph.from_json(Path(case).read_text()) if case.endswith(".json")
             else _cases(numba_train)[case]())
    step = numba_train.numba_step(graph, *numba_train.inputs(graph, batch))
    for _ in range(5):
        step()
    print("ready", Path(nasgraph.__file__).resolve().parent.parent, flush=True)
    for line in sys.stdin:
        seconds, steps, start = float(line), 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or not steps:
            step()
            steps += 1
        print(steps, elapsed, flush=True)


def _cases(numba_train) -> dict:
    # benchmarks.numba_train's cases by name -> the function that builds the graph
    return {name: build for group in numba_train.CASES.values() for name, build, _ in group}


class _Side:
    """A worker process running the package in `code`."""

    def __init__(self, code: Path, case: str, batch: int):
        # run from `code`: `python -m` puts the current folder first on the path, before
        # PYTHONPATH, and `benchmarks` comes from the working tree after it
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.numba_step_ab", "--worker", "--case", case,
             "--batch", str(batch)], cwd=code, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        answer = self.proc.stdout.readline().split(maxsplit=1)
        if answer[:1] != ["ready"]:
            raise SystemExit(f"the worker for {code} did not start (exit {self.proc.wait()})")
        if Path(answer[1].strip()) != code.resolve():
            self.close()
            raise SystemExit(f"the worker for {code} imported nasgraph from {answer[1].strip()}")

    def time_step(self, seconds: float) -> float:
        """Seconds a step, over a turn of `seconds`."""
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        steps, elapsed = self.proc.stdout.readline().split()
        return float(elapsed) / int(steps)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def pair_ratios(make_a, make_b, rounds: int, turn: float, b_first: bool) -> list[float]:
    """One pair's rounds: B's time a step over A's, each round both in turn (A, B, then
    B, A, ...; B first where `b_first`)."""
    sides = [make_a()]
    try:
        sides.append(make_b())
        ratios = []
        for r in range(rounds):
            order = (1, 0) if (r % 2 == 0) == b_first else (0, 1)
            seconds = {k: sides[k].time_step(turn) for k in order}
            ratios.append(seconds[1] / seconds[0])
        return ratios
    finally:
        for side in sides:
            side.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="the git revision to compare with")
    parser.add_argument("--case", default="Fashion MobileNetV2-style",
                        help="a case of benchmarks.numba_train, or a graph's JSON file")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--turn", type=float, default=0.5, help="seconds a side times a turn")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.case, args.batch)
        return
    from benchmarks import numba_train

    cases = _cases(numba_train)
    if args.case.endswith(".json"):
        from nasgraph.errors import NasgraphError
        from nasgraph.ir import Graph

        try:
            Graph.from_json(Path(args.case).read_text())
        except (OSError, NasgraphError) as e:
            parser.error(f"{args.case}: {e}")
        args.case = str(Path(args.case).resolve())  # the workers run from other folders
    elif args.case not in cases:
        parser.error(f"no case {args.case!r}; the cases: {', '.join(cases)}")
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.against}^{{commit}}"],
                      cwd=ROOT, capture_output=True).returncode:
        parser.error(f"no git revision {args.against!r}")
    print(f"{machine()}; the working tree against {args.against}, {args.case} at batch "
          f"{args.batch}: {args.pairs} pairs of {args.rounds} rounds, turns of {args.turn} s")
    medians = []
    with extracted(args.against) as old:
        for k in range(args.pairs):
            ratios = pair_ratios(lambda: _Side(old, args.case, args.batch),
                                 lambda: _Side(ROOT, args.case, args.batch),
                                 args.rounds, args.turn, b_first=k % 2 == 1)
            medians.append(statistics.median(ratios))
            print(f"pair {k + 1}: {medians[-1]:.3f}x (rounds {min(ratios):.3f}-"
                  f"{max(ratios):.3f})", flush=True)
    print(f"working tree / {args.against}: {statistics.median(medians):.3f}x, the pairs "
          f"{min(medians):.3f}-{max(medians):.3f}x")


if __name__ == "__main__":
    main()
