"""Not a timing: which torchvision classifiers `from_torch` imports, and whether the imported
graph computes the model (through `lower()` and the numba executor, with random weights and
random BN statistics) with the MACs `torch.utils.flop_counter` counts.

    python -m benchmarks.import_survey [--size 64] [--models resnet18,...] [--write]

Every classifier of `torchvision.models.list_models(module=torchvision.models)` except the
largest (over 150M parameters: their import works like their family's, at minutes each on a
small machine) runs at `--size` (224 for the vision transformers, which need it). With
`--write` the table goes into docs/import.md (section `import_survey`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._report import machine, write_section
from nasgraph import summarize
from nasgraph.backends import numba as nb
from nasgraph.backends.torch import lower
from nasgraph.errors import NasgraphError
from nasgraph.importers import from_torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "import.md"
FIXED_SIZE = ("vit_", "swin_", "maxvit_")  # models that take 224 x 224 only
MAX_PARAMS = 150_000_000


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _close(out: np.ndarray, ref: np.ndarray) -> bool:
    return bool(np.abs(out - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max())))


def survey(name: str, size: int) -> list[str]:
    kwargs = {"aux_logits": False, "init_weights": False} if name in (
        "googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMS:
        return [name, f"{params / 1e6:.0f}M", "", "skipped (size)", "", "", ""]
    size = 224 if name.startswith(FIXED_SIZE) else (299 if name == "inception_v3" else size)
    model = _randomized(model)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    try:
        graph, state = from_torch(model, x)
    except NasgraphError as e:
        return [name, f"{params / 1e6:.1f}M", str(size), "refused", "", "",
                str(e).split(";")[0][:110]]
    seconds = time.perf_counter() - start
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ref = model(x).numpy()
    lowered = lower(graph, state).eval()
    with torch.no_grad():
        torch_ok = _close(lowered(x).numpy(), ref)
    numba_ok = _close(nb.compile(graph, state)(x.numpy()), ref)
    macs_ok = summarize(graph).macs == counter.get_total_flops() // 2 // len(x)  # per image
    return [name, f"{params / 1e6:.1f}M", str(size), f"imported ({seconds:.1f} s)",
            "yes" if torch_ok and numba_ok else f"torch {torch_ok}, numba {numba_ok}",
            "yes" if macs_ok else "no", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--models", help="comma-separated names (default: all classifiers)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else \
        torchvision.models.list_models(module=torchvision.models)
    header = ["model", "params", "input", "from_torch", "outputs equal (torch, numba)",
              "MACs = flop_counter / 2", "why refused"]
    rows = []
    for name in names:
        row = survey(name, args.size)
        print(" | ".join(row), flush=True)
        rows.append(row)
    imported = sum(r[3].startswith("imported") for r in rows)
    table = "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows])
    text = (f"## Survey: every torchvision classifier\n\n"
            f"`python -m benchmarks.import_survey --size {args.size} --write` on {machine()}, "
            f"torchvision {torchvision.__version__}: {imported} of {len(rows)} import; random "
            f"weights and BN statistics, outputs compared at 1e-4 of their scale.\n\n{table}")
    print(text.splitlines()[2])
    if args.write:
        write_section("import_survey", text, DOC)


if __name__ == "__main__":
    main()
