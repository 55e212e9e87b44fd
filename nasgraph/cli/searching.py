"""`nasgraph search` and `nasgraph study show`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nasgraph.cli._common import (
    BudgetOption,
    DatasetOption,
    Debug,
    SpaceArgument,
    app,
    console,
    err_console,
    human,
    one_line_errors,
)
from nasgraph.errors import NasgraphError
from nasgraph.search.schedule import FINAL_SHARE

# --time-budget without --trials: trials until the time is spent
UNBOUNDED_TRIALS = 100_000


@app.command()
@one_line_errors
def search(
    space: SpaceArgument,
    dataset: DatasetOption = "digits",
    budget: BudgetOption = None,
    max_params: Annotated[str | None, typer.Option(help="Most parameters: 50k, 1M.")] = None,
    max_memory: Annotated[str | None, typer.Option(
        help="Most peak activation bytes per image: 64k, 2M.")] = None,
    trials: Annotated[int | None, typer.Option(
        help="Finished trials the study should hold (default 30; with --time-budget, as "
             "many as fit).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after S s.")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Training epochs per trial (default 10; with --time-budget, enough for about "
             "100k images, 1 to 10).")] = None,
    final_epochs: Annotated[int | None, typer.Option(
        help="Epochs of the best's retraining (default 3 x --epochs).")] = None,
    final_seeds: Annotated[int | None, typer.Option(
        help="Retrainings of the best (default 3; with --time-budget 2).")] = None,
    study: Annotated[str | None, typer.Option(
        help="Study name (default SPACE-DATASET).")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL (default sqlite in RUNS_DIR/STUDY).")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder of the runs.")] = "runs",
    objective: Annotated[str, typer.Option(
        help="accuracy, accuracy,macs or accuracy,latency (a Pareto front).")] = "accuracy",
    max_latency: Annotated[str | None, typer.Option(
        help="Most latency per image, predicted on --latency-target: 800us, 2ms "
             "(docs/latency.md).")] = None,
    latency_target: Annotated[str, typer.Option(
        help="Where latency is predicted: numba, torch-cpu, onnxruntime or torch-cuda, "
             ":THREADS (numba:1).")] = "numba:1",
    sampler: Annotated[str, typer.Option(help="tpe, nsga2 or random.")] = "tpe",
    pruner: Annotated[str | None, typer.Option(
        help="Stops weak trials early: median, halving (successive halving, ASHA with "
             "workers), hyperband or none (default median; with --time-budget "
             "halving).")] = None,
    time_budget: Annotated[str | None, typer.Option(
        help="Wall clock for the whole search, final retraining included: 90s, 30m, 1.5h. "
             "The final retraining's epochs are planned to fit.")] = None,
    final_share: Annotated[float, typer.Option(
        help="Of --time-budget, the share kept for the final retraining; the trials get "
             "the rest.")] = FINAL_SHARE,
    screen: Annotated[int | None, typer.Option(
        help="Score this many candidates with zero-cost proxies first and train the most "
             "promising (docs/search.md; default 0; with --time-budget 128).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler, splits and training.")] = 0,
    backend: Annotated[str, typer.Option(
        help="Trainer on a CPU: torch, numba, or auto (the faster for each candidate, "
             "measured).")] = "torch",
    device: Annotated[str, typer.Option(
        help="auto, cpu, cuda, cuda:N; workers take a list in turn: cuda:0,cuda:1.")] = "auto",
    workers: Annotated[int | None, typer.Option(
        help="Worker processes on this machine (docs/distributed.md; default 1; with "
             "--time-budget on a CPU, one per final retraining, at most one per "
             "core).")] = None,
    debug: Debug = False,
) -> None:
    """Search SPACE for the most accurate network within the budget, then retrain the best.

    With --time-budget, the options not given take the settings that did best in a fixed
    wall clock: screening, successive halving, two retrainings side by side.
    Re-running the same command resumes the study. Results go to RUNS_DIR/STUDY/
    (docs/search.md). Runs with the same --storage and --study, on any machines, are workers
    of one study (docs/distributed.md). Example: nasgraph search residual --budget 200k
    """
    from pydantic import ValidationError
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from nasgraph.data import parse_spec
    from nasgraph.search import parse_amount, parse_duration
    from nasgraph.search.budget import parse_latency, parse_target
    from nasgraph.search.config import SearchConfig
    from nasgraph.search.space import load_space

    if objective not in ("accuracy", "accuracy,macs", "accuracy,latency"):
        raise NasgraphError(f"--objective {objective!r}: expected accuracy, accuracy,macs or "
                            "accuracy,latency")
    if backend not in ("torch", "numba", "auto"):
        raise NasgraphError(f"--backend {backend!r}: expected torch, numba or auto")
    if sampler not in ("tpe", "nsga2", "random"):
        raise NasgraphError(f"--sampler {sampler!r}: expected tpe, nsga2 or random")
    if pruner is not None and pruner not in ("median", "halving", "hyperband", "none"):
        raise NasgraphError(f"--pruner {pruner!r}: expected median, halving, hyperband or none")
    if time_budget is not None and final_epochs is not None:
        raise NasgraphError("--final-epochs with --time-budget: the time budget plans the "
                            "final epochs; hint: give one of them")
    # a wrong space or dataset fails here, in a second, before torch is imported
    load_space(space)
    parse_spec(dataset)
    seconds = parse_duration(time_budget) if time_budget is not None else None
    # options not given: SearchConfig's defaults, or a timed search's
    given = {"epochs": epochs, "final_seeds": final_seeds, "pruner": pruner, "screen": screen,
             "workers": workers}
    options = {name: value for name, value in given.items() if value is not None}
    if seconds:
        options = {**_timed_defaults(dataset, seed, device, options), **options}
    try:
        cfg = SearchConfig(
            space=space, dataset=dataset, timeout=timeout,
            trials=trials if trials is not None else (UNBOUNDED_TRIALS if seconds else 30),
            time_budget=seconds, final_share=final_share,
            budget_macs=parse_amount(budget) if budget else None,
            max_params=parse_amount(max_params, "--max-params") if max_params else None,
            max_memory=parse_amount(max_memory, "--max-memory") if max_memory else None,
            max_latency_ms=parse_latency(max_latency) if max_latency else None,
            latency_target=parse_target(latency_target),
            final_epochs=final_epochs, study=study, storage=storage, runs_dir=runs_dir,
            objective=objective, sampler=sampler, seed=seed, device=device, backend=backend,
            **options)
    except ValidationError as e:
        first = e.errors()[0]
        option = f"--{'-'.join(map(str, first['loc'])).replace('_', '-')}"
        raise NasgraphError(f"{option} {first['input']!r}: "
                            f"{first['msg'].removeprefix('Value error, ')}") from None
    from nasgraph.search.run import search as run_search  # torch, optuna: options checked

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.fields[count]}"), TextColumn("{task.fields[best]}"),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        console=err_console, transient=False)
    state: dict = {}

    def on_start(study_obj, remaining: int) -> None:
        err_console.print(f"search {cfg.space!r} on {cfg.dataset!r}, budget "
                          f"{cfg.budget.describe()}, {_trials_text(cfg)} x {cfg.epochs} epochs"
                          f" -> {cfg.study_dir}", highlight=False, soft_wrap=True)
        done = cfg.trials - remaining
        if done:
            err_console.print(f"resuming study {cfg.study_name!r}: {done} trials done")
        progress.start()
        state["start"] = time.time()
        if cfg.time_budget:  # a bar of the trials' time: its ETA is when they stop
            state["seconds"] = max(1.0, _trials_until(cfg) - state["start"])
            state["task"] = progress.add_task("trials", total=state["seconds"],
                                              count=f"{done} done", best=_best_text(study_obj))
        else:
            state["task"] = progress.add_task(f"trials of {cfg.study_name}", total=cfg.trials,
                                              completed=done, count=f"{done}/{cfg.trials}",
                                              best=_best_text(study_obj))

    def counted(study_obj, trial=None) -> None:
        from nasgraph.search.study import finished

        n = len(finished(study_obj))
        if cfg.time_budget:
            progress.update(state["task"], completed=time.time() - state["start"],
                            count=f"{n} done", best=_best_text(study_obj))
        else:
            progress.update(state["task"], completed=min(cfg.trials, n),
                            count=f"{n}/{cfg.trials}", best=_best_text(study_obj))

    def phase_progress(phase: str, done: int, total: int) -> None:
        unit = "candidates" if phase == "screening" else "epochs"
        if phase.startswith("trial "):  # one bar for the trial being trained
            if "trial" not in state:
                state["trial"] = progress.add_task(phase, total=total, count="", best=unit)
            progress.update(state["trial"], description=phase, completed=done, total=total,
                            count=f"{done}/{total}")
            if cfg.time_budget:
                progress.update(state["task"], completed=time.time() - state["start"])
            return
        if phase.startswith("final") and "trials over" not in state:
            state["trials over"] = True
            if "trial" in state:
                progress.remove_task(state.pop("trial"))
            if cfg.time_budget:
                progress.update(state["task"], completed=state["seconds"])
        if state.get("phase") != phase:  # a new bar per phase, so that its ETA is its own
            state["phase"] = phase
            state["bar"] = progress.add_task(phase, total=total, count="", best=unit)
        progress.update(state["bar"], completed=done, count=f"{done}/{total}")

    try:
        result = run_search(cfg, callbacks=[counted], on_start=on_start,
                            progress=phase_progress)
    finally:
        if "task" in state:  # a stop without a start would print an empty line
            progress.stop()
    _print_result(result)
    if result.interrupted:
        err_console.print(_interrupted_text(result), highlight=False, soft_wrap=True)
        raise typer.Exit(130)


def _timed_defaults(dataset: str, seed: int, device: str, given: dict) -> dict:
    """What a timed search runs unless told otherwise (`schedule.TIMED_DEFAULTS`): trials of
    about 100k images, and on a CPU one worker per final retraining, at most one per core."""
    from nasgraph.search.schedule import TIMED_DEFAULTS, trial_epochs

    timed = dict(TIMED_DEFAULTS)
    if "epochs" not in given:
        from nasgraph.data import load_dataset

        timed["epochs"] = trial_epochs(len(load_dataset(dataset, seed).train))
    if _on_cpu(device):
        seeds = given.get("final_seeds", timed["final_seeds"])
        timed["workers"] = max(1, min(seeds, os.cpu_count() or 1))
    return timed


def _on_cpu(device: str) -> bool:
    """Whether `--device` trains on the CPU (`auto` without a GPU)."""
    if device == "auto":
        from nasgraph.train import resolve_device

        return resolve_device(device).type == "cpu"
    return device == "cpu"


def _trials_text(cfg) -> str:
    if not cfg.time_budget:
        return f"{cfg.trials} trials"
    limit = f" (at most {cfg.trials})" if cfg.trials < UNBOUNDED_TRIALS else ""
    return f"trials for {_duration(cfg.time_budget)} in all{limit}"


def _trials_until(cfg) -> float:
    from nasgraph.search.schedule import Schedule

    return Schedule(cfg.time_budget, time.time(), cfg.final_share).trials_end


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes \
        else f"{secs}s"


def _interrupted_text(result) -> str:
    best = result.best or {}
    if not best:
        return (f"interrupted: {result.trials} finished trial(s) kept in the study; re-run the "
                "same command to resume")
    if "interrupted" not in best:
        return ("interrupted: the finished trials, the leaderboard and best/ (the best trial's "
                "own weights) are written; re-run the same command to resume")
    kept = (f"{best['final_seeds']} finished retraining(s) of the best kept in best/"
            if best.get("final_seeds") else "best/ holds the best trial's own weights and score")
    return (f"interrupted during the final retraining: {kept}; re-run the same command to "
            "retrain again")


def _best_text(study_obj) -> str:
    from nasgraph.search.report import best_val_accuracy

    best = best_val_accuracy(study_obj)
    return "best val -" if best is None else f"best val {100 * best:.2f}%"


def _print_result(result) -> None:
    console.print(f"[bold]study[/]        {result.study}  ({result.trials} trials, "
                  f"{100 * result.feasible_fraction:.0f}% within budget, "
                  f"{100 * result.shrunk_fraction:.0f}% of those made cheaper to fit)",
                  highlight=False, soft_wrap=True)
    best = result.best
    if best is None:
        console.print("no candidate was trained")
        return
    test = best.get("test_accuracy")
    seeds = best.get("final_seeds")
    epochs = best.get("final_epochs_runs") or [best.get("final_epochs")]
    epochs_text = " + ".join(map(str, epochs)) if len(set(epochs)) > 1 else str(epochs[0])
    spread = (f" +- {100 * best['test_accuracy_std']:.2f} over {seeds} "
              f"retraining{'s' if seeds != 1 else ''} of {epochs_text} epochs"
              if "test_accuracy_std" in best else "")
    console.print(f"[bold]best[/]         trial {best['trial']}: val "
                  f"{100 * best['val_accuracy']:.2f}%, test "
                  f"{'-' if test is None else f'{100 * test:.2f}%'}{spread}, "
                  f"{human(best['macs'])} MACs, {human(best['params'])} params",
                  highlight=False, soft_wrap=True)
    if best.get("picked_for", "the best validation accuracy") != "the best validation accuracy":
        console.print(f"[bold]retrained[/]    as {best['picked_for']}", highlight=False,
                      soft_wrap=True)
    console.print("[bold]time[/]         " + ", ".join(
        f"{phase} {_duration(seconds)}" for phase, seconds in result.seconds.items()
        if seconds >= 0.5), highlight=False, soft_wrap=True)
    console.print(f"[bold]results[/]      {result.study_dir}/leaderboard.md, "
                  f"{result.study_dir}/best/", highlight=False, soft_wrap=True)


study_app = typer.Typer(help="Inspect studies.", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("show")
@one_line_errors
def study_show(
    name: Annotated[str, typer.Argument(help="The study name (a folder of RUNS_DIR).")],
    runs_dir: Annotated[str, typer.Option(help="Folder of the runs.")] = "runs",
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL.")] = None,
    top: Annotated[int, typer.Option(help="Rows to show.")] = 20,
    debug: Debug = False,
) -> None:
    """Print the leaderboard of an existing study. Example: nasgraph study show residual-digits
    """
    from nasgraph.search.config import SearchConfig
    from nasgraph.search.report import leaderboard_rows
    from nasgraph.search.study import open_study

    if storage is None and not (Path(runs_dir) / name / "study.db").is_file():
        raise NasgraphError(f"no study {name!r} in {runs_dir}/; hint: `nasgraph search` "
                            "creates it, --runs-dir or --storage finds it elsewhere")
    cfg = SearchConfig(study=name, runs_dir=runs_dir, storage=storage)
    study_obj = open_study(cfg, create=False)
    saved = study_obj.user_attrs.get("config", {})
    cfg = cfg.model_copy(update={k: v for k, v in saved.items()
                                 if k in ("space", "dataset", "epochs", "budget_macs",
                                          "max_params", "max_memory", "top_k")})
    rows = leaderboard_rows(cfg, study_obj)[:top]
    table = Table(title=f"{name}: space {cfg.space}, dataset {cfg.dataset}, budget "
                  f"{cfg.budget.describe()}", header_style="bold")
    for col in ("rank", "trial", "state", "val acc", "test acc", "MACs", "params", "width x",
                "parameters"):
        table.add_column(col, justify="left" if col in ("state", "parameters") else "right",
                         overflow="fold")

    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.2f}%"

    for r in rows:
        table.add_row(str(r["rank"]), str(r["trial"]),
                      r["state"] if r["feasible"] else "over budget", pct(r["val_accuracy"]),
                      pct(r["test_accuracy"]), human(r["macs"]), human(r["params"]),
                      f"{r['width_multiplier']:g}", r["parameters"])
    console.print(table)
