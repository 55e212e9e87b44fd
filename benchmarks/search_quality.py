"""Does the search beat hand designs, and which strategy spends a fixed time best (issue 20)?

Each search strategy runs at the same wall-clock budget (`--time-budget`, the final
retraining included) for several search seeds, on digits at 200k MACs and Fashion-MNIST at
1M MACs; four hand designs (plain CNN, ResNet, MobileNetV2-style, DenseNet-BC-style), each
scaled by width onto the same MAC budget, are retrained as the search retrains its best
(train + validation, the default recipe, seeds 10000, ...; epochs: the median the searches'
final retrainings got) and tested.

    .venv/bin/python -m benchmarks.search_quality --dataset digits --seeds 3 \
        --json runs/search_quality.json --write          # 5 x 3 x 5 min + hand, ~1.5 h
    .venv/bin/python -m benchmarks.search_quality --dataset fashion-mnist --seeds 3 \
        --json runs/search_quality.json --resume --write # 5 x 3 x 30 min + hand, ~8.5 h
    .venv/bin/python -m benchmarks.search_quality --from-json runs/search_quality.json \
        --write                                          # re-report, no training
    .venv/bin/python -m benchmarks.search_quality --quick      # smoke run, writes no docs

Strategies: `random` (random sampler, no pruner), `tpe` (TPE, no pruner), `tpe+screen`
(TPE after `--screen N` zero-cost screening), `halving` (TPE, successive halving) and
`screen+halving`. Per run: the best validation accuracy against seconds since the search
started (complete trials within budget), the final test accuracy (mean over the final
retrainings), where the time went, and whether the run ended within its budget + 5%.
With `--write`, the tables go into docs/benchmarks.md (section `search_quality`) and the
curves into docs/img/search_quality_<dataset>.png. `--json` is rewritten after every run;
`--resume` keeps what it holds and skips those runs, so the second command above adds
Fashion-MNIST to the digits results and the section shows both (`--write` replaces it).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._report import DOC, machine, write_section
from nasgraph import GraphBuilder, analysis
from nasgraph.ir import Graph, Tensor
from nasgraph.motifs import (
    DenseBlock,
    InvertedResidual,
    ResidualBlock,
    Transition,
    conv_unit,
    dense_block,
    inverted_residual,
    inverted_residual_stage,
    residual_stage,
    transition,
)

STRATEGIES: dict[str, dict[str, Any]] = {  # screen: True takes `--screen N`
    "random": {"sampler": "random", "pruner": "none"},
    "tpe": {"sampler": "tpe", "pruner": "none"},
    "tpe+screen": {"sampler": "tpe", "pruner": "none", "screen": True},
    "halving": {"sampler": "tpe", "pruner": "halving"},
    "screen+halving": {"sampler": "tpe", "pruner": "halving", "screen": True},
}
# per dataset: MAC budget, seconds per search, epochs per trial
DEFAULTS: dict[str, tuple[int, float, int]] = {
    "digits": (200_000, 300.0, 10),
    "fashion-mnist": (1_000_000, 1800.0, 2),
}
TRIALS = 100_000  # as the CLI under --time-budget: the time decides how many
FINAL_SEED = 10_000  # the final retraining's first seed (nasgraph/search/report.py)
SLACK = 1.05  # a run within its budget + 5% counts as within budget
IMG = DOC.parent / "img"

Design = Callable[[tuple[int, int, int], int, float], Graph]


# ------------------------------------------------------------------------- hand designs


def _plan(shape: tuple[int, int, int]) -> tuple[int, int]:
    """Stem stride and stage count as the search's skeleton chooses them: a stride-2 stem
    from 16 px, stages halving the map down to 4x4 - 8x8 (8x8 digits: 2; 28x28: 3)."""
    stride = 1 if min(shape[1:]) < 16 else 2
    side, stages = -(-min(shape[1:]) // stride), 1
    while stages < 3 and (side + 1) // 2 >= 4:
        side, stages = (side + 1) // 2, stages + 1
    return stride, stages


def _w(channels: float, m: float) -> int:
    """Widths round to 1, not to multiples of 4 or 8: at a few channels, a step of 4 would
    leave much of a small budget unused (the search grows single widths again instead)."""
    return max(2, round(channels * m))


def _head(b: GraphBuilder, x: Tensor, classes: int) -> Graph:
    b.output(b.linear(b.flatten(b.gap(x)), classes))
    return b.build()


def _stem(name: str, shape: tuple[int, int, int], width: int, **unit: object
          ) -> tuple[GraphBuilder, Tensor, int]:
    """The builder, a 3x3 stem of `width` at the stride the search's skeleton would take,
    and the number of stages after it."""
    stride, stages = _plan(shape)
    b = GraphBuilder(name)
    with b.scope("stem"):
        x = conv_unit(b, b.input(*shape), width, 3, stride=stride, **unit)
    return b, x, stages


def plain_cnn(shape: tuple[int, int, int], classes: int, m: float) -> Graph:
    """VGG-like: a 3x3 stem of 16, then two 3x3 conv-BN-ReLU per stage, 16 x 2^i wide."""
    b, x, stages = _stem("plain_cnn", shape, _w(16, m))
    for i in range(stages):
        for k in range(2):
            with b.scope(f"stage{i + 1}/{k}"):
                x = conv_unit(b, x, _w(16 * 2**i, m), 3, stride=2 if i and not k else 1)
    return _head(b, x, classes)


def resnet(shape: tuple[int, int, int], classes: int, m: float) -> Graph:
    """CIFAR ResNet-style: a 3x3 stem of 16, two basic blocks per stage, 16 x 2^i wide."""
    b, x, stages = _stem("resnet", shape, _w(16, m))
    for i in range(stages):
        with b.scope(f"stage{i + 1}"):
            x = residual_stage(b, x, ResidualBlock(planes=_w(16 * 2**i, m),
                                                   stride=2 if i else 1), 2)
    return _head(b, x, classes)


def mobilenet_v2(shape: tuple[int, int, int], classes: int, m: float) -> Graph:
    """MobileNetV2-style: a 3x3 stem of 32, an inverted residual of expansion 1 to 16, two
    of expansion 6 per stage (24, 32, 64 wide), a 1x1 conv to 4x the last width."""
    b, x, stages = _stem("mobilenet_v2", shape, _w(32, m), act="relu6")
    widths = (24, 32, 64)[:stages]
    with b.scope("first"):
        x = inverted_residual(b, x, InvertedResidual(out_channels=_w(16, m), expand_ratio=1))
    for i, width in enumerate(widths):
        with b.scope(f"stage{i + 1}"):
            x = inverted_residual_stage(b, x, InvertedResidual(
                out_channels=_w(width, m), expand_ratio=6, stride=2 if i else 1), 2)
    with b.scope("last"):
        x = conv_unit(b, x, _w(4 * widths[-1], m), 1, act="relu6")
    return _head(b, x, classes)


def densenet_bc(shape: tuple[int, int, int], classes: int, m: float) -> Graph:
    """DenseNet-BC-style: a 3x3 stem of 2k, dense blocks of 4 bottleneck layers of growth
    k = 12, transitions keeping half the channels; BN-ReLU before the head."""
    growth = _w(12, m)
    b, x, stages = _stem("densenet_bc", shape, 2 * growth, bn=False, act=None)
    for i in range(stages):
        with b.scope(f"stage{i + 1}"):
            if i:
                with b.scope("transition"):
                    x = transition(b, x, Transition(compression=0.5))
            x = dense_block(b, x, DenseBlock(num_layers=4, growth_rate=growth, bn_size=4))
    return _head(b, b.relu(b.bn(x)), classes)


HAND: dict[str, Design] = {"plain CNN": plain_cnn, "ResNet": resnet,
                           "MobileNetV2": mobilenet_v2, "DenseNet-BC": densenet_bc}


def fitted(design: Design, shape: tuple[int, int, int], classes: int,
           budget: int) -> tuple[Graph, float]:
    """The design at the largest width multiplier (to 1%) whose MACs are within `budget`
    (a bisection on a log scale; widths round to multiples of 4, so MACs grow in steps)."""
    def fits(m: float) -> bool:
        return analysis.macs(design(shape, classes, m)) <= budget

    lo, hi = 1 / 16, 16.0
    if not fits(lo):
        raise ValueError(f"{design.__name__}: over {budget} MACs even at width x{lo}")
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return design(shape, classes, lo), lo


# ----------------------------------------------------------------------------- running


def run_search(dataset: str, strategy: str, seed: int, args: argparse.Namespace,
               budget: int, seconds: float, epochs: int) -> dict[str, Any]:
    """One search in a fresh runs folder; what it found and when."""
    import optuna
    from optuna.trial import TrialState

    from nasgraph.search.config import SearchConfig
    from nasgraph.search.run import search

    options = dict(STRATEGIES[strategy])
    options["screen"] = args.screen if options.get("screen") else 0
    with tempfile.TemporaryDirectory(prefix="search_quality-") as runs:
        cfg = SearchConfig(space=args.space, dataset=dataset, budget_macs=budget,
                           trials=TRIALS, epochs=epochs, final_seeds=args.final_seeds,
                           final_share=args.final_share,
                           time_budget=seconds, seed=seed, device=args.device, runs_dir=runs,
                           workers=args.workers,
                           study=f"sq-{dataset}-{strategy.replace('+', '_')}-{seed}",
                           **options)
        start = time.time()
        result = search(cfg)
        total = time.time() - start
        # [seconds since the start, state, val or None] of every finished trial, whichever
        # worker ran it
        study = optuna.load_study(study_name=cfg.study_name,
                                  storage=f"sqlite:///{cfg.study_dir / 'study.db'}")
        events = sorted(
            [round(t.datetime_complete.timestamp() - start, 2), t.state.name.lower(),
             t.values[0] if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible")
             and t.values else None]
            for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None)
    best = result.best or {}
    retrained = best.get("final_training") is not None
    return {
        "dataset": dataset, "strategy": strategy, "seed": seed, "events": events,
        "test": best.get("test_accuracy"), "test_runs": best.get("test_accuracy_runs", []),
        "retrained": retrained, "final_epochs": best.get("final_epochs") if retrained else 0,
        "final_seeds": best.get("final_seeds", 0) if retrained else 0,
        "best_val": best.get("val_accuracy"), "best_trial": best.get("trial"),
        "macs": best.get("macs"), "params": best.get("params"),
        "trials": result.trials, "feasible_fraction": result.feasible_fraction,
        "interrupted": result.interrupted, "seconds": round(total, 1),
        "phases": result.seconds, "within_budget": total <= SLACK * seconds,
    }


def run_hand(dataset: str, name: str, budget: int, epochs: int, seeds: int,
             device: str) -> dict[str, Any]:
    """A hand design fitted to `budget`, retrained as the search retrains its best."""
    from nasgraph.data import load_dataset
    from nasgraph.train import Recipe, accuracy, concat_splits, train

    data = load_dataset(dataset)  # train + validation is the same set for every seed
    graph, m = fitted(HAND[name], data.input_shape, data.num_classes, budget)
    accs, start = [], time.perf_counter()
    for k in range(seeds):
        run = train(graph, data, Recipe(), epochs=epochs, device=device, seed=FINAL_SEED + k,
                    train_split=concat_splits(data.train, data.val), val_split=data.test)
        accs.append(accuracy(run.model, data.test))
    return {"name": name, "width": round(m, 3), "macs": analysis.macs(graph),
            "params": analysis.params(graph), "epochs": epochs, "accs": accs,
            "seconds": round((time.perf_counter() - start) / max(1, seeds), 1)}


def hand_epochs(searches: list[dict[str, Any]], epochs: int) -> int:
    """The median of the final epochs the searches got (their schedule fits them to the
    time left); the SearchConfig default, 3 x epochs, when none was retrained."""
    got = [s["final_epochs"] for s in searches if s["retrained"]]
    return round(statistics.median(got)) if got else 3 * epochs


# --------------------------------------------------------------------------- reporting


def curve(events: list[list[Any]]) -> list[tuple[float, float]]:
    """(seconds, best validation accuracy so far) at each improvement."""
    points: list[tuple[float, float]] = []
    for t, _state, val in sorted(events, key=lambda e: e[0]):
        if val is not None and (not points or val > points[-1][1]):
            points.append((t, val))
    return points


def best_at(points: list[tuple[float, float]], t: float) -> float:
    return max((v for s, v in points if s <= t), default=math.nan)


def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def pct(mean: float, sd: float = math.nan) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.2%}" + (f" +- {100 * sd:.2f}" if math.isfinite(sd) else "")


def spread(counts: list[int]) -> str:
    """'31' for one run, '31 (28-35)': the mean and the range over several."""
    mean = f"{statistics.fmean(counts):.0f}"
    return mean if len(counts) < 2 else f"{mean} ({min(counts)}-{max(counts)})"


def margin(a: list[float], b: list[float]) -> str:
    """Difference of means in points, +- the standard error of the difference (Welch)."""
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return "-"
    se = math.sqrt(sa**2 / len(a) + sb**2 / len(b)) if math.isfinite(sa + sb) else math.nan
    return f"{100 * (ma - mb):+.2f}" + (f" +- {100 * se:.2f}" if math.isfinite(se) else "")


def dataset_section(name: str, block: dict[str, Any], img: str | None) -> list[str]:
    """The tables of one dataset: strategies, hand designs, margins."""
    budget, seconds, epochs = block["budget"], block["time_budget"], block["epochs"]
    searches, hand = block["searches"], block["hand"]
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in searches)]
    tests = {s: [r["test"] for r in searches if r["strategy"] == s and r["test"] is not None]
             for s in strategies}
    best_hand = max(hand, key=lambda h: statistics.fmean(h["accs"]), default=None)
    lines = [f"### {name}: {budget / 1e6:g}M MACs, {seconds:g} s per search, {epochs} epochs "
             f"per trial, space `{block['space']}`", "",
             "| strategy | test | vs random | vs best hand | best val | trials | "
             "final retraining | wall s, mean (max) | trials s / final s | within budget |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in strategies:
        runs = [r for r in searches if r["strategy"] == s]
        vals = [r["best_val"] for r in runs if r["best_val"] is not None]
        finals = sorted({f"{r['final_seeds']} x {r['final_epochs']}" for r in runs})
        pruned = [sum(e[1] == "pruned" for e in r["events"]) for r in runs]
        phases = [statistics.fmean(r["phases"].get(k, 0.0) for r in runs)
                  for k in ("trials", "report and final retraining")]
        lines.append(
            f"| {s} | {pct(*mean_sd(tests[s]))} | "
            f"{margin(tests[s], tests.get('random', [])) if s != 'random' else ''} | "
            f"{margin(tests[s], best_hand['accs']) if best_hand else '-'} | "
            f"{pct(*mean_sd(vals))} | {spread([r['trials'] for r in runs])}, "
            f"{statistics.fmean(pruned):.0f} pruned | {', '.join(finals)} | "
            f"{statistics.fmean(r['seconds'] for r in runs):.0f} "
            f"({max(r['seconds'] for r in runs):.0f}) | {phases[0]:.0f} / {phases[1]:.0f} | "
            f"{sum(r['within_budget'] for r in runs)}/{len(runs)} |")
    lines += ["", "| hand design | width x | MACs | params | epochs | test | s per training |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for h in hand:
        lines.append(f"| {h['name']} | {h['width']:.2f} | {h['macs'] / 1e3:.1f}k | "
                     f"{h['params'] / 1e3:.1f}k | {h['epochs']} | {pct(*mean_sd(h['accs']))}"
                     f" | {h['seconds']:.0f} |")
    ranked = sorted(strategies, key=lambda s: -mean_sd(tests[s])[0]
                    if tests[s] else math.inf)
    if ranked and tests[ranked[0]]:
        top = ranked[0]
        parts = [f"Best strategy `{top}`"]
        if best_hand:
            parts.append(f"{margin(tests[top], best_hand['accs'])} points over the best "
                         f"hand design ({best_hand['name']})")
        if top != "random" and tests.get("random"):
            parts.append(f"{margin(tests[top], tests['random'])} over `random`")
        lines += ["", ", ".join(parts) + " (difference of means +- its standard error, "
                  "Welch; picking the best of the strategies flatters it)."]
    if img:
        lines += ["", f"![best validation accuracy against time, {name}]({img})"]
    return lines


def section(report: dict[str, Any], images: dict[str, str]) -> str:
    seeds = sorted({r["seed"] for b in report["datasets"].values() for r in b["searches"]})
    lines = [
        "## Search strategies at a fixed time budget, against hand designs (issue 20)", "",
        f"{', then '.join(f'`{c}`' for c in report['commands'])}: {report['machine']}, "
        f"torch {report['torch']}. Every search "
        f"seed ({', '.join(map(str, seeds))}) of every strategy gets the same wall-clock "
        "budget, final retraining included (`--time-budget`; the schedule keeps a third for "
        "the final retraining and fits its epochs to the time left). Test: the best "
        "candidate retrained from scratch on train + validation and tested, mean over its "
        f"retrainings (seeds {FINAL_SEED}, ...), then mean +- sd over the search seeds. "
        "vs random / vs best hand: difference in points +- its standard error. Best val: "
        "the best trial's validation accuracy. Trials: finished, mean (range) over the "
        "seeds, and of them pruned (halving, or cut when the trials' time ran out). Final "
        "retraining: the seeds x epochs the schedule gave. Wall: seconds of a whole search, "
        "mean (max); of them, on average, the trials and the report with the final "
        "retraining. Hand designs: each scaled by one width multiplier to "
        "the largest that fits the MAC budget, then trained as the final retraining, for "
        "the median of the final epochs the searches got; test mean +- sd over the "
        "retraining seeds.", ""]
    for name, block in report["datasets"].items():
        lines += dataset_section(name, block, images.get(name)) + [""]
    return "\n".join(lines)


def plot(name: str, block: dict[str, Any], path: Path) -> None:
    """Best validation accuracy against time per strategy: mean over the search seeds,
    shaded from the lowest to the highest seed, from when every seed has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nasgraph.search.schedule import Schedule

    seconds = block["time_budget"]
    grid = [seconds * k / 200 for k in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, style in zip(STRATEGIES, ["-", "--", "-.", ":", (0, (5, 1, 1, 1))], strict=True):
        curves = [curve(r["events"]) for r in block["searches"] if r["strategy"] == s]
        if not curves:
            continue
        # from when every seed has a trained candidate: the mean of fewer would jump
        columns = [(t, [best_at(c, t) for c in curves]) for t in grid]
        defined = [(t, col) for t, col in columns if all(math.isfinite(v) for v in col)]
        if not defined:
            continue
        ts = [t for t, _ in defined]
        line, = ax.step(ts, [statistics.fmean(c) for _, c in defined], where="post", ls=style,
                        label=f"{s} ({len(curves)} seeds)")
        ax.fill_between(ts, [min(c) for _, c in defined], [max(c) for _, c in defined],
                        step="post", alpha=0.15, color=line.get_color())
    ax.axvline(Schedule(seconds, 0.0).trials_end, color="gray", ls=":", lw=1, label="trials stop")
    ax.set_xlabel("seconds since the search started")
    ax.set_ylabel("best validation accuracy")
    ax.set_title(f"{name}: {block['budget'] / 1e6:g}M MACs, {seconds:g} s per search")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def save(report: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


# -------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["digits", "fashion-mnist", "both"], default="both")
    p.add_argument("--space", default="residual")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="comma-separated, of " + ", ".join(STRATEGIES))
    p.add_argument("--seeds", type=int, default=3, help="search seeds 0, 1, ...")
    p.add_argument("--budget-macs", type=int, help="default: 200k digits, 1M fashion-mnist")
    p.add_argument("--time-budget", type=float, help="seconds per search; default: 300 "
                   "digits, 1800 fashion-mnist")
    p.add_argument("--epochs", type=int, help="per trial; default: 10 digits, 2 fashion")
    p.add_argument("--screen", type=int, default=128, help="candidates screened (screen "
                   "strategies)")
    p.add_argument("--final-seeds", type=int, default=3)
    # the runs in docs/benchmarks.md kept a third; `nasgraph search --time-budget` keeps 0.6
    p.add_argument("--final-share", type=float, default=1 / 3,
                   help="of the time budget, for the final retraining")
    p.add_argument("--hand", default=",".join(HAND),
                   help="comma-separated hand designs, of " + ", ".join(HAND))
    p.add_argument("--hand-epochs", type=int, help="default: the median of the searches' "
                   "final epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes per search (as make demo runs it)")
    p.add_argument("--json", type=Path, help="raw results, rewritten after every run")
    p.add_argument("--resume", action="store_true", help="skip the runs --json holds")
    p.add_argument("--from-json", type=Path, help="re-report these results; no training")
    p.add_argument("--img-dir", type=Path, help="where the plots go; default with --write: "
                   "docs/img")
    p.add_argument("--write", action="store_true", help="into docs/benchmarks.md")
    p.add_argument("--quick", action="store_true", help="smoke run: digits, 1 seed, "
                   "random and screen+halving, 45 s each, hand designs 3 epochs; writes no docs")
    args = p.parse_args(argv)
    if unknown := set(args.hand.split(",")) - set(HAND):
        p.error(f"--hand {sorted(unknown)[0]!r}: expected some of {', '.join(HAND)}")
    if args.quick:
        args.dataset, args.seeds, args.strategies = "digits", 1, "random,screen+halving"
        args.time_budget, args.epochs, args.screen = 45.0, 3, 16
        args.final_seeds, args.hand_epochs = 1, args.hand_epochs or 3
        args.write = False
    unknown = set(args.strategies.split(",")) - set(STRATEGIES)
    if unknown:
        p.error(f"--strategies: unknown {', '.join(sorted(unknown))}")
    if args.img_dir is None and args.write:
        args.img_dir = IMG
    return args


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every search and hand design the arguments ask for, saved to --json as it goes."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report: dict[str, Any] = {"commands": [], "machine": machine(),
                              "torch": torch.__version__, "datasets": {}}
    if args.resume and args.json and args.json.exists():
        report = json.loads(args.json.read_text())
    report["commands"].append(command)
    datasets = list(DEFAULTS) if args.dataset == "both" else [args.dataset]
    for dataset in datasets:
        budget_d, seconds_d, epochs_d = DEFAULTS[dataset]
        budget = args.budget_macs or budget_d
        seconds = args.time_budget or seconds_d
        epochs = args.epochs or epochs_d
        block = report["datasets"].setdefault(dataset, {
            "budget": budget, "time_budget": seconds, "epochs": epochs, "space": args.space,
            "screen": args.screen, "final_seeds": args.final_seeds, "searches": [],
            "hand": []})
        for seed in range(args.seeds):
            for strategy in args.strategies.split(","):
                if any(r["strategy"] == strategy and r["seed"] == seed
                       for r in block["searches"]):
                    continue
                print(f"{dataset}: {strategy}, seed {seed}, {seconds:g} s ...", flush=True)
                r = run_search(dataset, strategy, seed, args, budget, seconds, epochs)
                block["searches"].append(r)
                save(report, args.json)
                print(f"  test {pct(r['test'] or math.nan)}, best val "
                      f"{pct(r['best_val'] or math.nan)}, {r['trials']} trials, "
                      f"{r['seconds']:.0f} s {r['phases']}, final {r['final_seeds']} x "
                      f"{r['final_epochs']} epochs", flush=True)
        epochs_h = args.hand_epochs or hand_epochs(block["searches"], epochs)
        for name in args.hand.split(","):
            if any(h["name"] == name for h in block["hand"]):
                continue
            print(f"{dataset}: hand {name}, {epochs_h} epochs x {args.final_seeds} ...",
                  flush=True)
            block["hand"].append(run_hand(dataset, name, budget, epochs_h, args.final_seeds,
                                          args.device))
            save(report, args.json)
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
    else:
        command = "python -m benchmarks.search_quality " + shlex.join(
            sys.argv[1:] if argv is None else argv)
        report = run(args, command.strip())
    images: dict[str, str] = {}
    if args.img_dir is not None:
        for name, block in report["datasets"].items():
            path = args.img_dir / f"search_quality_{name}.png"
            plot(name, block, path)
            images[name] = (f"img/{path.name}" if path.parent.resolve() == IMG.resolve()
                            else str(path))
    text = section(report, images)
    print("\n" + text)
    if args.write:
        write_section("search_quality", text)


if __name__ == "__main__":
    main()
