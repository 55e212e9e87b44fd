"""A latency lookup table: node key -> seconds, plus the fitted overheads, kept as JSON.

The file is data only (`json.loads`, never code) and is written all or nothing
(`nasgraph.files.write_atomic`). A file that is not such a table, or that another machine
measured (its `machine` differs), is ignored with a `LatencyCacheWarning` and rewritten on
the next save: the table is derived data, and measuring again is always possible.

    >>> t = LatencyTable({"target": "numba", "threads": 1})
    >>> t.entries["k"] = 1e-3
    >>> LatencyTable.from_json(t.to_json(), t.machine).entries
    {'k': 0.001}
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nasgraph.files import write_atomic

FORMAT = "nasgraph.latency-table"
VERSION = 1


class LatencyCacheWarning(UserWarning):
    """A latency cache file was unreadable or another machine's, and is ignored."""


class LatencyTable:
    """Per-key kernel times (seconds) on one machine, and the overheads `fit_overheads`
    found: predicted = graph_s + node_s x (nodes that run a kernel) + the nodes' times.
    `graphs`: how many whole-graph measurements the overheads were fitted on (0: never
    calibrated, both overheads 0); `error`: the worst under-prediction among them, as a
    fraction (measured / predicted - 1, 0 where none was under-predicted)."""

    def __init__(self, machine: dict[str, object], entries: dict[str, float] | None = None,
                 graph_s: float = 0.0, node_s: float = 0.0, graphs: int = 0,
                 error: float = 0.0) -> None:
        self.machine = machine
        self.entries: dict[str, float] = dict(entries or {})
        self.graph_s = graph_s
        self.node_s = node_s
        self.graphs = graphs
        self.error = error

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "machine": self.machine,
                           "overhead": {"graph_s": self.graph_s, "node_s": self.node_s,
                                        "graphs": self.graphs, "error": self.error},
                           "entries": self.entries}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, machine: dict[str, object]) -> LatencyTable:
        """The table in `text`; ValueError where it is no table of `machine`."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT \
                or data.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} file")
        if data.get("machine") != machine:
            raise ValueError("measured on another machine, thread count or library versions")
        entries, overhead = data.get("entries"), data.get("overhead")
        if not isinstance(entries, dict) or not isinstance(overhead, dict) or not all(
                isinstance(v, int | float) for v in [*entries.values(), *overhead.values()]):
            raise ValueError("entries and overhead must map names to numbers")
        return cls(machine, {str(k): float(v) for k, v in entries.items()},
                   float(overhead.get("graph_s", 0.0)), float(overhead.get("node_s", 0.0)),
                   int(overhead.get("graphs", 0)), float(overhead.get("error", 0.0)))

    @classmethod
    def load(cls, path: Path, machine: dict[str, object]) -> LatencyTable:
        """The table at `path`, or an empty one where there is none; an unreadable file or
        another machine's is ignored with a `LatencyCacheWarning`."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(machine)
        except (OSError, UnicodeDecodeError) as e:
            return cls._ignored(path, machine, str(e))
        try:
            return cls.from_json(text, machine)
        except ValueError as e:  # json.JSONDecodeError included
            return cls._ignored(path, machine, str(e))

    @classmethod
    def _ignored(cls, path: Path, machine: dict[str, object], why: str) -> LatencyTable:
        warnings.warn(f"latency cache {path} ignored ({why}); it is measured again and "
                      "rewritten", LatencyCacheWarning, stacklevel=3)
        return cls(machine)

    def save(self, path: Path) -> None:
        """Write the table to `path` all or nothing, keeping the entries another process
        (a second search worker) saved there meanwhile: their union is written."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LatencyCacheWarning)  # a bad file: overwritten
            on_disk = LatencyTable.load(path, self.machine)
        self.entries = {**on_disk.entries, **self.entries}
        write_atomic(path, self.to_json())


def fit_overheads(sums: Sequence[float], nodes: Sequence[int], measured: Sequence[float]
                  ) -> tuple[float, float]:
    """The per-graph and per-node overheads (graph_s, node_s) that best explain
    `measured[i] - sums[i]` as `graph_s + node_s * nodes[i]`, in least squares.

    Relative errors are what the model is judged on, so each graph's equation is weighted
    by 1 / measured: a 50 ms graph does not drown out twenty 1 ms ones. With fewer than two
    distinct node counts the per-node overhead is not identifiable and is 0.

        >>> fit_overheads([1.0, 2.0, 3.0], [1, 2, 4], [1.5, 2.7, 4.1])
        (0.3, 0.2)
    """
    s, n, m = (np.asarray(v, dtype=float) for v in (sums, nodes, measured))
    if len(m) == 0:
        return 0.0, 0.0
    weight = 1.0 / np.maximum(m, 1e-12)
    residual = (m - s) * weight
    if len(set(n.tolist())) < 2:
        return float(np.sum(residual * weight) / np.sum(weight * weight)), 0.0
    design = np.stack([np.ones_like(n), n], axis=1) * weight[:, None]
    (graph_s, node_s), *_ = np.linalg.lstsq(design, residual, rcond=None)
    return round(float(graph_s), 15), round(float(node_s), 15)
