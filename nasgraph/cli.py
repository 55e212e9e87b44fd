"""The `nasgraph` command line: the top of the import graph (nothing imports it).

Every command turns bad input into one line on stderr and exit code 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from nasgraph import analysis, zoo
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph, load

app = typer.Typer(help="nasgraph: architecture search and a graph compiler for CNNs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)

Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
F = TypeVar("F", bound=Callable[..., object])


def _one_line_errors(command: F) -> F:
    """Bad input becomes one line on stderr and exit code 2 (unless --debug)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except (NasgraphError, OSError) as e:
            if kwargs.get("debug"):
                raise
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            err_console.print(f"[bold red]error:[/] {message}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def parse_shape(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*[x,]\s*(\d+)\s*", text)
    if not m or min(int(g) for g in m.groups()) <= 0:
        raise NasgraphError(f"--input {text!r}: expected CxHxW with positive sizes, "
                            "e.g. 3x224x224")
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def resolve_model(model: str, input_shape: str | None = None,
                  num_classes: int | None = None) -> Graph:
    """A zoo name or a graph JSON file, optionally at another input size."""
    shape = parse_shape(input_shape) if input_shape else None
    if model.endswith(".json") or Path(model).is_file():
        graph = load(model)
        return graph.replace_input(*shape) if shape else graph
    return zoo.get(model, num_classes=num_classes, input_shape=shape)


def human(n: float, unit: str = "") -> str:
    """12_345_678 -> '12.35M'."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def count(n: int) -> str:
    """Exact below a million, else 3 significant digits: path counts grow like 2^depth."""
    return f"{n:,}" if n < 1_000_000 else f"{n:.3g}"


@app.command()
@_one_line_errors
def info(
    model: Annotated[str, typer.Argument(help="A zoo model name or a graph JSON file.")],
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Parameters, MACs, FLOPs, memory, receptive field, depth and multiplicity of a model.

    Example: nasgraph info resnet50 --input 3x160x160
    """
    summary = analysis.summarize(resolve_model(model, input))
    if as_json:
        sys.stdout.write(summary.model_dump_json(indent=1) + "\n")
        return
    table = Table(title=f"{summary.name}  (input {'x'.join(map(str, summary.input))})",
                  header_style="bold")
    for col, justify in (("node", "left"), ("op", "left"), ("output", "right"),
                         ("params", "right"), ("MACs", "right"), ("RF", "right")):
        table.add_column(col, justify=justify,  # type: ignore[arg-type]
                         overflow="fold" if col == "node" else "ellipsis")
    for row in summary.nodes:
        rf = "global" if row.receptive_field is None else "x".join(map(str, row.receptive_field))
        table.add_row(row.id, row.label, "x".join(map(str, row.shape)),
                      human(row.params) if row.params else "",
                      human(row.macs) if row.macs else "", rf)
    console.print(table)
    totals = [("params", f"{summary.params:,}"), ("MACs", f"{summary.macs:,}"),
              ("FLOPs", f"{summary.flops:,}"), ("depth", str(summary.depth)),
              ("multiplicity", count(summary.multiplicity)),
              ("receptive field", str(summary.receptive_field)),
              ("peak activation memory", human(summary.peak_memory_bytes, "B") + " per sample"),
              ("outputs", ", ".join("x".join(map(str, s)) for s in summary.outputs))]
    for name, value in totals:
        console.print(f"[bold]{name:>24}[/]  {value}", highlight=False)


@app.command("zoo")
@_one_line_errors
def zoo_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """List the model zoo: name, input, params, MACs, depth and multiplicity."""
    rows = []
    for name in zoo.names():
        entry = zoo.entry(name)
        s = analysis.summarize(zoo.get(name))
        rows.append({"name": name, "family": entry.family, "input": s.input,
                     "params": s.params, "macs": s.macs, "depth": s.depth,
                     "multiplicity": s.multiplicity, "reference": entry.reference})
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table(header_style="bold")
    for col in ("name", "family", "input", "params", "MACs", "depth", "multiplicity"):
        table.add_column(col, justify="left" if col in ("name", "family") else "right")
    for r in rows:
        table.add_row(r["name"], r["family"], "x".join(map(str, r["input"])),
                      human(r["params"]), human(r["macs"]), str(r["depth"]),
                      count(r["multiplicity"]))
    console.print(table)


@app.command("render")
@_one_line_errors
def render_command(
    model: Annotated[str, typer.Argument(help="A zoo model name or a graph JSON file.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Picture to write: .svg, .png, .pdf or .dot "
        "(default: MODEL.svg).")] = None,
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    collapse: Annotated[bool, typer.Option(
        "--collapse", help="Draw each block as one node with its totals.")] = False,
    depth: Annotated[int | None, typer.Option(
        "--depth", min=1, help="Block level: collapsed into nodes, or the deepest drawn as "
        "clusters (1 = outermost).")] = None,
    direction: Annotated[str, typer.Option(
        "--direction", help="TB, LR, BT or RL.")] = "TB",
    show: Annotated[str, typer.Option(
        "--show", help="Extra lines in op nodes, comma-separated: shape,params,macs.")] = "",
    merge: Annotated[bool, typer.Option(
        "--merge/--no-merge", help="Merge conv-BN-activation chains into one node.")] = True,
    repeat: Annotated[bool, typer.Option(
        "--repeat/--no-repeat", help="Collapsed: identical consecutive blocks as one 'x N'.")
    ] = True,
    dpi: Annotated[int, typer.Option("--dpi", min=1, help="PNG resolution.")] = 96,
    debug: Debug = False,
) -> None:
    """Draw a model: SVG, PNG or PDF with graphviz's dot, or the DOT source.

    Without dot: writes the .dot file, says how to install graphviz, exits with code 2.

    Example: nasgraph render resnet50 --collapse -o resnet50.svg
    """
    from nasgraph.drawing import render

    graph = resolve_model(model, input)
    path = render(graph, output or Path(f"{graph.name}.svg"), collapse=collapse, depth=depth,
                  direction=direction, show=show, merge=merge, repeat=repeat, dpi=dpi)
    console.print(f"wrote {path}", highlight=False)


def _load_weights(path: str) -> dict:
    """A state dict from a .safetensors file or a torch .pt/.pth file."""
    import torch

    if not Path(path).is_file():
        raise NasgraphError(f"--weights {path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise NasgraphError(f"--weights {path}: not a state dict (got {type(state).__name__})")
    return state


@app.command()
@_one_line_errors
def export(
    model: Annotated[str, typer.Argument(help="A zoo model name or a graph JSON file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write.")],
    weights: Annotated[str | None, typer.Option(
        "--weights", help="State dict (.safetensors or .pt) of the lowered model; "
        "random initialization without it.")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="python (source + .safetensors), torchscript or onnx.")] = "python",
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    classes: Annotated[int | None, typer.Option("--classes", help="Number of classes.")] = None,
    debug: Debug = False,
) -> None:
    """Export a model as standalone PyTorch source, TorchScript or ONNX.

    Example: nasgraph export resnet18 -o resnet18.py --weights resnet18.safetensors
    """
    from nasgraph.backends.torch import export as export_graph

    if format not in ("python", "torchscript", "onnx"):
        raise NasgraphError(f"--format {format!r}: expected python, torchscript or onnx")
    graph = resolve_model(model, input, classes)
    state = _load_weights(weights) if weights else None
    for path in export_graph(graph, output, format, state):  # type: ignore[arg-type]
        console.print(f"wrote {path}", highlight=False)


Step = Callable[[], list[tuple[int, ...]]]
Runner = Callable[[Graph, str, int, int | None], Step]


def _torch_runner(graph: Graph, device: str, batch: int, threads: int | None) -> Step:
    """One forward pass of the lowered graph on random input (synchronized on CUDA)."""
    import torch

    from nasgraph.backends.torch import lower

    if device == "cuda" and not torch.cuda.is_available():
        raise NasgraphError("--device cuda: no CUDA device is available; hint: --device cpu")
    if threads is not None:
        torch.set_num_threads(threads)
    module = lower(graph).to(device).eval()
    xs = [torch.randn(batch, *n.type.shape, device=device) for n in graph.inputs]

    def step() -> list[tuple[int, ...]]:
        with torch.no_grad():
            ys = module(*xs)
        if device == "cuda":
            torch.cuda.synchronize()
        return [tuple(y.shape) for y in (ys if isinstance(ys, tuple) else (ys,))]

    return step


def _numba_runner(graph: Graph, device: str, batch: int, threads: int | None) -> Step:
    """One call of the Numba executor, compiled for this batch with random weights."""
    import numpy as np

    from nasgraph.backends import numba as numba_backend
    from nasgraph.backends.torch import lower

    if device != "cpu":
        raise NasgraphError(f"--device {device}: the numba backend runs on the cpu only")
    executor = numba_backend.compile(graph, lower(graph).eval().state_dict(), batch=batch,
                                     threads=threads)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((batch, *n.type.shape), dtype=np.float32) for n in graph.inputs]

    def step() -> list[tuple[int, ...]]:
        ys = executor(*xs)
        return [y.shape for y in (ys if isinstance(ys, tuple) else (ys,))]

    return step


RUNNERS: dict[str, Runner] = {"torch": _torch_runner, "numba": _numba_runner}


def _print_profile(graph: Graph, batch: int, threads: int | None, iters: int,
                   rows: int = 15) -> None:
    """The numba executor's slowest nodes (`Executor.profile`), with their share."""
    import numpy as np

    from nasgraph.backends import numba as numba_backend
    from nasgraph.backends.torch import lower

    executor = numba_backend.compile(graph, lower(graph).eval().state_dict(), batch=batch,
                                     threads=threads)
    (node,) = graph.inputs
    x = np.random.default_rng(0).standard_normal((batch, *node.type.shape), dtype=np.float32)
    times = executor.profile(x, iters)
    total = sum(t.seconds for t in times)
    table = Table(title=f"{graph.name}: numba, batch {batch}, median of {iters} calls per "
                  f"node; {len(times)} nodes, {total * 1e3:.2f} ms in all", header_style="bold")
    for name in ("node", "op", "kernel", "shape", "ms", "share"):
        table.add_column(name, justify="right" if name in ("ms", "share") else "left")
    for t in sorted(times, key=lambda t: -t.seconds)[:rows]:
        table.add_row(t.node, t.kind, t.strategy, str(executor.graph[t.node].type),
                      f"{t.seconds * 1e3:.3f}", f"{100 * t.seconds / total:.1f}%")
    console.print(table)


@app.command()
@_one_line_errors
def run(
    model: Annotated[str, typer.Argument(help="A zoo model name or a graph JSON file.")],
    backend: Annotated[str, typer.Option("--backend", help="torch or numba.")] = "torch",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size.")] = 1,
    bench: Annotated[bool, typer.Option("--bench", help="Time repeated passes.")] = False,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Timed passes with --bench.")] = 20,
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="CPU threads (default: all cores).")] = None,
    profile: Annotated[bool, typer.Option(
        "--profile", help="numba: time every node; print the slowest.")] = False,
    debug: Debug = False,
) -> None:
    """Run a forward pass on random input; with --bench, median latency and images/s.

    Example: nasgraph run resnet50 --backend torch --batch 8 --bench
    """
    if backend not in RUNNERS:
        raise NasgraphError(f"--backend {backend!r}: expected {' or '.join(RUNNERS)}")
    if profile and backend != "numba":
        raise NasgraphError(f"--profile: per-node times come from the numba backend, not "
                            f"{backend!r}; hint: --backend numba")
    if device not in ("cpu", "cuda"):
        raise NasgraphError(f"--device {device!r}: expected cpu or cuda")
    graph = resolve_model(model, input)
    step = RUNNERS[backend](graph, device, batch, threads)
    shapes = step()
    console.print(f"{graph.name}: {backend} on {device}, batch {batch} -> "
                  + ", ".join("x".join(map(str, s)) for s in shapes), highlight=False)
    if profile:
        _print_profile(graph, batch, threads, iters)
    if not bench:
        return
    for _ in range(min(3, iters)):  # warm up: allocator, kernel selection, JIT
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    console.print(f"median latency {median * 1e3:.2f} ms over {iters} passes, "
                  f"{batch / median:.1f} images/s", highlight=False)


Budget = Annotated[str | None, typer.Option(
    "--budget", help="Most MACs per image: 300k, 5M, 1.2G.")]


@app.command()
@_one_line_errors
def search(
    space: Annotated[str, typer.Argument(
        help="A built-in space (inception, residual, dense, macro) or path/file.py:function.")],
    dataset: Annotated[str, typer.Option(
        help="digits, synthetic, cifar10:PATH, mnist:PATH, imagefolder:PATH.")] = "digits",
    budget: Budget = None,
    max_params: Annotated[str | None, typer.Option(help="Most parameters: 50k, 1M.")] = None,
    max_memory: Annotated[str | None, typer.Option(
        help="Most peak activation bytes per image: 64k, 2M.")] = None,
    trials: Annotated[int, typer.Option(help="Finished trials the study should hold.")] = 30,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after S s.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs per trial.")] = 10,
    final_epochs: Annotated[int | None, typer.Option(
        help="Epochs of the best's retraining (default 3 x --epochs).")] = None,
    final_seeds: Annotated[int, typer.Option(help="Retrainings of the best.")] = 3,
    study: Annotated[str | None, typer.Option(
        help="Study name (default SPACE-DATASET).")] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL (default sqlite in RUNS_DIR/STUDY).")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder of the runs.")] = "runs",
    objective: Annotated[str, typer.Option(help="accuracy, or accuracy,macs.")] = "accuracy",
    sampler: Annotated[str, typer.Option(help="tpe, nsga2 or random.")] = "tpe",
    seed: Annotated[int, typer.Option(help="Seed of the sampler, splits and training.")] = 0,
    device: Annotated[str, typer.Option(
        help="auto, cpu, cuda, cuda:N; workers take a list in turn: cuda:0,cuda:1.")] = "auto",
    workers: Annotated[int, typer.Option(
        help="Worker processes on this machine (docs/distributed.md).")] = 1,
    debug: Debug = False,
) -> None:
    """Search SPACE for the most accurate network within the budget, then retrain the best.

    Re-running the same command resumes the study. Results go to RUNS_DIR/STUDY/
    (docs/search.md). Runs with the same --storage and --study, on any machines, are workers
    of one study (docs/distributed.md). Example: nasgraph search residual --budget 200k
    """
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nasgraph.search import parse_amount
    from nasgraph.search.run import SearchConfig
    from nasgraph.search.run import search as run_search

    if objective not in ("accuracy", "accuracy,macs"):
        raise NasgraphError(f"--objective {objective!r}: expected accuracy or accuracy,macs")
    if sampler not in ("tpe", "nsga2", "random"):
        raise NasgraphError(f"--sampler {sampler!r}: expected tpe, nsga2 or random")
    try:
        cfg = SearchConfig(
            space=space, dataset=dataset, trials=trials, timeout=timeout, epochs=epochs,
            budget_macs=parse_amount(budget) if budget else None,
            max_params=parse_amount(max_params, "--max-params") if max_params else None,
            max_memory=parse_amount(max_memory, "--max-memory") if max_memory else None,
            final_epochs=final_epochs, final_seeds=final_seeds, study=study, storage=storage,
            runs_dir=runs_dir, objective=objective, sampler=sampler, seed=seed, device=device,
            workers=workers)
    except ValidationError as e:
        first = e.errors()[0]
        raise NasgraphError(f"--{'-'.join(map(str, first['loc'])).replace('_', '-')}: "
                            f"{first['msg']}") from None
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                        TimeElapsedColumn(), console=err_console, transient=False)
    state: dict = {}

    def on_start(study_obj, remaining: int) -> None:
        err_console.print(f"search {cfg.space!r} on {cfg.dataset!r}, budget "
                          f"{cfg.budget.describe()}, {cfg.trials} trials x {cfg.epochs} epochs"
                          f" -> {cfg.study_dir}", highlight=False, soft_wrap=True)
        done = cfg.trials - remaining
        state["task"] = progress.add_task(cfg.study_name, total=cfg.trials, completed=done,
                                          best=_best_text(study_obj))
        if done:
            err_console.print(f"resuming study {cfg.study_name!r}: {done} trials done")

    def on_trial(study_obj, trial) -> None:
        progress.update(state["task"], completed=min(cfg.trials, state.get("n", 0)),
                        best=_best_text(study_obj))

    def counted(study_obj, trial) -> None:
        from nasgraph.search.run import finished

        state["n"] = len(finished(study_obj))
        on_trial(study_obj, trial)

    with progress:
        result = run_search(cfg, callbacks=[counted], on_start=on_start)
    if result.interrupted:
        err_console.print("interrupted: results so far written; re-run the command to resume")
    _print_result(result)


def _best_text(study_obj) -> str:
    from optuna.trial import TrialState

    accs = [t.values[0] for t in study_obj.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible")]
    return f"best val {100 * max(accs):.2f}%" if accs else "best val -"


def _print_result(result) -> None:
    console.print(f"[bold]study[/]        {result.study}  ({result.trials} trials, "
                  f"{100 * result.feasible_fraction:.0f}% within budget, "
                  f"{100 * result.shrunk_fraction:.0f}% of those shrunk to fit)",
                  highlight=False)
    best = result.best
    if best is None:
        console.print("no candidate was trained")
        return
    test = best.get("test_accuracy")
    spread = (f" +- {100 * best['test_accuracy_std']:.2f} over {best['final_seeds']} "
              f"retrainings" if "test_accuracy_std" in best else "")
    console.print(f"[bold]best[/]         trial {best['trial']}: val "
                  f"{100 * best['val_accuracy']:.2f}%, test "
                  f"{'-' if test is None else f'{100 * test:.2f}%'}{spread}, "
                  f"{human(best['macs'])} MACs, {human(best['params'])} params",
                  highlight=False)
    console.print(f"[bold]results[/]      {result.study_dir}/leaderboard.md, "
                  f"{result.study_dir}/best/", highlight=False)


study_app = typer.Typer(help="Inspect studies.", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("show")
@_one_line_errors
def study_show(
    name: Annotated[str, typer.Argument(help="The study name (a folder of RUNS_DIR).")],
    runs_dir: Annotated[str, typer.Option(help="Folder of the runs.")] = "runs",
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL.")] = None,
    top: Annotated[int, typer.Option(help="Rows to show.")] = 20,
    debug: Debug = False,
) -> None:
    """Print the leaderboard of an existing study. Example: nasgraph study show residual-digits
    """
    from nasgraph.search.report import leaderboard_rows
    from nasgraph.search.run import SearchConfig, open_study

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
