"""The `nasgraph` command line: the top of the import graph (nothing imports it).

Every command turns bad input into one line on stderr and exit code 2; `--debug` shows the
traceback instead. `_common` holds what the commands share; `models` (info, zoo, render,
export), `running` (run), `searching` (search, study show), `spaces` (spaces) and `proxies`
(proxies) register their commands on its app when imported.
"""

from __future__ import annotations

from nasgraph.cli import latency, models, proxies, running, searching, spaces  # noqa: F401  (registers)
from nasgraph.cli._common import app


def main() -> None:
    app()
