"""`nasgraph proxies`: zero-cost proxies of random candidates of a space."""

from __future__ import annotations

import json
import math
import sys
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

PROXY_COLUMNS = ["naswot", "synflow", "grad_norm", "snip", "jacob_cov"]


@app.command("proxies")
@one_line_errors
def proxies(
    space: SpaceArgument,
    dataset: DatasetOption = "digits",
    budget: BudgetOption = None,
    samples: Annotated[int, typer.Option(min=1, help="Candidates to sample.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the sampler, the batch and the weights.")
                    ] = 0,
    batch: Annotated[int, typer.Option(min=1, help="Training images the proxies see.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Score random candidates of SPACE, fitted to the budget, with zero-cost proxies.

    Each candidate is scored untrained, on one batch of training images: naswot,
    synflow, grad_norm, snip and jacob_cov, beside its params and MACs
    (docs/search.md). Candidates still over budget once fitted are skipped and
    counted. Example: nasgraph proxies residual --budget 1M --samples 20
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from nasgraph.search import Budget, parse_amount
    from nasgraph.search.proxies import sample_and_score

    limit = Budget(macs=parse_amount(budget) if budget else None)
    bar = Progress(TextColumn("[bold]candidates"), BarColumn(), MofNCompleteColumn(),
                   console=err_console, transient=True)
    with bar:
        task = bar.add_task("", total=samples)
        result = sample_and_score(space, dataset, limit, samples, seed=seed, batch=batch,
                                  progress=lambda done, _: bar.update(task, completed=done))
    if result.infeasible:
        err_console.print(f"{result.infeasible} of {samples} candidates over budget once "
                          "fitted: not scored", highlight=False, soft_wrap=True)
    if as_json:
        # NaN (a proxy undefined for a candidate) as null: strict JSON readers refuse NaN
        rows = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                 for k, v in row.items()} for row in result.rows]
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table("#", "params", "MACs", *PROXY_COLUMNS)
    for k, row in enumerate(result.rows):
        table.add_row(str(k), human(row["params"]), human(row["macs"]),
                      *(f"{row[name]:.4g}" for name in PROXY_COLUMNS))
    console.print(table)
