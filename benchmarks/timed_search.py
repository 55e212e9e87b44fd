"""The timed search over several search seeds, against random search at the same wall clock
and against the best hand design with the same final training (issue 20's proof).

Each seed runs, in turns, the CLI's timed search as a user types it,

    nasgraph search residual --dataset fashion-mnist --budget 1M --time-budget 30m

(its defaults: screening, successive halving, two final retrainings side by side), and
random search with the same time budget and final retraining (`--sampler random --pruner
none --screen 0`). The hand design is `search_quality`'s plain CNN scaled onto the budget,
trained by `fashion_limits` for the median of the final epochs the searches got; its runs
are read from that benchmark's JSON (the command to make them is printed when missing).

    python -m benchmarks.timed_search --runs-dir DIR [--seeds 0,1,2] [--hand-json FILE]
        [--write]

A run whose folder holds `wall.json` is not run again: the seeds can be run a few at a time.
Wall clock: the whole command, measured around it. Each finished run's result is kept in
`--record` (default `benchmarks/results/timed_search.json`, committed) with the revision
and machine it ran on, and the report is made from the record: runs made in different
sessions, whose run folders are gone, report together.

`--replay-final` replays the final retraining of runs made before a timed search chose its
final network by `schedule.level_and_fastest` (it retrained the best by validation
accuracy): where the rule picks another trial of the same study, that trial is retrained
with the run's own final seeds, planned as a search plans it (and cut after its first
epoch when they do not fit) to end in the time the run's final retraining had (the least
it can have had: its epochs times its seconds per epoch as planned), and `replay.json`
beside `wall.json` then stands for the run's result. The trials do not depend on the
rule, which acts after them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _report
from benchmarks._report import machine, write_section
from benchmarks._revision import ROOT

RECORD = ROOT / "benchmarks" / "results" / "timed_search.json"
HAND = ROOT / "benchmarks" / "results" / "timed_search_hand.json"

STRATEGIES = {"search": [], "random": ["--sampler", "random", "--pruner", "none",
                                       "--screen", "0"]}


def command(args: argparse.Namespace, strategy: str, seed: int, folder: Path) -> list[str]:
    return ["nasgraph", "search", args.space, "--dataset", args.dataset, "--budget",
            args.budget, "--time-budget", args.time_budget, "--seed", str(seed),
            *STRATEGIES[strategy], "--runs-dir", str(folder)]


def run(args: argparse.Namespace, strategy: str, seed: int) -> None:
    folder = args.runs_dir / f"{strategy}-s{seed}"
    if (folder / "wall.json").is_file():
        return
    argv = command(args, strategy, seed, folder)
    print(" ".join(argv), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nasgraph", *argv[1:]], check=True)
    (folder / "wall.json").write_text(json.dumps(
        {"seconds": round(time.perf_counter() - start, 1), "command": " ".join(argv)}))


def replay_final(folder: Path) -> None:
    """Retrain the trial `level_and_fastest` picks from the run in `folder` when it is not
    the one the run retrained; write `replay.json`."""
    import optuna
    import torch

    from nasgraph.data import load_dataset
    from nasgraph.search.config import SearchConfig
    from nasgraph.search.final import parallel_seeds, retrainings
    from nasgraph.search.run import trained_trials
    from nasgraph.search.schedule import MARGIN, REPORT_SECONDS, Schedule, level_and_fastest

    best_file = next(folder.glob("*/best/result.json"))
    old = json.loads(best_file.read_text())
    storage = f"sqlite:///{best_file.parent.parent / 'study.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0],
                              storage=storage)
    cfg = SearchConfig.model_validate(study.user_attrs["config"])
    data = load_dataset(cfg.dataset, seed=cfg.seed)
    trained = {t.number: t for t in trained_trials(study)}
    pick = level_and_fastest(list(trained.values()), val_images=len(data.val))
    if pick == old["trial"]:
        return
    cpu, final_images = torch.device("cpu"), len(data.train) + len(data.val)
    parallel = parallel_seeds(cfg.model_copy(update={"final_seeds": old["final_seeds"]}), cpu)
    rounds = math.ceil(old["final_seeds"] / parallel)
    epoch = (trained[old["trial"]].train_seconds / cfg.epochs * final_images
             / len(data.train) * MARGIN)
    left = old["final_epochs"] * rounds * epoch  # the least the run's retraining had
    plan = Schedule(budget=left + REPORT_SECONDS, start=0.0).final_plan(
        now=0.0, seconds_per_epoch=trained[pick].train_seconds / cfg.epochs,
        seeds=old["final_seeds"], train_images=len(data.train), final_images=final_images,
        parallel=parallel)
    # planned as the search plans it, and again after the first epoch, to end in `left`
    replayed = cfg.model_copy(update={"final_seeds": plan.seeds, "final_epochs": plan.epochs,
                                      "final_until": time.time() + left})
    print(f"{folder}: retraining trial {pick}, not {old['trial']}: {plan.seeds} x "
          f"{plan.epochs} epochs planned in the {left:.0f} s the run had", flush=True)
    start = time.perf_counter()
    runs = list(retrainings(replayed, cfg.folder.load_graph(pick), data, cpu, None))
    accs = [r.test_accuracy for r in runs]
    t = study.trials[pick]
    (folder / "replay.json").write_text(json.dumps({
        "trial": pick, "replaces_trial": old["trial"], "val_accuracy": trained[pick].val_accuracy,
        "macs": t.user_attrs["macs"], "params": t.user_attrs["params"],
        "test_accuracy": statistics.fmean(accs), "test_accuracy_runs": accs,
        "final_epochs": max(r.epochs for r in runs),
        "final_epochs_runs": [r.epochs for r in runs], "final_epochs_planned": plan.epochs,
        "final_seconds_allowed": round(left, 1),
        "final_seconds": round(time.perf_counter() - start, 1)}))


def result(args: argparse.Namespace, strategy: str, seed: int) -> dict:
    """The record of the run in `args.runs_dir`: what the report shows of it."""
    folder = args.runs_dir / f"{strategy}-s{seed}"
    best = json.loads(next(folder.glob("*/best/result.json")).read_text())
    if (folder / "replay.json").is_file():
        best = {**best, **json.loads((folder / "replay.json").read_text())}
    runs = best["test_accuracy_runs"]
    return {"strategy": strategy, "seed": seed, "test": best["test_accuracy"], "runs": runs,
            "sd": statistics.stdev(runs) if len(runs) > 1 else 0.0,
            "epochs": best["final_epochs"], "macs": best["macs"], "params": best["params"],
            "val": best["val_accuracy"],
            "wall": json.loads((folder / "wall.json").read_text())["seconds"],
            "trial": best.get("trial"), "replayed": "replaces_trial" in best,
            "epochs_text": " + ".join(map(str, best["final_epochs_runs"]))
            if len(set(best.get("final_epochs_runs", []))) > 1
            else f"{len(runs)} x {best['final_epochs']}",
            "final_seconds": best.get("final_seconds"),
            "final_seconds_allowed": best.get("final_seconds_allowed")}


def revision() -> str:
    """The git revision the benchmark runs from, `+` when its package has changes."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain",
                                                             "nasgraph") else "")


def record(args: argparse.Namespace, seeds: list[int]) -> list[dict]:
    """Bring the runs of `args.runs_dir` into the record file and return the record. A run
    recorded with the same result keeps the revision, machine and date it was recorded
    with: they say where it ran."""
    kept = json.loads(args.record.read_text()) if args.record.is_file() else []
    by_key = {(r["strategy"], r["seed"]): r for r in kept}
    for seed in seeds:
        for strategy in STRATEGIES:
            if not (args.runs_dir / f"{strategy}-s{seed}" / "wall.json").is_file():
                continue
            new, old = result(args, strategy, seed), by_key.get((strategy, seed), {})
            if any(old.get(k) != v for k, v in new.items()):
                by_key[strategy, seed] = {**new, "revision": revision(),
                                          "machine": machine(),
                                          "date": time.strftime("%Y-%m-%d")}
    kept = sorted(by_key.values(), key=lambda r: (list(STRATEGIES).index(r["strategy"]),
                                                  r["seed"]))
    args.record.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.record.with_name(f".{args.record.name}.tmp")
    tmp.write_text(json.dumps(kept, indent=1) + "\n")
    tmp.replace(args.record)
    return kept


def welch(a: list[float], b: list[float]) -> str:
    """Difference of the means in points, +- its standard error."""
    diff, se = _report.welch(a, b)
    return f"{diff * 100:+.2f} +- {se * 100:.2f}"


def report(args: argparse.Namespace, seeds: list[int]) -> str:
    from nasgraph.search import parse_duration

    budget_s = parse_duration(args.time_budget)
    rows = ["| search | seed | best trial val | best: MACs, params | final retraining | "
            "test (mean +- sd of the retrainings) | wall |", "|---|---:|---:|---|---|---:|---:|"]
    kept = {(r["strategy"], r["seed"]): r for r in json.loads(args.record.read_text())}
    missing = [f"{s} seed {seed}" for s in STRATEGIES for seed in seeds
               if (s, seed) not in kept]
    if missing:
        raise SystemExit(f"{args.record}: no record of {', '.join(missing)}: run them with "
                         f"--runs-dir")
    got = {s: [kept[s, seed] for seed in seeds] for s in STRATEGIES}
    for strategy, results in got.items():
        for r in results:
            replayed = (f" (final replayed: {r['final_seconds']:.0f} of "
                        f"{r['final_seconds_allowed']:.0f} s)" if r["replayed"] else "")
            val = "n/a" if r["val"] is None else f"{r['val']:.2%}"
            rows.append(f"| {strategy}{replayed} | {r['seed']} | {val} | "
                        f"{r['macs'] / 1e3:.0f}k, "
                        f"{r['params'] / 1e3:.1f}k | {r['epochs_text']} epochs | "
                        f"{r['test']:.2%} +- {r['sd']:.2%} | {r['wall']:.0f} s "
                        f"({r['wall'] / budget_s - 1:+.1%}) |")
    median = round(statistics.median(r["epochs"] for r in got["search"]))
    epochs = args.hand_epochs or median
    hand = [h["test"] for h in hand_runs(args, epochs)]
    summary = ["", "| search | test, mean +- sd over the seeds | wall, mean (max) |",
               "|---|---:|---:|"]
    for strategy, results in got.items():
        tests, walls = [r["test"] for r in results], [r["wall"] for r in results]
        sd = f" +- {statistics.stdev(tests):.2%}" if len(tests) > 1 else ""
        summary.append(f"| {strategy} | {statistics.fmean(tests):.2%}{sd} | "
                       f"{statistics.fmean(walls):.0f} s ({max(walls):.0f} s) |")
    if hand:
        sd = f" +- {statistics.stdev(hand):.2%}" if len(hand) > 1 else ""
        runs = f"{len(hand)} seed{'s' if len(hand) > 1 else ''}"
        summary.append(f"| plain CNN, {epochs} epochs, {runs} | "
                       f"{statistics.fmean(hand):.2%}{sd} | |")
    search = [r["test"] for r in got["search"]]
    margins = [f"search - random: {welch(search, [r['test'] for r in got['random']])} points"]
    if hand:
        margins.append(f"search - plain CNN: {welch(search, hand)} points")
    else:
        margins.append(f"no plain CNN runs of {epochs} epochs in the hand JSON; make them "
                       f"with `python -m benchmarks.fashion_limits --seeds 2 --cells "
                       f"{args.budget}:{epochs}:no --json {shown(args.hand_json or HAND)}`")
    return (f"`python -m benchmarks.timed_search --seeds {','.join(map(str, seeds))}`: "
            f"{provenance(got)}. Search: `{' '.join(command(args, 'search', 0, Path('DIR'))[:9])}"
            f" --seed S`; random: the same with `{' '.join(STRATEGIES['random'])}`, run after "
            "it; one seed after the other. Test: the best candidate retrained from scratch "
            "on train + validation (seeds 10000, ...), mean over its retrainings; wall: the "
            "whole command, against the time budget. The plain CNN is `search_quality`'s, "
            f"scaled onto the budget and trained for {epochs} epochs (the searches' median "
            f"final retraining: {median}; `benchmarks/fashion_limits.py`, seeds 10000, "
            "...).\n\n"
            + "\n".join(rows + summary) + "\n\n" + "; ".join(margins)
            + " (difference of the means +- its standard error)."
            + (" \"Final replayed\": the run's final retraining replayed on the trial "
               "`schedule.level_and_fastest` picks, in the time the run had for it "
               "(`--replay-final`); its seconds against that time in brackets." if any(
                   r["replayed"] for rs in got.values() for r in rs) else "")
            + notes(got))


def notes(got: dict[str, list[dict]]) -> str:
    """The records' notes, each once: ' Search seeds 0, 1 and random seed 0: NOTE'."""
    runs: dict[str, dict[str, list[int]]] = {}
    for strategy, results in got.items():
        for r in results:
            if r.get("note"):
                runs.setdefault(r["note"], {}).setdefault(strategy, []).append(r["seed"])
    text = ""
    for note, by_strategy in runs.items():
        named = [f"{s} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                 for s, seeds in by_strategy.items()]
        text += f" {' and '.join(named).capitalize()}: {note}"
    return text


def provenance(got: dict[str, list[dict]]) -> str:
    """Where the runs ran: 'MACHINE; revision R (date D): search 0, 1; random 0, ...'."""
    machines = sorted({r["machine"] for rs in got.values() for r in rs})
    groups: dict[tuple[str, str], dict[str, list[int]]] = {}
    for strategy, results in got.items():
        for r in results:
            groups.setdefault((r["revision"], r["date"]), {}).setdefault(
                strategy, []).append(r["seed"])
    return "; ".join(machines) + "; " + "; ".join(
        f"revision {rev} ({date}): " + ", ".join(
            f"{s} {', '.join(map(str, seeds))}" for s, seeds in runs.items())
        for (rev, date), runs in sorted(groups.items(), key=lambda g: g[0][1]))


def shown(path: Path) -> Path:
    """`path` as the report shows it: relative to the repository when it is inside."""
    return path.relative_to(ROOT) if path.is_absolute() and path.is_relative_to(ROOT) \
        else path


def hand_runs(args: argparse.Namespace, epochs: int) -> list[dict]:
    if not args.hand_json or not args.hand_json.is_file():
        return []
    from nasgraph.search.budget import parse_amount

    budget = parse_amount(args.budget)
    return [h for h in json.loads(args.hand_json.read_text())
            if (h["budget"], h["epochs"], h["flip"]) == (budget, epochs, False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", type=Path, help="where the runs are made; without it, "
                   "the report is made from the record alone")
    p.add_argument("--record", type=Path, default=RECORD,
                   help="the runs' results, kept across sessions")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--space", default="residual")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--budget", default="1M")
    p.add_argument("--time-budget", default="30m")
    p.add_argument("--hand-json", type=Path, default=HAND, help="fashion_limits' --json")
    p.add_argument("--hand-epochs", type=int, help="the plain CNN's runs of this many "
                   "epochs; default: the searches' median final epochs")
    p.add_argument("--report-only", action="store_true", help="run nothing")
    p.add_argument("--replay-final", action="store_true",
                   help="retrain the final pick of runs made before level_and_fastest")
    p.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.runs_dir and not args.report_only:
        for seed in seeds:
            for strategy in STRATEGIES:
                run(args, strategy, seed)
                record(args, seeds)
    if args.runs_dir and args.replay_final:
        for seed in seeds:
            for strategy in STRATEGIES:
                folder = args.runs_dir / f"{strategy}-s{seed}"
                if not (folder / "replay.json").is_file():
                    replay_final(folder)
    if args.runs_dir:
        record(args, seeds)
    text = report(args, seeds)
    print(text)
    if args.write:
        write_section("timed_search", "## The timed search over search seeds, against random "
                      "search and the plain CNN (issue 20)\n\n" + text)


if __name__ == "__main__":
    main()
