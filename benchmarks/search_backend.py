"""Wall time of one search with each trainer (`--backend torch|numba|auto`), the same
settings on the same machine: the random sampler with one seed proposes the same
candidates to each, so only the trainer differs. The backends run in turns (torch,
numba, auto; again) after a short untimed search of each, each search in a fresh runs
folder, final retraining included.

    .venv/bin/python -m benchmarks.search_backend [--dataset digits] [--budget 200k]
        [--trials 12] [--epochs 3] [--final-seeds 1] [--repeats 2] [--workers 1] [--write]

With `--workers 2` the search runs two worker processes, and each trains on its share of
the cores (one each on two), whichever the trainer: the comparison at equal cores. Workers
draw trials from one study as they come free, so which candidates a search trains would
depend on timing; the first timed search's candidates are therefore queued, in its order,
into every later one (`study.enqueue_trial`): all train the same candidates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from benchmarks._report import machine, write_section

BACKENDS = ("torch", "numba", "auto")


def one(args: argparse.Namespace, backend: str, candidates: list[dict] | None = None
        ) -> dict:
    """One search with `backend`, timed; `candidates`: parameters to queue as its trials,
    in order. Returns its time, result and the parameters of its finished trials."""
    import optuna
    from optuna.trial import TrialState

    from nasgraph.search.budget import parse_amount
    from nasgraph.search.config import SearchConfig
    from nasgraph.search.run import search

    with tempfile.TemporaryDirectory(prefix="search_backend-") as runs:
        cfg = SearchConfig(space=args.space, dataset=args.dataset,
                           budget_macs=parse_amount(args.budget), trials=args.trials,
                           epochs=args.epochs, final_seeds=args.final_seeds, sampler="random",
                           seed=args.seed, device="cpu", runs_dir=runs, backend=backend,
                           study=f"backend-{backend}", workers=args.workers)

        def queue(study: optuna.Study, remaining: int) -> None:
            for params in candidates or []:
                study.enqueue_trial(params)

        start = time.perf_counter()
        result = search(cfg, on_start=queue)
        seconds = time.perf_counter() - start
        study = optuna.load_study(study_name=cfg.study_name,
                                  storage=f"sqlite:///{cfg.study_dir / 'study.db'}")
        used = [t.user_attrs.get("backend") for t in study.trials if "backend" in t.user_attrs]
        finished = [t for t in sorted(study.trials, key=lambda t: t.number)
                    if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        # each trial's own seconds (fit to budget, training, validation) and graph, by
        # architecture
        per_trial = {t.user_attrs["fingerprint"]: {
            "macs": t.user_attrs.get("macs"), "params": t.user_attrs.get("params"),
            "backend": t.user_attrs.get("backend"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
            "graph": cfg.folder.trial_file(t.number, "graph.json").read_text()}
            for t in finished if "fingerprint" in t.user_attrs}
    best = result.best or {}
    return {"backend": backend, "seconds": seconds, "val": best.get("val_accuracy"),
            "test": best.get("test_accuracy"), "numba_trials": used.count("numba"),
            "trials": len(used), "phases": result.seconds,
            "candidates": [t.params for t in finished], "per_trial": per_trial}


def trial_table(runs: list[dict]) -> str:
    """Each candidate's trial seconds by trainer (medians over the turns), where every
    search trained the same candidates: which of them a trainer trains faster."""
    rows = ["| candidate | MACs | params | torch s | numba s | numba / torch | auto chose |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for i, (key, first) in enumerate(runs[0]["per_trial"].items()):
        secs = {b: [r["per_trial"][key]["seconds"] for r in runs
                    if r["backend"] == b and key in r["per_trial"]] for b in BACKENDS}
        if not secs["torch"] or not secs["numba"]:
            continue
        t, n = statistics.median(secs["torch"]), statistics.median(secs["numba"])
        chose = [r["per_trial"][key]["backend"] for r in runs
                 if r["backend"] == "auto" and key in r["per_trial"]]
        rows.append(f"| {i} | {first['macs'] / 1e6:.2f}M | {first['params'] / 1e3:.1f}k | "
                    f"{t:.1f} | {n:.1f} | {n / t:.2f}x | {', '.join(map(str, chose)) or '-'} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="residual")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--budget", default="200k")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--final-seeds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="turns of the three backends")
    p.add_argument("--workers", type=int, default=1, help="worker processes per search")
    p.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = p.parse_args()
    # first searches of a process pay its one-time costs (imports, the data set, numba's
    # and torch's first calls): one short search per trainer, not timed
    warm = argparse.Namespace(**{**vars(args), "trials": 1, "epochs": 1, "final_seeds": 0})
    for backend in BACKENDS:
        one(warm, backend)
    runs: list[dict] = []
    for _ in range(args.repeats):
        for backend in BACKENDS:
            fixed = runs[0]["candidates"] if runs and args.workers > 1 else None
            runs.append(one(args, backend, fixed))
    rows = ["| trainer | wall s (each turn) | vs torch | trials s / final retraining s "
            "(each turn) | trials on numba | best val | test |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    torch_s = statistics.median(r["seconds"] for r in runs if r["backend"] == "torch")
    for backend in BACKENDS:
        mine = [r for r in runs if r["backend"] == backend]
        secs = [r["seconds"] for r in mine]
        test = mine[-1]["test"]
        rows.append(f"| {backend} | {statistics.median(secs):.1f} "
                    f"({', '.join(f'{s:.1f}' for s in secs)}) | "
                    f"{statistics.median(secs) / torch_s:.2f}x | "
                    + ", ".join(f"{r['phases'].get('trials', 0):.1f} / "
                                f"{r['phases'].get('report and final retraining', 0):.1f}"
                                for r in mine) + " | "
                    f"{mine[-1]['numba_trials']}/{mine[-1]['trials']} | "
                    f"{mine[-1]['val']:.2%} | {'-' if test is None else f'{test:.2%}'} |")
    text = (f"`python -m benchmarks.search_backend --dataset {args.dataset} --budget "
            f"{args.budget} --trials {args.trials} --epochs {args.epochs} --final-seeds "
            f"{args.final_seeds} --repeats {args.repeats}"
            f"{f' --workers {args.workers}' if args.workers > 1 else ''}`: {machine()}; "
            f"space `{args.space}`, random sampler, seed {args.seed}; "
            + ("one worker; each trainer on the threads it picks itself" if args.workers == 1
               else f"{args.workers} workers, each on its share of the cores "
               "(`share_cores`), both trainers; every search trains the first one's "
               "candidates, queued in its order")
            + ". The trainers start from the same weights but "
            "draw batch order and shifts from different generators (torch's, numpy's), so "
            "their accuracies differ by training noise; best val and test are the last "
            "turn's.\n\n" + "\n".join(rows))
    if args.workers > 1:  # the same candidates in every search: each one's trial time
        text += "\n\nEach candidate's trial, seconds:\n\n" + trial_table(runs)
    print(text)
    if args.write:
        name = args.dataset + (f"_workers{args.workers}" if args.workers > 1 else "")
        write_section(f"search_backend_{name}",
                      f"## A search's wall time by trainer, {args.dataset}"
                      f"{f', {args.workers} workers' if args.workers > 1 else ''} (issue 22)"
                      "\n\n" + text)


if __name__ == "__main__":
    main()
