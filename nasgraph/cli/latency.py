"""`nasgraph latency`: a model's latency predicted from the per-machine latency table of a
target, per node, and with --measure the measured latency beside it. The model is the
library's (nasgraph.latency.model)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from nasgraph.cli._common import (
    MODEL_HELP,
    Debug,
    app,
    console,
    err_console,
    one_line_errors,
    resolve_model,
)
from nasgraph.ir import Graph
from nasgraph.latency import check_memory
from nasgraph.latency.model import LatencyModel, Prediction
from nasgraph.latency.targets import TARGET_NAMES


def predict_with_progress(model: LatencyModel, graph: Graph, batch: int) -> Prediction:
    """The prediction, measuring the nodes the table lacks first (with a spinner)."""
    missing = model.missing(graph, batch)
    if missing:
        with err_console.status(f"measuring {len(missing)} nodes new to the "
                                f"{model.target.name} latency table"):
            model.fill(graph, batch)
    return model.predict(graph, batch, measure_missing=False)


def _strategy(key: str) -> str:
    """The numba conv strategy a table key holds (`targets.numba_context`), else ""."""
    context = json.loads(key)[-1]
    return context.get("strategy", "") if isinstance(context, dict) else ""


def _as_dict(graph: Graph, model: LatencyModel, batch: int, p: Prediction,
             measured: float | None) -> dict[str, object]:
    out: dict[str, object] = {
        "model": graph.name, "target": model.target.name, "threads": model.threads,
        "batch": batch, "predicted_ms": p.total_ms, "graph_overhead_ms": p.graph_ms,
        "node_overhead_ms": p.node_ms, "kernels": p.kernels, "upper_ms": p.upper_ms,
        "cache": str(model.path) if model.path else None,
        "nodes": [{"node": r.node, "kind": r.kind, "ms": r.ms, "key": r.key}
                  for r in p.per_node]}
    if measured is not None:
        out["measured_ms"] = measured
    return out


def _print_table(graph: Graph, model: LatencyModel, batch: int, p: Prediction,
                 measured: float | None) -> None:
    title = Text(f"{graph.name}: {model.target.name}, {model.threads} thread(s), batch {batch}")
    table = Table(title=title, header_style="bold")
    for name in ("node", "op", "kernel", "ms", "share"):
        table.add_column(name, justify="right" if name in ("ms", "share") else "left")
    for r in p.per_node:
        share = f"{100 * r.ms / p.total_ms:.1f}%" if p.total_ms > 0 else ""
        table.add_row(r.node, r.kind, _strategy(r.key), f"{r.ms:.4f}", share)
    console.print(table, crop=False)
    console.print(f"predicted {p.total_ms:.3f} ms = {p.graph_ms:.4f} ms a graph + "
                  f"{p.node_ms:.4f} ms x {p.kernels} kernels + the nodes' times", highlight=False)
    if p.error > 0:
        console.print(f"up to {p.upper_ms:.3f} ms: the model under-predicted its calibration "
                      f"graphs by at most {100 * p.error:.1f}% (what a latency budget is "
                      "checked against)", highlight=False)
    if p.graph_ms == 0 and p.node_ms == 0:
        console.print("(overheads not calibrated yet: LatencyModel.calibrate, docs/latency.md)",
                      highlight=False)
    if measured is not None:
        error = 100 * (p.total_ms - measured) / measured
        console.print(f"measured  {measured:.3f} ms (median), prediction off by {error:+.1f}%",
                      highlight=False)


@app.command()
@one_line_errors
def latency(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    target: Annotated[str, typer.Option(
        "--target", help=f"{', '.join(TARGET_NAMES)}.")] = "numba",
    input: Annotated[str | None, typer.Option("--input", help="Input size CxHxW.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=4096, help="Batch size.")] = 1,
    threads: Annotated[int, typer.Option(
        "--threads", min=1, max=1024, help="CPU threads the target runs on.")] = 1,
    measure: Annotated[bool, typer.Option(
        "--measure", help="Also measure the whole graph's median latency.")] = False,
    iters: Annotated[int, typer.Option(
        "--iters", min=1, max=10**5, help="Timed calls with --measure.")] = 30,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="The latency table file (default: one per machine in the user "
        "cache directory).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Predict a model's latency on a target from the per-machine latency table.

    Nodes the table lacks are measured once and kept (docs/latency.md).

    Example: nasgraph latency resnet18 --input 3x32x32 --target numba --threads 1 --measure
    """
    graph = resolve_model(model, input)
    if target != "torch-cuda":  # refuse a batch that cannot fit before allocating it
        check_memory(graph, batch, "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = LatencyModel(target, threads, cache)
    for w in caught:
        err_console.print(Text.assemble(("warning:", "bold yellow"), " ", str(w.message)),
                          soft_wrap=True)
    prediction = predict_with_progress(lm, graph, batch)
    measured = lm.measure(graph, batch, iters) if measure else None
    if as_json:
        sys.stdout.write(json.dumps(_as_dict(graph, lm, batch, prediction, measured),
                                    indent=1) + "\n")
        return
    _print_table(graph, lm, batch, prediction, measured)
