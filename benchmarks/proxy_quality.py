"""How well each zero-cost proxy ranks trained candidates: Spearman and Kendall rank
correlations of the proxy, computed on the untrained graph, with the validation accuracy the
candidate reached in a finished search, and the median seconds per proxy.

    .venv/bin/python -m benchmarks.proxy_quality runs/residual-fashion-mnist [--batch 64]
        [--seed 0] [--write]

The study folder is one that `nasgraph search` left, for instance from
`nasgraph search residual --dataset fashion-mnist --budget 1M --sampler random --trials 50
--epochs 2 --final-seeds 0 --workers 2`. Every complete trial within budget is scored with
`nasgraph.search.proxies` on one batch of the study's own training data (its dataset and
seed, from the study's stored settings), with weights drawn under torch seed `--seed`.
A proxy that is undefined for a candidate (nan) leaves that candidate out of its
correlations; the first NASWOT call includes loading the numba kernels, which the median
leaves out.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

from benchmarks._report import machine, write_section


def scored_trials(folder: Path, batch: int, seed: int) -> tuple[dict, list[dict]]:
    """The study's stored settings, and per complete trial within budget: its validation
    accuracy, each proxy's value and the seconds each took."""
    import optuna
    from optuna.trial import TrialState

    from nasgraph.data import load_dataset
    from nasgraph.search.proxies import PROXIES, seeded_model, training_batch
    from nasgraph.search.runs import StudyFolder

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{folder / 'study.db'}")
    config = study.user_attrs.get("config", {})
    data = load_dataset(config.get("dataset", "digits"), seed=config.get("seed", 0))
    x, y = training_batch(data, batch, seed)
    records = []
    for trial in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        if not trial.user_attrs.get("feasible"):
            continue
        graph = StudyFolder(folder).load_graph(trial.number)
        model = seeded_model(graph, seed)
        record = {"val": trial.values[0], "values": {}, "seconds": {}}
        for name, proxy in PROXIES.items():
            start = time.perf_counter()
            record["values"][name] = proxy(graph, model, x, y)
            record["seconds"][name] = time.perf_counter() - start
        records.append(record)
    return config, records


def correlations(records: list[dict], name: str) -> tuple[float, float, int]:
    """Spearman's rho and Kendall's tau of proxy `name` with the validation accuracy, over
    the candidates where it is defined, and their count."""
    from scipy import stats

    pairs = [(r["values"][name], r["val"]) for r in records
             if math.isfinite(r["values"][name])]
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    values, accs = zip(*pairs, strict=True)
    return (float(stats.spearmanr(values, accs).statistic),
            float(stats.kendalltau(values, accs).statistic), len(pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study folder: runs/<study>/")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = parser.parse_args()
    from nasgraph.search.proxies import PROXIES

    load = os.getloadavg()
    config, records = scored_trials(args.study, args.batch, args.seed)
    if not records:
        raise SystemExit(f"{args.study}: no complete trial within budget to score")
    lines = ["## Zero-cost proxies against trained accuracy", "",
             f"`benchmarks/proxy_quality.py`: {machine()}; study `{args.study.name}` "
             f"(space {config.get('space')}, dataset {config.get('dataset')}, "
             f"{config.get('epochs')} epochs per trial), {len(records)} complete trials "
             f"within budget; one batch of {args.batch} training images, torch seed "
             f"{args.seed}. Rank correlations with the validation accuracy; seconds per "
             "candidate, median over the trials.", "",
             "| proxy | Spearman | Kendall | candidates | median s |",
             "|---|---:|---:|---:|---:|"]
    for name in PROXIES:
        rho, tau, n = correlations(records, name)
        seconds = statistics.median(r["seconds"][name] for r in records)
        lines.append(f"| {name} | {rho:.3f} | {tau:.3f} | {n} | {seconds:.3f} |")
    lines += ["", f"Load average (1 min) {load[0]:.1f} before, {os.getloadavg()[0]:.1f} "
              "after."]
    print("\n".join(lines))
    if args.write:
        write_section("proxy_quality", "\n".join(lines))


if __name__ == "__main__":
    main()
