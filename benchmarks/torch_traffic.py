"""Memory traffic of one eager forward pass, lowered zoo model against torchvision's, on CPU.

At a large batch in bf16, an eager forward pass on a GPU costs about its passes over
activations: convs are fast, each elementwise op reads and writes a whole activation. This
script records every aten op both sides dispatch under bf16 autocast (models prepared as in
`torch_gpu.py`: eval, channels_last, ours with BN folded) and counts, per side: ops,
activation bytes read + written, bytes of new activations allocated, and the activations that
are not bf16 or not channels_last (fp32 promotions, layout copies). The GPU column counts what
CUDA runs instead of the dispatched ops: cuDNN's plain convolution takes no bias, so a conv
with a bias is the conv plus one `add_` pass over its output (aten `_convolution`, Cudnn
backend); a `FusedConvReLU` (ours, after `prepare(fold_bn=True)`) runs its conv, bias,
residual add and ReLU as one cuDNN kernel, which reads the residual once and makes no extra
pass (on CPU it dispatches the plain ops, counted in the other column).

    python benchmarks/torch_traffic.py                        # resnet50, densenet121, googlenet
    python benchmarks/torch_traffic.py --models resnet18 --size 64
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasgraph import zoo  # noqa: E402
from nasgraph.backends.torch import (  # noqa: E402
    FusedConvReLU,
    import_torchvision_weights,
    lower,
    prepare,
)

REFERENCE_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False}}


@dataclass
class Traffic:
    """What one forward pass dispatched, counted over activation tensors (batch-sized)."""
    batch: int
    ops: int = 0
    bytes: int = 0          # read + written, as dispatched
    gpu_bytes: int = 0      # read + written as CUDA runs it (bias pass, fused epilogues)
    allocated: int = 0      # bytes of outputs that are new tensors (not in-place results)
    not_bf16: list[str] = field(default_factory=list)
    not_channels_last: list[str] = field(default_factory=list)
    in_fused: bool = False  # inside a FusedConvReLU, whose plain ops CUDA runs as one kernel

    def is_activation(self, t: torch.Tensor) -> bool:
        return t.dim() == 4 and t.shape[0] == self.batch and t.is_floating_point()


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class TrafficMode(TorchDispatchMode):
    """Counts each dispatched aten op's activation inputs and outputs into `traffic`."""

    def __init__(self, traffic: Traffic) -> None:
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        t, name = self.traffic, func.overloadpacket.__name__
        inputs = [x for x in _tensors(list(args) + list((kwargs or {}).values()))
                  if t.is_activation(x)]
        outputs = [x for x in _tensors(out) if t.is_activation(x)]
        t.ops += 1
        moved = sum(x.numel() * x.element_size() for x in inputs + outputs)
        t.bytes += moved
        if t.in_fused and name in ("add_", "relu_"):  # in the fused conv's epilogue on CUDA:
            t.gpu_bytes += sum(x.numel() * x.element_size() for x in inputs[1:])  # residual
        elif name == "convolution" and args[2] is not None and not t.in_fused:
            # cuDNN's plain conv takes no bias: PyTorch adds it in one more pass
            t.gpu_bytes += moved + 2 * sum(x.numel() * x.element_size() for x in outputs)
        else:
            t.gpu_bytes += moved
        fresh = [x for x in outputs if not any(x.data_ptr() == i.data_ptr() for i in inputs)]
        t.allocated += sum(x.numel() * x.element_size() for x in fresh)
        for x in inputs + outputs:
            if x.dtype != torch.bfloat16 and name != "_to_copy":  # the input's cast is expected
                t.not_bf16.append(f"{name} {x.dtype}")
            if not x.is_contiguous(memory_format=torch.channels_last):
                t.not_channels_last.append(f"{name} {tuple(x.stride())}")
        return out


def traffic(model: torch.nn.Module, x: torch.Tensor) -> Traffic:
    """The activation traffic of `model(x)` under bf16 autocast on x's device, no grad."""
    counted = Traffic(batch=x.shape[0])
    hooks = []
    for m in model.modules():
        if isinstance(m, FusedConvReLU):
            hooks.append(m.register_forward_pre_hook(lambda *_: setattr(counted, "in_fused",
                                                                         True)))
            hooks.append(m.register_forward_hook(lambda *_: setattr(counted, "in_fused", False)))
    try:
        with (torch.no_grad(), torch.autocast(x.device.type, torch.bfloat16),
              TrafficMode(counted)):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return counted


def models(name: str, shape: tuple[int, int, int]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """torchvision's module and ours, with the same weights, prepared as torch_gpu.py does."""
    graph = zoo.get(name, input_shape=shape)
    theirs = getattr(torchvision.models, name)(weights=None,
                                               **REFERENCE_KWARGS.get(name, {})).eval()
    ours = lower(graph)
    ours.load_state_dict(import_torchvision_weights(graph, theirs))
    ours = prepare(ours.eval(), fold_bn=True, channels_last=True)
    return theirs.to(memory_format=torch.channels_last), ours


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,densenet121,googlenet")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--scale", type=int, default=256,
                        help="report bytes scaled to this batch (default 256)")
    args = parser.parse_args(argv)
    shape = (3, args.size, args.size)
    scale = args.scale / args.batch / 1e9
    print(f"| model | side | aten ops | activation GB r+w | as CUDA runs it | "
          f"GB allocated | non-bf16 | non-channels_last |  (batch {args.scale}, "
          f"{args.size}x{args.size})\n|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        x = torch.randn(args.batch, *shape).to(memory_format=torch.channels_last)
        for side, model in zip(("torchvision", "nasgraph"), models(name, shape), strict=True):
            t = traffic(model, x)
            print(f"| {name} | {side} | {t.ops} | {t.bytes * scale:.2f} | "
                  f"{t.gpu_bytes * scale:.2f} | {t.allocated * scale:.2f} | "
                  f"{len(t.not_bf16)} | {len(t.not_channels_last)} |", flush=True)


if __name__ == "__main__":
    main()
