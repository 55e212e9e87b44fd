"""How starved the built-in spaces' candidates are once fitted to a budget: 50 random
candidates of each space (optuna's RandomSampler, seeded), at 1x28x28 (Fashion-MNIST), 10
classes and 1M MACs, as sampled and as fitted (`fit_to_budget`), by the code of the working
tree and by that of a git revision (the committed code: HEAD).

    .venv/bin/python -m benchmarks.space_fit [--ref HEAD] [--candidates 50]
        [--shape 1x28x28] [--budget 1M] [--spaces residual mobile]

The revision's `nasgraph/` is extracted with `git archive` into a temporary folder and
measured there, in a subprocess, so that its numbers come from its own spaces and fitting
(a space it lacks is left out). Prints a markdown table: min / median / max of each figure
over the candidates (over the feasible ones once fitted), quartiles for the parameters;
widths are the medians of the stem's and each stage's output channels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks._revision import ROOT, extracted
from nasgraph.units import si

SPACES = ["residual", "inception", "dense", "macro", "mobile"]


def measure(spaces: list[str], candidates: int, shape: tuple[int, int, int],
            budget: int) -> dict[str, list[dict]]:
    """Per space (of those this code has), one record per candidate: its figures as
    sampled and as fitted, the width multiplier, whether it fits, the seconds fitting took."""
    import optuna

    from nasgraph.search import Budget, Context, fit_to_budget, load_space, space_names

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = Context(input_shape=shape, num_classes=10, budget=Budget(macs=budget))
    results = {}
    for name in [s for s in spaces if s in space_names()]:
        space = load_space(name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        records = []
        for _ in range(candidates):
            trial = study.ask()
            sampled = space(trial, ctx)
            start = time.perf_counter()
            fitted, _, multiplier, feasible = fit_to_budget(space, trial, ctx)
            records.append({"seconds": time.perf_counter() - start, "sampled": figures(sampled),
                            "fitted": figures(fitted), "multiplier": multiplier,
                            "feasible": feasible})
        results[name] = records
    return results


def figures(graph) -> dict:
    """Params, MACs, depth, the side of the stem's output and the stem's and stages' widths
    (the channels of the last node of each scope)."""
    from nasgraph import analysis

    def last_in(scope: str):
        return [n for n in graph if n.id.startswith(scope + "/")][-1].type

    stages = sorted({n.id.split("/")[0] for n in graph if n.id.startswith("stage")})
    return {"params": analysis.params(graph), "macs": analysis.macs(graph),
            "depth": analysis.summarize(graph).depth, "side": last_in("stem").height,
            "widths": [last_in(s).channels for s in ["stem", *stages]]}


def row(space: str, code: str, when: str, records: list[dict], shape, budget: int) -> str:
    """One line of the table: the candidates as sampled, or as fitted."""
    figs = [r[when] for r in records if when == "sampled" or r["feasible"]]
    if when == "sampled":
        fits = f"{sum(f['macs'] <= budget for f in figs)}/{len(figs)} within budget"
        multipliers = seconds = "-"
    else:
        fits = f"{len(figs)}/{len(records)} feasible"
        multipliers = spread([r["multiplier"] for r in records if r["feasible"]], "{:.2f}")
        times = [r["seconds"] * 1e3 for r in records]
        seconds = f"{statistics.median(times):.0f} / {max(times):.0f}"
    params = [f["params"] for f in figs]
    quartiles = [min(params), *statistics.quantiles(params, n=4), max(params)]
    widths = [statistics.median(f["widths"][k] for f in figs if len(f["widths"]) > k)
              for k in range(max(len(f["widths"]) for f in figs))]
    coarser = sum(f["side"] < min(shape[1:]) for f in figs)
    return (f"| {space} | {code} | {when} | {fits} | {multipliers} | "
            f"{' / '.join(si(p) for p in quartiles)} | "
            f"{spread([f['macs'] for f in figs], si)} | "
            f"{spread([f['depth'] for f in figs], '{:.0f}')} | "
            f"{'-'.join(f'{w:.0f}' for w in widths)} | {coarser}/{len(figs)} | {seconds} |")


def spread(values: list[float], fmt) -> str:
    show = fmt if callable(fmt) else fmt.format
    return " / ".join(show(v) for v in (min(values), statistics.median(values), max(values)))


def at_revision(ref: str, argv: list[str]) -> dict[str, list[dict]]:
    """`measure` run on the `nasgraph/` of git revision `ref`, in a subprocess."""
    with extracted(ref) as folder:
        path = f"{folder}{os.pathsep}{ROOT}"  # the revision's nasgraph, these benchmarks
        out = subprocess.run([sys.executable, "-m", "benchmarks.space_fit", *argv, "--json"],
                             cwd=folder, env={**os.environ, "PYTHONPATH": path}, check=True,
                             capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="the revision to compare with ('': none)")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--shape", default="1x28x28", help="C x H x W")
    parser.add_argument("--budget", default="1M", help="MACs")
    parser.add_argument("--spaces", nargs="+", default=SPACES)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from nasgraph.search import parse_amount

    shape = tuple(int(d) for d in args.shape.split("x"))
    budget = parse_amount(args.budget)
    here = measure(args.spaces, args.candidates, shape, budget)
    if args.json:
        print(json.dumps(here))
        return
    argv = ["--candidates", str(args.candidates), "--shape", args.shape, "--budget",
            args.budget, "--spaces", *args.spaces]
    before = at_revision(args.ref, argv) if args.ref else {}
    lines = [f"`benchmarks/space_fit.py`: {args.candidates} random candidates per space at "
             f"{args.shape}, 10 classes, a budget of {args.budget} MACs; min / median / max "
             "(params: min / quartiles / max).", "",
             "| space | code | | fits | width multiplier | params | MACs | depth | "
             "widths (stem-stage1-...) | stem downsamples | fit ms (median / max) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | ---: | ---: |"]
    for name in args.spaces:
        for code, results in ((args.ref, before), ("now", here)):
            if name in results:
                lines += [row(name, code, when, results[name], shape, budget)
                          for when in ("sampled", "fitted")]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
