"""Commands on one model: info, zoo, render, export."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from nasgraph import analysis, zoo
from nasgraph.cli._common import (
    MODEL_HELP,
    Debug,
    app,
    console,
    human,
    one_line_errors,
    resolve_model,
    resolve_model_and_weights,
)
from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph
from nasgraph.units import count


def _print_whole(table: Table) -> None:
    """Print `table` with every cell whole: where the terminal, or a pipe's 80 columns, is
    narrower than the table, its rows run longer instead of names being cut or folded."""
    table.width = Measurement.get(console, console.options.update_width(10_000), table).maximum
    console.print(table, crop=False)


@app.command()
@one_line_errors
def info(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    latency: Annotated[str | None, typer.Option(
        "--latency", help="Add each node's predicted latency on TARGET[:THREADS] (numba:1, "
        "torch-cpu:2, ...), batch 1 (docs/latency.md).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Parameters, MACs, FLOPs, memory, receptive field, depth and multiplicity of a model.

    Example: nasgraph info resnet50 --input 3x160x160
    """
    graph = resolve_model(model, input)
    summary = analysis.summarize(graph)
    times, total_ms = _latency(graph, latency) if latency else ({}, None)
    if as_json:
        out = summary.model_dump(mode="json")
        if latency:
            out.update(latency_target=latency, latency_ms=total_ms)
            for row in out["nodes"]:
                row["latency_ms"] = times.get(row["id"])
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
        return
    # Text: a graph file's name is printed as it is, never read as rich markup
    table = Table(title=Text(f"{summary.name}  (input {'x'.join(map(str, summary.input))})"),
                  header_style="bold")
    columns = [("node", "left"), ("op", "left"), ("output", "right"), ("params", "right"),
               ("MACs", "right"), ("RF", "right")] + ([("ms", "right")] if latency else [])
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in summary.nodes:
        rf = "global" if row.receptive_field is None else "x".join(map(str, row.receptive_field))
        ms = [f"{times[row.id]:.4f}" if row.id in times else "-"] if latency else []
        table.add_row(row.id, row.label, "x".join(map(str, row.shape)),
                      human(row.params) if row.params else "",
                      human(row.macs) if row.macs else "", rf, *ms)
    _print_whole(table)
    totals = [("params", f"{summary.params:,}"), ("MACs", f"{summary.macs:,}"),
              ("FLOPs", f"{summary.flops:,}"), ("depth", str(summary.depth)),
              ("multiplicity", count(summary.multiplicity)),
              ("receptive field", str(summary.receptive_field)),
              ("peak activation memory", human(summary.peak_memory_bytes, "B") + " per sample"),
              ("outputs", ", ".join("x".join(map(str, s)) for s in summary.outputs))]
    if latency:
        totals.append((f"latency ({latency}, batch 1)",
                       f"{total_ms:.3f} ms predicted (the nodes' times and the fitted "
                       "overheads)"))
    for name, value in totals:
        console.print(f"[bold]{name:>24}[/]  {value}", highlight=False)


def _latency(graph: Graph, spec: str) -> tuple[dict[str, float], float]:
    """The per-node predicted milliseconds of `graph` on target `spec` ('numba:1') at batch
    1, and the predicted total; nodes new to the table are measured first (a spinner)."""
    from nasgraph.cli.latency import predict_with_progress
    from nasgraph.latency.model import LatencyModel
    from nasgraph.search.budget import parse_target

    name, _, threads = parse_target(spec, "--latency").partition(":")
    model = LatencyModel(name, int(threads))
    total_ms = predict_with_progress(model, graph, 1).total_ms
    return model.node_times(graph), total_ms


@app.command("zoo")
@one_line_errors
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
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, collapse_padding=True)
    for col in ("name", "family", "input", "params", "MACs", "depth", "multiplicity"):
        table.add_column(col, justify="left" if col in ("name", "family") else "right",
                         no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["family"], "x".join(map(str, r["input"])),
                      human(r["params"]), human(r["macs"]), str(r["depth"]),
                      count(r["multiplicity"]))
    _print_whole(table)


@app.command("render")
@one_line_errors
def render_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
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
        "--show", help="Extra lines in op nodes, comma-separated: shape,params,macs,latency."
    )] = "",
    latency_target: Annotated[str, typer.Option(
        "--latency-target", help="With --show latency: the target, TARGET[:THREADS], "
        "batch 1 (docs/latency.md).")] = "numba:1",
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
    shown = {item.strip() for item in show.split(",")}
    times = _latency(graph, latency_target)[0] if "latency" in shown else None
    path = render(graph, output or Path(f"{_file_stem(graph.name)}.svg"), collapse=collapse,
                  depth=depth, direction=direction, show=show, merge=merge, repeat=repeat,
                  dpi=dpi, latency=times)
    console.print(f"wrote {path}", highlight=False, markup=False)


def _file_stem(name: str) -> str:
    """A graph's name made a plain file name in the current folder: a graph file's name
    ('../x', '/etc/y') must not choose where the picture goes."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".") or "graph"


@app.command()
@one_line_errors
def export(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", help="The file to write.")],
    weights: Annotated[str | None, typer.Option(
        "--weights", help="State dict (.safetensors or .pt) of the lowered model; "
        "random initialization without it.")] = None,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="torchvision:NAME with torchvision's pretrained weights.")] = False,
    format: Annotated[str, typer.Option(
        "--format", help="python (source + .safetensors), torchscript or onnx.")] = "python",
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    classes: Annotated[int | None, typer.Option(
        "--classes", min=1, help="Number of classes (zoo models only).")] = None,
    debug: Debug = False,
) -> None:
    """Export a model as standalone PyTorch source, TorchScript or ONNX.

    Example: nasgraph export resnet18 -o resnet18.py --weights resnet18.safetensors
    """
    from nasgraph.backends.torch import export as export_graph
    from nasgraph.backends.torch import import_weights
    from nasgraph.backends.torch.state_files import read_state_dict

    if format not in ("python", "torchscript", "onnx"):
        raise NasgraphError(f"--format {format!r}: expected python, torchscript or onnx")
    if classes is not None and (model.endswith(".json") or Path(model).is_file()):
        # the test resolve_model uses to tell a graph file from a zoo name
        raise NasgraphError(f"--classes applies to zoo models only; {model} is a graph file, "
                            "whose classifier is part of the graph")
    graph, state = resolve_model_and_weights(model, input, classes, pretrained)
    if weights:
        state = import_weights(graph, read_state_dict(weights, what="--weights"),
                              origin=weights)
    for path in export_graph(graph, output, format, state):  # type: ignore[arg-type]
        console.print(f"wrote {path}", highlight=False, markup=False)
