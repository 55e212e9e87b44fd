"""The folder of one study, `runs/<study>/`: every path in it, read and written in one place.

    runs/<study>/study.db                  the Optuna study (the default storage)
    runs/<study>/trials/0007/              graph.json, weights.pt, test.json of trial 7
    runs/<study>/leaderboard.md, .csv      every finished trial, best first
    runs/<study>/best/                     graph.json, graph.svg, model.py and its
                                           .safetensors, weights.pt, result.json
    runs/<study>/plots/                    history, pareto, importances (.png, .html)

Every file is written all or nothing (nasgraph.files): a reader, or a worker resuming after a
crash, never finds half a file.

    >>> from pathlib import Path
    >>> from nasgraph.search.runs import StudyFolder
    >>> StudyFolder(Path("runs/demo")).trial_file(7, "graph.json").as_posix()
    'runs/demo/trials/0007/graph.json'
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasgraph import ir
from nasgraph.files import write_atomic

if TYPE_CHECKING:  # torch is imported where weights are, so that a bad CLI call fails fast
    import torch


@dataclass(frozen=True)
class StudyFolder:
    root: Path

    def trial(self, number: int) -> Path:
        return self.root / "trials" / f"{number:04d}"

    def trial_file(self, number: int, name: str) -> Path:
        return self.trial(number) / name

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def write(self, path: Path, data: str | bytes) -> None:
        write_atomic(path, data)

    def write_json(self, path: Path, data: object) -> None:
        self.write(path, json.dumps(data, indent=1, default=str) + "\n")

    def write_weights(self, path: Path, state_dict: dict[str, torch.Tensor]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
        self.write(path, buf.getvalue())

    def read_json(self, path: Path) -> Any:
        return json.loads(path.read_text())

    def read_weights(self, path: Path) -> dict[str, torch.Tensor]:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)

    def load_graph(self, number: int) -> ir.Graph:
        return ir.load(self.trial_file(number, "graph.json"))
