"""Throughput of lowered zoo models against torchvision's own modules, as a ratio per cell.

Cells: model x batch x precision (fp32, bf16 autocast) x mode (eager, torch.compile); both
sides run in eval mode, channels_last, with the same weights and input. Ours also folds BN
into the convs and runs conv + bias (+ residual) + ReLU as one cuDNN kernel (the compiler's
passes, `prepare(fold_bn=True)`): those and channels_last are the levers. The two sides are
timed alternately in the same run; the table goes between the torch_gpu markers of
docs/benchmarks.md (rows of other runs are kept, rows of this run replaced).

    python benchmarks/torch_gpu.py                          # GPU: the full table
    python benchmarks/torch_gpu.py --modes eager            # a part of it (rows merge)
    python benchmarks/torch_gpu.py --device cpu --quick     # a smoke run; writes nothing
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402

from nasgraph import zoo  # noqa: E402
from nasgraph.backends.torch import (  # noqa: E402
    import_torchvision_weights,
    inplace_ops,
    lower,
    prepare,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- torch_gpu:begin -->", "<!-- torch_gpu:end -->"
HEADER = ("| model | batch | precision | mode | torchvision img/s | nasgraph img/s | ratio |\n"
          "|---|---:|---|---|---:|---:|---:|")
REFERENCE_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False}}


def _torchvision(name: str) -> torch.nn.Module:
    return getattr(torchvision.models, name)(weights=None, **REFERENCE_KWARGS.get(name, {}))


def _timer(device: str):
    """Seconds per call of `fn`, with the device synchronized around it."""
    def measure(fn, x) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start
    return measure


def bench_cell(name: str, batch: int, precision: str, mode: str, device: str,
               shape: tuple[int, int, int], warmup: int, iters: int, fold_bn: bool = True
               ) -> tuple[float, float]:
    """Images/s of torchvision's module and of ours, timed alternately. Without
    `fold_bn` ours keeps its batch norms (in-place activations and adds still), so that
    it dispatches the same kernels as torchvision's."""
    graph = zoo.get(name, input_shape=shape)
    theirs = _torchvision(name).eval()
    ours = lower(graph)
    ours.load_state_dict(import_torchvision_weights(graph, theirs))
    ours = ours.to(device).eval()
    theirs = theirs.to(device).to(memory_format=torch.channels_last)
    ours = prepare(ours if fold_bn else inplace_ops(ours), fold_bn=fold_bn,
                   channels_last=True)
    if mode == "compile":
        theirs, ours = torch.compile(theirs), torch.compile(ours)
    x = torch.randn(batch, *shape, device=device).to(memory_format=torch.channels_last)

    def run(model):
        def call(inp):
            # the same autocast region around both sides
            with torch.no_grad(), torch.autocast(device, torch.bfloat16,
                                                 enabled=precision == "bf16"):
                return model(inp)
        return call

    fns = {"torchvision": run(theirs), "nasgraph": run(ours)}
    measure = _timer(device)
    for _ in range(warmup):
        for fn in fns.values():
            measure(fn, x)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            times[k].append(measure(fn, x))
    return (batch / statistics.median(times["torchvision"]),
            batch / statistics.median(times["nasgraph"]))


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.2f}"


def _machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, torch {torch.__version__}"


def write_table(rows: dict[tuple[str, ...], str], note: str, path: Path = DOC) -> None:
    """Merge `rows` into the table of the torch_gpu section (rows keyed by their first 4
    cells), so that partial runs add up to one table."""
    text = path.read_text() if path.exists() else ""
    old: dict[tuple[str, ...], str] = {}
    if BEGIN in text and END in text:
        section = text.split(BEGIN, 1)[1].split(END, 1)[0]
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("|") and len(cells) == 7 and cells[1].isdigit():
                old[tuple(cells[:4])] = line
    merged = {**old, **rows}
    body = "\n".join(merged[k] for k in sorted(merged, key=lambda k: (k[0], int(k[1]), k[2],
                                                                      k[3])))
    write_section("torch_gpu", f"## PyTorch lowering on the GPU\n\n{note}\n\n{HEADER}\n{body}",
                  path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--models", default="resnet50,densenet121,googlenet")
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="fold BN into convs on nasgraph's side (rows of a --no-fold-bn "
                        "run are labelled 'eager, BN kept')")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--quick", action="store_true",
                        help="batch 2, 64x64 input, 2 timed passes, eager only; no write")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="write docs/benchmarks.md (default: unless --quick)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu --quick for a smoke run")
    shape = (3, 224, 224)
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    if args.quick:
        shape, batches, args.warmup, args.iters = (3, 64, 64), [2], 1, 2
        modes = [m for m in modes if m == "eager"] if args.modes == "eager,compile" else modes
    write = (not args.quick) if args.write is None else args.write
    torch.backends.cudnn.benchmark = True

    rows: dict[tuple[str, ...], str] = {}
    print(HEADER)
    command = "python benchmarks/torch_gpu.py " + " ".join(argv or sys.argv[1:])
    note = (f"`{command.strip()}` on {_machine(args.device)}; input "
            f"{'x'.join(map(str, shape))}, median of {args.iters} passes after "
            f"{args.warmup} warm-up passes. Both sides channels_last and eval; nasgraph "
            "also folds BN into convs and fuses conv + bias (+ residual) + ReLU into one "
            "cuDNN kernel (except in rows marked 'BN kept') and runs other activations "
            "and adds in place. Ratio = nasgraph / torchvision (>= 1.00x: as fast "
            "or faster).")
    for name in args.models.split(","):
        if name not in zoo.names():
            print(f"| {name} | (not in the zoo yet: skipped) |", flush=True)
            continue
        for batch in batches:
            for precision in args.precisions.split(","):
                for mode in modes:
                    tv, ours = bench_cell(name, batch, precision, mode, args.device, shape,
                                          args.warmup, args.iters, args.fold_bn)
                    label = mode if args.fold_bn else f"{mode}, BN kept"
                    key = (name, str(batch), precision, label)
                    rows[key] = (f"| {' | '.join(key)} | {_rate(tv)} | {_rate(ours)} | "
                                 f"{ours / tv:.2f}x |")
                    print(rows[key], flush=True)
                    if write:  # after every cell: a run cut off by a time limit keeps its rows
                        write_table(rows, note)
    if write and rows:
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
