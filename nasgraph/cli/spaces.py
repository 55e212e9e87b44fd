"""`nasgraph spaces`: the registered search spaces."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Annotated

import typer
from rich.text import Text

from nasgraph.cli._common import Debug, app, console, one_line_errors


@app.command("spaces")
@one_line_errors
def spaces_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """List the registered search spaces, one a line: name and what it builds.

    Each name is a SPACE for `nasgraph search`, as is path/file.py:function
    (docs/search.md). Example: nasgraph spaces
    """
    from nasgraph.search.space import get_space, space_names

    rows = [{"name": name, "summary": (inspect.getdoc(get_space(name)) or "").split("\n")[0]}
            for name in space_names()]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    # plain lines, not a table: a name is what the user types next, so it is never cut or
    # wrapped, whatever the terminal's width, and `grep`/`cut` read the output as it is
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        console.print(Text.assemble((r["name"].ljust(width), "bold"), "  ", r["summary"]),
                      soft_wrap=True)
